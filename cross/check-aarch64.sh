#!/usr/bin/env bash
# Checks the aarch64 build under qemu against the x86 one — this runs tract's NEON
# kernels, which x86 never does:
#   1. the library's unit tests (none needs a broker);
#   2. `classify` and `explain` on sample images with the f32 and int8 models: the same
#      top-1 on both machines, and heatmaps with Pearson r ≥ 0.999.
# Needs cross/build-aarch64.sh (debug build) and the x86 `cargo build` first.
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/env.sh

shared=${ISCAMD_TEST_DATA:-../shared}
models=${ISCAMD_MODEL_DIR:-$shared/models}
x86=${X86_ISCAMD:-target/debug/iscamd}
arm=$CARGO_TARGET_DIR/$CROSS_TARGET/debug/iscamd
for f in "$x86" "$arm" "$models/squeezenet1.0-dc.onnx" "$shared/images"; do
  [ -e "$f" ] || { echo "missing: $f" >&2; exit 1; }
done
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
arm_run() { qemu-aarch64-static -L /usr/aarch64-linux-gnu "$arm" "$@"; }
# ELF e_machine 183 = EM_AARCH64.
python3 -c 'import sys; h = open(sys.argv[1], "rb").read(20); sys.exit(h[:4] != b"\x7fELF" or int.from_bytes(h[18:20], "little") != 183)' "$arm" \
  || { echo "$arm is not an aarch64 binary" >&2; exit 1; }

echo "== aarch64 unit tests under qemu"
# Known to hang (every test thread spins under qemu 7.2 and 10.0): bounded, reported.
unit=ok
timeout 180 "$CARGO" test --locked --target "$CROSS_TARGET" --lib >"$out/unit.log" 2>&1 || unit=failed
grep -E "^test result|FAILED|panicked" "$out/unit.log" || echo "unit tests: no result ($unit)"

images=(n01440764_tench n02643566_lionfish)
# IS-CAM with 1 step on the top 4 channels: 4 masked passes, enough to compare the
# kernels' arithmetic, short enough for an emulated CPU. One thread: see the unit tests.
explain=(explain --method iscam --steps 1 --channels 4 --threads 1)
echo "== classify and explain: x86 vs aarch64 (qemu)"
for model in squeezenet1.0-dc.onnx squeezenet1.0-dc-int8.onnx; do
  for img in "${images[@]}"; do
    path=$shared/images/$img.JPEG
    for arch in x86 arm; do
      run=("$x86"); [ "$arch" = arm ] && run=(arm_run)
      start=$(date +%s.%N)
      "${run[@]}" classify --format json --model "$models/$model" "$path" >"$out/$arch-$model-$img.json"
      "${run[@]}" "${explain[@]}" --model "$models/$model" --out "$out/$arch-$model" "$path" >/dev/null
      echo "$arch $model $img $start $(date +%s.%N)" >>"$out/times"
    done
  done
done
python3 - "$out" "$model" "${images[@]}" <<'PY'
import json, math, sys
out, images = sys.argv[1], sys.argv[3:]
def pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    sab = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    saa = sum((x - ma) ** 2 for x in a)
    sbb = sum((y - mb) ** 2 for y in b)
    return sab / math.sqrt(saa * sbb)
times = {}
for line in open(f"{out}/times"):
    arch, model, img, start, end = line.split()
    times[(arch, model, img)] = float(end) - float(start)
failed = False
print(f"{'model':<28} {'image':<18} {'top-1 x86':>10} {'top-1 arm':>10} {'max |p diff|':>12} {'map r':>9} {'x86 s':>7} {'qemu s':>7}")
for model in ["squeezenet1.0-dc.onnx", "squeezenet1.0-dc-int8.onnx"]:
    for img in images:
        c = {a: json.load(open(f"{out}/{a}-{model}-{img}.json")) for a in ("x86", "arm")}
        top = {a: c[a]["top"][0]["index"] for a in c}
        pdiff = max(abs(p["score"] - q["score"]) for p, q in zip(c["x86"]["top"], c["arm"]["top"]))
        h = {a: json.load(open(f"{out}/{a}-{model}/{img}.heatmap.json")) for a in c}
        r = pearson(h["x86"]["map"]["values"], h["arm"]["map"]["values"])
        ok = top["x86"] == top["arm"] and r >= 0.999
        failed |= not ok
        print(f"{model:<28} {img:<18} {top['x86']:>10} {top['arm']:>10} {pdiff:>12.2e} {r:>9.6f} "
              f"{times[('x86', model, img)]:>7.1f} {times[('arm', model, img)]:>7.1f}{'' if ok else '  FAIL'}")
sys.exit(1 if failed else 0)
PY
echo "aarch64 classify/explain match x86"
[ "$unit" = ok ] || { echo "aarch64 unit tests: $unit" >&2; exit 1; }
