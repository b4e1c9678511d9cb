#!/bin/bash
# One round of `iscamd bench` per kernel setting — measured, each forced candidate, each of
# iscamd's ops left out, max-pooling's forms, passes in flight, stock tract — printing
# images/s at 1 and 2 threads and the choice each row ran (docs/benchmarks.md).
#   scripts/kernel-matrix.sh F32_MODEL INT8_MODEL [IMAGE]
# Run it twice or more: the rows are comparable only within the machine's noise.
set -euo pipefail
f32=$1 int8=$2
image=${3:-../shared/images/n01440764_tench.JPEG}
iscamd=${ISCAMD:-target/release/iscamd}

row() { # label model [VAR=value ...]
  local label=$1 model=$2 cache out rates choice
  shift 2
  cache=$(mktemp -d)
  out=$(env -u STATE_DIRECTORY -u ISCAMD_MATMUL -u ISCAMD_IN_FLIGHT XDG_CACHE_HOME="$cache" "$@" \
    "$iscamd" bench --image "$image" --compare "$model" --batches 1 --images 128 \
    --heatmaps none --live-frames 0 --threads 2 2>&1 || true)
  rm -rf "$cache"
  rates=$(grep -E '^\S+\.onnx +tract' <<<"$out" | awk '{print $6, $7}' | paste -sd' ' || true)
  [ -n "$rates" ] || rates="failed: $(grep -m1 '^error' <<<"$out" || tail -n1 <<<"$out")"
  choice=$(grep -o 'matrix kernels [^ ]*' <<<"$out" | head -1 || true)
  echo "$label | $rates | $choice"
}

for kind in f32 int8; do
  if [ $kind = f32 ]; then
    model=$f32 acc=f32 tiers="avx512f avx512f+widest fma generic" ops="relu-fold"
  else
    model=$int8 acc=i32 tiers="avx512vnni avx512vnni+widest avxvnni generic" ops="im2col row-packing quantize"
  fi
  row "$kind measured" "$model"
  row "$kind stock" "$model" ISCAMD_KERNELS=stock
  row "$kind $acc=tract" "$model" ISCAMD_MATMUL=$acc=tract
  for tier in $tiers; do
    # A tier this CPU lacks is refused at start: the row says so and the loop goes on.
    row "$kind $acc=$tier" "$model" ISCAMD_MATMUL=$acc=$tier
  done
  for form in avx2 baseline; do
    row "$kind max-pool=$form" "$model" ISCAMD_MATMUL=$acc=tract,max-pool=$form
  done
  for op in max-pool $ops; do
    row "$kind without=$op" "$model" ISCAMD_MATMUL=$acc=tract,without=$op
  done
  row "$kind in-flight=1" "$model" ISCAMD_IN_FLIGHT=1
done
