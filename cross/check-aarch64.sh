#!/usr/bin/env bash
# Checks the aarch64 build on an emulated ARM machine (cross/vm.sh) against the x86 one —
# this runs tract's NEON kernels, which x86 never does:
#   1. the library's unit tests (none needs a broker), on 2 threads;
#   2. `classify` and `explain` on sample images with the f32 and int8 models: the same
#      top-1 on both machines, and heatmaps with Pearson r ≥ 0.999.
# Needs cross/build-aarch64.sh (debug build) and the x86 `cargo build` first; installs
# qemu-system-arm and fetches Debian's arm64 kernel and busybox when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/env.sh
. cross/vm.sh

shared=${ISCAMD_TEST_DATA:-../shared}
models=${ISCAMD_MODEL_DIR:-$shared/models}
x86=${X86_ISCAMD:-target/debug/iscamd}
arm=$CARGO_TARGET_DIR/$CROSS_TARGET/debug/iscamd
for f in "$x86" "$arm" "$models/squeezenet1.0-dc.onnx" "$models/squeezenet1.0-dc-int8.onnx" "$shared/images"; do
  [ -e "$f" ] || { echo "missing: $f" >&2; exit 1; }
done
# ELF e_machine 183 = EM_AARCH64.
python3 -c 'import sys; h = open(sys.argv[1], "rb").read(20); sys.exit(h[:4] != b"\x7fELF" or int.from_bytes(h[18:20], "little") != 183)' "$arm" \
  || { echo "$arm is not an aarch64 binary" >&2; exit 1; }
if [ "$(id -u)" = 0 ]; then vm_install; fi
unit=$("$CARGO" test --locked --target "$CROSS_TARGET" --lib --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["kind"] == ["lib"] and m["profile"]["test"]:
        print(m["executable"])')
[ -x "$unit" ] || { echo "no aarch64 unit-test binary (cargo test --no-run failed?)" >&2; exit 1; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
images=(n01440764_tench n02643566_lionfish)
model_files=(squeezenet1.0-dc.onnx squeezenet1.0-dc-int8.onnx)
# IS-CAM with 1 step on the top 4 channels: 4 masked passes, enough to compare the
# kernels' arithmetic, short enough for an emulated CPU.
explain=(explain --method iscam --steps 1 --channels 4 --threads 2)

root=$out/root
mkdir -p "$root/bin" "$root/models" "$root/images"
aarch64-linux-gnu-strip -o "$root/bin/iscamd" "$arm"
aarch64-linux-gnu-strip -o "$root/bin/unit-tests" "$unit"
cp "$models"/squeezenet1.0-dc.onnx "$models"/squeezenet1.0-dc-int8.onnx "$models"/imagenet1k_labels.txt "$root/models/"
for img in "${images[@]}"; do cp "$shared/images/$img.JPEG" "$root/images/"; done
cat >"$root/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
export HOME=/tmp TMPDIR=/tmp PATH=/bin
# tract's own kernel ladder (its NEON kernels), not a measured choice: this checks the
# kernels' arithmetic, and timing candidates under emulation would take minutes.
export ISCAMD_MATMUL=f32=tract,i32=tract
cd /tmp
echo "== guest: \$(uname -m), \$(nproc) cores"
now() { cut -d' ' -f1 /proc/uptime; }
echo "== aarch64 unit tests"
/bin/unit-tests --test-threads 2
echo "UNIT_RC=\$?"
mkdir -p /out
for model in ${model_files[*]}; do
  for img in ${images[*]}; do
    start=\$(now)
    iscamd classify --format json --model /models/\$model /images/\$img.JPEG >/out/arm-\$model-\$img.json || echo "CLASSIFY_FAILED \$model \$img"
    iscamd ${explain[*]} --model /models/\$model --out /out/arm-\$model /images/\$img.JPEG >/dev/null || echo "EXPLAIN_FAILED \$model \$img"
    echo "arm \$model \$img \$start \$(now)" >>/out/times
  done
done
echo "== BEGIN OUTPUTS"
tar cz -C /out . | base64
echo "== END OUTPUTS"
poweroff -f
EOF
chmod +x "$root/init"

echo "== aarch64 under qemu-system (Cortex-A72 × 2)"
start=$(date +%s)
vm_run "$root" "$out/console.log" 2400 || echo "qemu exited with $?"
echo "(VM: $(($(date +%s) - start)) s)"
# The test report, then whatever went wrong.
sed -n '/== guest/,/UNIT_RC/p' "$out/console.log"
grep -E "FAILED|panicked|Kernel panic" "$out/console.log" | grep -v "^test result" || true
grep -q "^UNIT_RC=0" "$out/console.log" && unit_ok=yes || unit_ok=no
sed -n '/== BEGIN OUTPUTS/,/== END OUTPUTS/p' "$out/console.log" | sed '1d;$d' | tr -d '\r' | base64 -d | tar xz -C "$out" \
  || { echo "no outputs from the VM; console:" >&2; tail -40 "$out/console.log" >&2; exit 1; }

echo "== classify and explain: x86 vs aarch64"
for model in "${model_files[@]}"; do
  for img in "${images[@]}"; do
    path=$shared/images/$img.JPEG
    start=$(date +%s.%N)
    "$x86" classify --format json --model "$models/$model" "$path" >"$out/x86-$model-$img.json"
    "$x86" "${explain[@]}" --model "$models/$model" --out "$out/x86-$model" "$path" >/dev/null
    echo "x86 $model $img $start $(date +%s.%N)" >>"$out/times"
  done
done
python3 - "$out" "${images[@]}" <<'PY'
import json, math, sys
out, images = sys.argv[1], sys.argv[2:]
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
[ "$unit_ok" = yes ] || { echo "aarch64 unit tests failed (see above)" >&2; exit 1; }
echo "aarch64 unit tests passed"
