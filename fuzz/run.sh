#!/usr/bin/env bash
# Fuzzes every input parser of iscamd for a bounded time and prints what was run.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 120 s; all targets)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). It uses nightly-only rustc flags: on a
# stable toolchain the script sets RUSTC_BOOTSTRAP=1 to allow them. Seeds are written to
# fuzz/corpus/<target>/ (kept between runs, not committed); crashes land in
# fuzz/artifacts/<target>/ and each one found becomes a regression test in the crate.
# Image seeds are drawn with Pillow when python3 has it, else taken from ../shared/images.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-120}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(command config image_decode method_spec)

command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 1; }
export RUSTC_BOOTSTRAP=1

seed() { mkdir -p "corpus/$1"; printf '%s' "$3" >"corpus/$1/$2"; }
seed command explain '{"id":"7","cmd":"explain","method":"iscam","steps":2,"channels":16,"class":3,"weighting":"softmax","seed":1}'
seed command scorecam '{"cmd":"explain","method":"scorecam"}'
seed command sscam '{"cmd":"explain","method":"sscam","steps":35}'
seed command set '{"cmd":"set","interval":"1m 30s"}'
seed command republish '{"id":12,"cmd":"republish"}'
seed config full '[device]
id = "cam7"
shutdown_timeout = "5s"
[source]
kind = "images"
path = "/srv/frames"
fps = 2.5
loop = true
[model]
path = "/var/lib/iscamd/squeezenet.onnx"
[cam]
method = "iscam"
steps = 3
channels = 128
weighting = "prob"
interval = "30s"
on_class_change = true
min_confidence = 0.5
[mqtt]
host = "broker.local"
port = 8883
prefix = "iscamd"
[mqtt.qos]
prediction = 1
heatmap = 0
[homeassistant]
enabled = true
'
seed config camera '[source]
kind = "camera"
device = 0
'
seed method_spec iscam 'iscam:n=4,k=32'
seed method_spec sscam 'sscam:n=35,sigma=2'
seed method_spec sweep 'iscam:n=1..10,k=8|16|32'

mkdir -p corpus/image_decode
if python3 -c 'import PIL' 2>/dev/null; then
  python3 - <<'PY'
from PIL import Image
img = Image.linear_gradient("L").resize((24, 16)).convert("RGB")
for fmt, ext in [("JPEG", "jpg"), ("PNG", "png"), ("BMP", "bmp"), ("GIF", "gif"), ("TIFF", "tif"), ("WEBP", "webp")]:
    img.save(f"corpus/image_decode/seed.{ext}", fmt)
img.convert("LA").save("corpus/image_decode/gray-alpha.png")
PY
else
  shared=${ISCAMD_TEST_DATA:-../../shared}
  ls "$shared"/images/*.JPEG | head -3 | xargs -I{} cp {} corpus/image_decode/
fi

echo "target          seconds  executions  crashes"
status=0
for t in "${targets[@]}"; do
  log=$(mktemp)
  before=$(ls "artifacts/$t" 2>/dev/null | wc -l)
  # -rss_limit_mb=2048 (libFuzzer's default, written out): a decode needing more is a finding;
  # the unit's MemoryMax is 1G.
  if cargo fuzz run "$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 \
      >"$log" 2>&1; then result=0; else result=$?; status=1; fi
  runs=$(grep -oP 'stat::number_of_executed_units:\s*\K\d+' "$log" || echo "?")
  crashes=$(( $(ls "artifacts/$t" 2>/dev/null | wc -l) - before ))
  printf '%-15s %7s  %10s  %7s\n' "$t" "$seconds" "$runs" "$crashes"
  if [ "$result" -ne 0 ]; then tail -40 "$log" >&2; fi
  rm -f "$log"
done
exit $status
