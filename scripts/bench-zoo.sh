#!/usr/bin/env bash
# The model-zoo speed table of docs/benchmarks.md: each torchvision model of
# ../shared/models/zoo as f32 and as three int8 files made by models/quantize.py
# (per-tensor, per-channel, QDQ; calibrated on 64 shared images), each on tract and on ONNX
# Runtime's CPU provider, in one `iscamd bench` per model (figures are ratios within a run).
#
#   scripts/bench-zoo.sh [resnet18 mobilenet_v2 ...]     # default: all six
#
# Files go to target/bench-zoo (BENCH_ZOO_DIR). Needs python3 with onnx and onnxruntime
# (scripts/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${ISCAMD_TEST_DATA:-../shared}
zoo=$shared/models/zoo
out=${BENCH_ZOO_DIR:-target/bench-zoo}
image=$shared/images/n01440764_tench.JPEG
mkdir -p "$out"

cargo build --release --locked --features ort
iscamd=target/release/iscamd
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(python3 -c 'import glob, os, onnxruntime; print(glob.glob(os.path.dirname(onnxruntime.__file__) + "/capi/libonnxruntime.so*")[0])')}

models=("$@")
[ ${#models[@]} -gt 0 ] || models=(resnet18 mobilenet_v2 mobilenet_v3_small efficientnet_b0 shufflenet_v2_x1_0 squeezenet1_1)
for stem in "${models[@]}"; do
  float=$out/$stem.onnx
  cp "$zoo/$stem.onnx" "$float"
  chmod u+w "$float"
  "$iscamd" model annotate "$float" --channel-order RGB --input-size 224 --resize 256 \
    --mean 123.675,116.28,103.53 --std 58.395,57.12,57.375 >/dev/null
  python3 models/quantize.py "$float" "$shared/images" -o "$out/$stem-per-tensor.onnx" --limit 64 >/dev/null
  python3 models/quantize.py "$float" "$shared/images" -o "$out/$stem-per-channel.onnx" --limit 64 --per-channel >/dev/null
  python3 models/quantize.py "$float" "$shared/images" -o "$out/$stem-qdq.onnx" --limit 64 --format qdq >/dev/null
  # A run on 2 threads prints the 1-thread rows too.
  echo "== $stem, $(date -u +%F), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  "$iscamd" bench --image "$image" --threads 2 --backends tract,ort \
    --compare "$float" --compare "$out/$stem-per-tensor.onnx" \
    --compare "$out/$stem-per-channel.onnx" --compare "$out/$stem-qdq.onnx" \
    --plans split --batches 1 --images 64 --heatmaps none --live-frames 0
done
