#!/usr/bin/env bash
# Instructions per forward pass on aarch64 — a Cortex-A72-class core (NEON, no dot
# product) and a Cortex-A76-class one (dot product) — and on x86 (AVX2/FMA, the widest set
# valgrind emulates), for the f32 and the int8 model: the basis of an estimate, not a
# measurement on a board (docs/benchmarks.md).
#
#   cross/arm-estimate.sh [arm] [x86]   after cross/build-aarch64.sh --release and
#                                       cargo build --release; both sides by default
#   ESTIMATE_MODELS="a.onnx b.onnx" …   other model files (default: the shipped f32 and
#                                       int8 SqueezeNet 1.0); `ARM_CPUS="cortex-a76 max"`
#   ESTIMATE_BACKENDS="tract ort" …     ONNX Runtime beside tract, counted the same way:
#                                       needs an aarch64 build with `--features ort`; the
#                                       library is ONNX Runtime's aarch64 wheel from PyPI
#                                       (ORT_VERSION, default 1.32.0) or ARM_ORT_LIBRARY
#   ARM_PROFILE=1 …                     also `iscamd bench --profile` of each model on tract:
#                                       its "ms" are millions of instructions there
#   ARM_PROFILE_NODES=N …               and its N costliest nodes (`--profile-nodes`)
#   ARM_FRAMES=1 …                      also frames: a pass with decoding and preprocessing
#   ISCAMD_MATMUL=i32=iscamd-neon-i8 …  other kernels than tract's ladder (the default,
#                                       f32=tract,i32=tract)
#
# ARM: the emulated machine of cross/vm.sh runs with `-icount shift=0`, where the guest's
# clock advances 1 ns per instruction executed, so a time read in the guest is a count of
# instructions (all of them: the kernel's, every thread's). A pass is (instructions of
# `iscamd bench` pushing 9 images − pushing 1) / 8: model loading, start-up and the first
# pass cancel out; a frame (ARM_FRAMES=1) is the same with `iscamd classify` on 9 and 1
# JPEG files: a pass, decoding and preprocessing. x86: valgrind's callgrind counts the instructions of
# `iscamd classify` in user space (frames only).
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/env.sh
. cross/vm.sh

shared=${ISCAMD_TEST_DATA:-../shared}
models=${ISCAMD_MODEL_DIR:-$shared/models}
image=n01440764_tench
read -r -a model_paths <<<"${ESTIMATE_MODELS:-$models/squeezenet1.0-dc.onnx $models/squeezenet1.0-dc-int8.onnx}"
model_files=()
for path in "${model_paths[@]}"; do model_files+=("$(basename "$path")"); done
read -r -a arm_cpus <<<"${ARM_CPUS:-cortex-a72 cortex-a76}"
read -r -a backends <<<"${ESTIMATE_BACKENDS:-tract}"
# tract's own kernel ladder unless told otherwise: a measured choice would be measured
# (and cached) by the first run, not by the second.
export ISCAMD_MATMUL=${ISCAMD_MATMUL:-f32=tract,i32=tract}

row() { printf '%-16s %-32s %-6s %12s %12s\n' "$@"; }

# ONNX Runtime's libonnxruntime.so for aarch64 (the PyPI wheel, unpacked once).
ort_aarch64_library() {
  if [ -n "${ARM_ORT_LIBRARY:-}" ]; then echo "$ARM_ORT_LIBRARY"; return; fi
  local version=${ORT_VERSION:-1.32.0} dir
  dir=$(realpath -m "${CARGO_TARGET_DIR}/ort-aarch64-$version")
  if [ ! -s "$dir/libonnxruntime.so" ]; then
    mkdir -p "$dir"
    python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
      --platform manylinux2014_aarch64 -d "$dir" "onnxruntime==$version" >&2
    (cd "$dir" && python3 -m zipfile -e onnxruntime-*.whl wheel >/dev/null)
    cp -L "$dir"/wheel/onnxruntime/capi/libonnxruntime.so.* "$dir/libonnxruntime.so"
    rm -rf "$dir/wheel"
  fi
  echo "$dir/libonnxruntime.so"
}

count_arm() {
  local arm=${ARM_ISCAMD:-$CARGO_TARGET_DIR/$CROSS_TARGET/release/iscamd} out=$1
  [ -e "$arm" ] || { echo "missing: $arm" >&2; return 1; }
  if [ "$(id -u)" = 0 ]; then vm_install; fi
  local root=$out/root m nine cpu
  mkdir -p "$root/bin" "$root/models" "$root/images"
  aarch64-linux-gnu-strip -o "$root/bin/iscamd" "$arm"
  for path in "${model_paths[@]}"; do cp "$path" "$root/models/"; done
  cp "$models/imagenet1k_labels.txt" "$root/models/"
  cp "$shared/images/$image.JPEG" "$root/images/"
  vm_add_libs "$root" "$arm"
  case " ${backends[*]} " in *" ort "*)
    cp "$(ort_aarch64_library)" "$root/lib/libonnxruntime.so"
    vm_add_libs "$root" "$root/lib/libonnxruntime.so" ;;
  esac
  nine=$(for i in $(seq 9); do printf '/images/%s.JPEG ' "$image"; done)
  cat >"$root/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
export HOME=/tmp TMPDIR=/tmp PATH=/bin ISCAMD_MATMUL=$ISCAMD_MATMUL
# The uptime in 10-ms steps: 10^7 instructions each.
ticks() { cut -d' ' -f1 /proc/uptime | tr -d .; }
grep -m1 Features /proc/cpuinfo
export ORT_DYLIB_PATH=/lib/libonnxruntime.so
for model in ${model_files[*]}; do
  for backend in ${backends[*]}; do
    # A pass: iscamd bench's forward passes of one preprocessed image. A frame (with
    # ARM_FRAMES=1): classify's, a pass plus decoding and preprocessing the JPEG.
    bench="iscamd bench --backend \$backend --threads 1 --batches 1 --heatmaps none --live-frames 0"
    bench="\$bench --image /images/$image.JPEG --model /models/\$model --images"
    a=\$(ticks); \$bench 1 >/dev/null
    b=\$(ticks); \$bench 9 >/dev/null
    c=\$(ticks); frame=-
    if [ "${ARM_FRAMES:-}" = 1 ]; then
      classify="iscamd classify --top 1 --backend \$backend --threads 1 --model /models/\$model"
      \$classify /images/$image.JPEG >/dev/null
      d=\$(ticks); \$classify $nine >/dev/null
      e=\$(ticks); frame=\$(((e - d - d + c) * 10000000 / 8))
    fi
    echo "COUNT \$model \$backend \$(((c - b - b + a) * 10000000 / 8)) \$frame"
  done
  if [ "${ARM_PROFILE:-}" = 1 ]; then
    iscamd bench --profile --profile-nodes ${ARM_PROFILE_NODES:-0} --images 3 --image /images/$image.JPEG --model /models/\$model \
      | sed 's/^/PROFILE /'
  fi
done
poweroff -f
INIT
  chmod +x "$root/init"
  for cpu in "${arm_cpus[@]}"; do
    VM_CPU=$cpu VM_SMP=1 VM_QEMU_ARGS="-icount shift=0,sleep=off" vm_run "$root" "$out/$cpu.log" 3600 \
      || echo "qemu exited with $?"
    grep -a -m1 Features "$out/$cpu.log" | tr -d '\r' | sed "s/^/$cpu: /" >&2
    grep -a '^COUNT' "$out/$cpu.log" | tr -d '\r' | while read -r _ m backend pass frame; do
      row "$cpu" "$m" "$backend" "$pass" "$frame"
    done
    { grep -a '^PROFILE' "$out/$cpu.log" || true; } | tr -d '\r' | sed "s/^PROFILE /$cpu: /" >&2
  done
}

count_x86() {
  local x86=${X86_ISCAMD:-target/release/iscamd} m one nine path=$shared/images/$image.JPEG
  [ -e "$x86" ] || { echo "missing: $x86" >&2; return 1; }
  command -v valgrind >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
  callgrind() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$x86" classify --top 1 "$@" 2>&1 >/dev/null \
      | sed -n 's/.*Collected : *//p'
  }
  for m in "${model_paths[@]}"; do
    one=$(callgrind --model "$m" "$path")
    # shellcheck disable=SC2046
    nine=$(callgrind --model "$m" $(for i in $(seq 9); do echo "$path"; done))
    row "x86 (AVX2)" "$(basename "$m")" tract - $(((nine - one) / 8))
  done
}

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
row machine model engine "insns/pass" "insns/frame"
for side in ${*:-arm x86}; do
  case $side in
    arm) count_arm "$out" ;;
    x86) count_x86 ;;
    *) echo "usage: $0 [arm] [x86]" >&2; exit 2 ;;
  esac
done
