#!/usr/bin/env bash
# Checks the aarch64 build on an emulated ARM machine (cross/vm.sh) with Debian 11's
# userland (glibc 2.31, GStreamer 1.18) against the x86 one — this runs tract's NEON
# kernels, which x86 never does:
#
#   cross/check-aarch64.sh [iscamd_VERSION_arm64.deb]
#
# With a package, the binary it installs is the one checked; else the debug build's.
#
#   1. the library's unit tests of the code that runs differently on ARM: the model
#      (tract's plans, iscamd's ops and kernels), the maps' arithmetic and JPEG decoding
#      (SIMD paths) — the rest is logic that x86 tests as well;
#   2. `classify` and `explain` on sample images with the f32 and int8 models: the same
#      top-1 on both machines, top-5 probabilities within 1e-4 (int8: integer arithmetic,
#      so equal but for the float head's summation order) and heatmaps with Pearson
#      r ≥ 0.999;
#   3. the GStreamer video source: `classify --every` on an Ogg/Theora clip made from two
#      images, the same classes as on x86, and `run` with `kind = "video"` playing it
#      through (GStreamer's arm64 libraries and base plugins are copied into the machine);
#   4. V4L2 against a real kernel driver: the kernel's vivid module (a virtual camera) is
#      loaded, `iscamd cameras` lists it, the camera source classifies its frames; then the
#      camera is unplugged (vivid's Disconnect control, as a USB camera pulled out: the
#      node vanishes, reads fail with ENODEV; then `rmmod vivid`, which a driver in use
#      refuses) and plugged in again (the module loaded again): the source reopens it.
# Needs cross/build-aarch64.sh (debug build: the unit tests) and the x86 `cargo build`
# first; installs qemu-system-arm and fetches Debian's arm64 kernel and busybox when run
# as root.
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/env.sh
. cross/vm.sh

shared=${ISCAMD_TEST_DATA:-../shared}
models=${ISCAMD_MODEL_DIR:-$shared/models}
x86=${X86_ISCAMD:-target/debug/iscamd}
arm=$CARGO_TARGET_DIR/$CROSS_TARGET/debug/iscamd
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
if [ $# -gt 0 ]; then
  dpkg-deb -x "$1" "$out/deb"
  arm=$out/deb/usr/bin/iscamd
  echo "checking $arm from $(basename "$1")"
fi
for f in "$x86" "$arm" "$models/squeezenet1.0-dc.onnx" "$models/squeezenet1.0-dc-int8.onnx" "$shared/images"; do
  [ -e "$f" ] || { echo "missing: $f" >&2; exit 1; }
done
# ELF e_machine 183 = EM_AARCH64.
python3 -c 'import sys; h = open(sys.argv[1], "rb").read(20); sys.exit(h[:4] != b"\x7fELF" or int.from_bytes(h[18:20], "little") != 183)' "$arm" \
  || { echo "$arm is not an aarch64 binary" >&2; exit 1; }
if [ "$(id -u)" = 0 ]; then vm_install; fi
unit=$("$CARGO" test --locked --target "$CROSS_TARGET" "${CROSS_FEATURE_FLAGS[@]}" --lib --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["kind"] == ["lib"] and m["profile"]["test"]:
        print(m["executable"])')
[ -x "$unit" ] || { echo "no aarch64 unit-test binary (cargo test --no-run failed?)" >&2; exit 1; }
cross_check_glibc "$arm"
cross_check_glibc "$unit"

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

# A 4-s clip, 2 s of a panda then 2 s of a macaw, in Ogg/Theora: its demuxer and decoder
# are base plugins, in the sysroot.
mkdir -p "$out/frames" "$root/videos"
for i in $(seq 0 19); do
  img=n02510455_giant_panda; [ "$i" -lt 10 ] || img=n01818515_macaw
  ln -s "$(realpath "$shared/images/$img.JPEG")" "$out/frames/$(printf %05d "$i").jpg"
done
gst-launch-1.0 -q -e multifilesrc location="$out/frames/%05d.jpg" caps=image/jpeg,framerate=5/1 ! jpegdec \
  ! videoconvert ! videoscale ! video/x-raw,width=320,height=240,pixel-aspect-ratio=1/1 \
  ! theoraenc ! oggmux ! filesink location="$root/videos/clip.ogv"
gst_plugins=$CROSS_SYSROOT/usr/lib/aarch64-linux-gnu/gstreamer-1.0
mkdir -p "$root/gst"
for plugin in coreelements playback typefindfunctions videoconvert videoscale videorate app ogg theora; do
  cp "$gst_plugins/libgst$plugin.so" "$root/gst/"
done
vm_add_libs "$root" "$arm" "$unit" "$root"/gst/*.so
aarch64-linux-gnu-gcc "${CROSS_LINK_FLAGS[@]}" -O2 -o "$root/bin/vivid-unplug" cross/vivid-unplug.c
mkdir -p "$root/modules"
cp "$VM_DIR"/modules/*.ko "$root/modules/"
vivid_modules=$(cat "$VM_DIR/modules/order")
printf '[source]\nkind = "camera"\ndevice = "/dev/video0"\nwidth = 640\nheight = 360\nfps = 5\n[model]\npath = "/models/squeezenet1.0-dc-int8.onnx"\n[cam]\ninterval = "0s"\n' >"$root/camera.toml"
printf '[source]\nkind = "video"\npath = "/videos/clip.ogv"\nloop = false\nfps = 5\n[model]\npath = "/models/squeezenet1.0-dc.onnx"\n[cam]\ninterval = "0s"\n' >"$root/video.toml"
cat >"$root/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
export HOME=/tmp TMPDIR=/tmp PATH=/bin
# tract's own kernel ladder (its NEON kernels), not a measured choice: this checks the
# kernels' arithmetic, and timing candidates under emulation would take minutes.
export ISCAMD_MATMUL=f32=tract,i32=tract
# Likewise passes in flight: given, not measured at the first map.
export ISCAMD_IN_FLIGHT=2
export GST_PLUGIN_SYSTEM_PATH=/gst GST_REGISTRY=/tmp/gst-registry.bin GST_REGISTRY_FORK=no
ip link set lo up
cd /tmp
echo "== guest: \$(uname -m), \$(nproc) cores, \$(/lib/libc.so.6 | head -1)"
now() { cut -d' ' -f1 /proc/uptime; }
echo "== aarch64 unit tests"
/bin/unit-tests --test-threads 2 model:: cam:: source::decode
echo "UNIT_RC=\$?"
mkdir -p /out
# One classify and one explain per model, each over both images: under emulation loading
# the model costs most of a run.
for model in ${model_files[*]}; do
  start=\$(now)
  iscamd classify --format json --model /models/\$model /images/*.JPEG >/out/arm-\$model.jsonl || echo "CLASSIFY_FAILED \$model"
  iscamd ${explain[*]} --model /models/\$model --out /out/arm-\$model /images/*.JPEG >/dev/null || echo "EXPLAIN_FAILED \$model"
  echo "arm \$model \$start \$(now)" >>/out/times
done
echo "== video source"
iscamd classify --format json --top 1 --every 1s --model /models/squeezenet1.0-dc.onnx /videos/clip.ogv >/out/arm-video.json || echo "VIDEO_CLASSIFY_FAILED"
RUST_LOG=iscamd=info iscamd run --config /video.toml 2>/out/daemon.log &
daemon=\$!
for i in \$(seq 1 300); do grep -q "no more frames" /out/daemon.log && break; sleep 1; done
kill -TERM \$daemon; wait \$daemon
echo "== vivid"
log_has() { for i in \$(seq 1 \$3); do [ "\$(grep -c "\$1" /out/camera.log)" -ge "\$2" ] && return 0; sleep 1; done; echo "VIVID_TIMEOUT waiting for \$2 × \$1"; }
# Only a video capture node: /dev/video0.
for m in $vivid_modules; do
  case \$m in vivid) insmod /modules/\$m.ko n_devs=1 node_types=0x1 ;; *) insmod /modules/\$m.ko ;; esac || echo "INSMOD_FAILED \$m"
done
iscamd cameras >/out/cameras.txt 2>&1 || echo "CAMERAS_FAILED"
RUST_LOG=iscamd=debug iscamd run --config /camera.toml 2>/out/camera.log &
daemon=\$!
log_has "] .* %" 3 300
step() { echo "\$(now) \$1" >>/out/vivid-steps; }
vivid-unplug /dev/video0 && step "unplugged (Disconnect)" || echo "VIVID_UNPLUG_FAILED"
log_has "retrying in" 1 60
for i in \$(seq 1 30); do rmmod vivid 2>/dev/null && break; sleep 1; done
lsmod | grep -q "^vivid " && echo "VIVID_STILL_LOADED" || step "rmmod vivid"
# Unplugged for a while: the source retries with backoff, and fails, meanwhile.
sleep 4
insmod /modules/vivid.ko n_devs=1 node_types=0x1 && step "insmod vivid" || echo "VIVID_RELOAD_FAILED"
log_has ": streaming" 2 120
replugged=\$(grep -c "] .* %" /out/camera.log)
log_has "] .* %" \$((replugged + 3)) 120
kill -TERM \$daemon; wait \$daemon
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
paths=()
for img in "${images[@]}"; do paths+=("$shared/images/$img.JPEG"); done
for model in "${model_files[@]}"; do
  start=$(date +%s.%N)
  "$x86" classify --format json --model "$models/$model" "${paths[@]}" >"$out/x86-$model.jsonl"
  "$x86" "${explain[@]}" --model "$models/$model" --out "$out/x86-$model" "${paths[@]}" >/dev/null
  echo "x86 $model $start $(date +%s.%N)" >>"$out/times"
done
"$x86" classify --format json --top 1 --every 1s --model "$models/squeezenet1.0-dc.onnx" "$root/videos/clip.ogv" >"$out/x86-video.json"
python3 - "$out" "${images[@]}" <<'PY'
import json, math, os, sys
out, images = sys.argv[1], sys.argv[2:]
def pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    sab = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    saa = sum((x - ma) ** 2 for x in a)
    sbb = sum((y - mb) ** 2 for y in b)
    return sab / math.sqrt(saa * sbb)
times = {}
for line in open(f"{out}/times"):
    arch, model, start, end = line.split()
    times[(arch, model)] = float(end) - float(start)
def classified(arch, model):
    lines = (json.loads(l) for l in open(f"{out}/{arch}-{model}.jsonl"))
    return {os.path.splitext(os.path.basename(c["image"]))[0]: c for c in lines}
failed = False
print(f"{'model':<28} {'image':<18} {'top-1 x86':>10} {'top-1 arm':>10} {'max |p diff|':>12} {'map r':>9}")
for model in ["squeezenet1.0-dc.onnx", "squeezenet1.0-dc-int8.onnx"]:
    runs = {a: classified(a, model) for a in ("x86", "arm")}
    print(f"{model}: classify + explain of {len(images)} images: x86 {times[('x86', model)]:.1f} s, "
          f"qemu {times[('arm', model)]:.1f} s")
    for img in images:
        c = {a: runs[a][img] for a in runs}
        top = {a: c[a]["top"][0]["index"] for a in c}
        pdiff = max(abs(p["score"] - q["score"]) for p, q in zip(c["x86"]["top"], c["arm"]["top"]))
        h = {a: json.load(open(f"{out}/{a}-{model}/{img}.heatmap.json")) for a in c}
        r = pearson(h["x86"]["map"]["values"], h["arm"]["map"]["values"])
        ok = top["x86"] == top["arm"] and pdiff <= 1e-4 and r >= 0.999
        failed |= not ok
        print(f"{model:<28} {img:<18} {top['x86']:>10} {top['arm']:>10} {pdiff:>12.2e} {r:>9.6f}"
              f"{'' if ok else '  FAIL'}")
sys.exit(1 if failed else 0)
PY
echo "aarch64 classify/explain match x86"

echo "== video source: x86 vs aarch64"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
classes = {a: [json.loads(l)["top"][0]["label"] for l in open(f"{out}/{a}-video.json")] for a in ("x86", "arm")}
print(f"classify --every 1s clip.ogv: x86 {classes['x86']}, aarch64 {classes['arm']}")
sys.exit(0 if classes["x86"] == classes["arm"] and len(classes["arm"]) == 4 else 1)
PY
grep -E "streaming|no more frames|WARN|ERROR" "$out/daemon.log" | sed 's/^/  daemon: /' | head -8
grep -q "stream /videos/clip.ogv: streaming" "$out/daemon.log" && grep -q "no more frames" "$out/daemon.log" \
  || { echo "the video source did not play through on aarch64:" >&2; cat "$out/daemon.log" >&2; exit 1; }
echo "aarch64 video source plays the clip through"

echo "== V4L2 through the vivid driver on aarch64"
sed 's/^/  cameras: /' "$out/cameras.txt"
sed 's/^/  guest uptime /' "$out/vivid-steps"
grep -E ": streaming|retrying" "$out/camera.log" | sed 's/\x1b\[[0-9;]*m//g; s/^/  daemon: /' | head -20
grep -q "vivid\|/dev/video0" "$out/cameras.txt" || { echo "iscamd cameras did not list vivid" >&2; exit 1; }
awk '/: streaming/ {s++} /prediction [0-9]+:/ && s == 1 {before++} /prediction [0-9]+:/ && s >= 2 {after++}
  END {printf "vivid: %d predictions before rmmod, %d after reloading; opened %d times\n", before, after, s; exit !(before >= 3 && after >= 3 && s >= 2)}' "$out/camera.log" \
  || { echo "the camera source did not classify vivid's frames, or did not reopen it:" >&2; tail -30 "$out/camera.log" >&2; exit 1; }
grep -q "retrying in" "$out/camera.log" || { echo "no retry after the unplug" >&2; exit 1; }
! grep -E "VIVID_|INSMOD_FAILED|CAMERAS_FAILED" "$out/console.log" || { echo "a vivid step failed (above)" >&2; exit 1; }
echo "aarch64 camera source reads vivid, and reopens it after an unplug (rmmod) and a replug (insmod)"
[ "$unit_ok" = yes ] || { echo "aarch64 unit tests failed (see above)" >&2; exit 1; }
echo "aarch64 unit tests passed"
