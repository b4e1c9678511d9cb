#!/usr/bin/env bash
# CPU cost of receiving and decoding an RTSP stream, per frame, on this machine: serves
# H.264 made from two shared images with tests/support/rtsp_server.py on loopback at 30 fps,
# and times a GStreamer client that (1) depayloads and decodes, (2) also converts every
# frame to RGB as iscamd's appsink receives it.
#
#   scripts/stream-decode-cost.sh [WIDTHxHEIGHT ...]     (default: 640x480 1280x720)
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${ISCAMD_TEST_DATA:-../shared}
frames=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$frames"' EXIT
for i in $(seq 0 29); do
  img=n02510455_giant_panda; [ "$i" -lt 15 ] || img=n01818515_macaw
  ln -s "$(realpath "$shared/images/$img.JPEG")" "$frames/$(printf %05d "$i").jpg"
done
n=300
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(date -u +%F)"
printf '%-10s %-22s %10s\n' size client "CPU ms/frame"
for size in "${@:-640x480 1280x720}"; do
  for size1 in $size; do
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    /usr/bin/python3 tests/support/rtsp_server.py "$port" "$frames" --fps 30 --size "$size1" >"$frames/server.log" &
    server=$!
    until grep -q READY "$frames/server.log"; do sleep 0.1; done
    for client in "decode" "decode + RGB"; do
      tail="fakesink"
      [ "$client" = "decode" ] || tail="videoconvert ! video/x-raw,format=RGB ! fakesink"
      # shellcheck disable=SC2086
      cpu=$( { /usr/bin/time -f '%U %S' gst-launch-1.0 -q rtspsrc location="rtsp://127.0.0.1:$port/cam" protocols=tcp \
        ! application/x-rtp,media=video ! decodebin ! identity eos-after=$n ! $tail >/dev/null; } 2>&1 | tail -1)
      python3 -c "import sys; u, s = map(float, sys.argv[1:3]); print(f'{sys.argv[3]:<10} {sys.argv[4]:<22} {(u + s) * 1000 / $n:10.2f}')" $cpu "$size1" "$client"
    done
    kill $server; wait $server 2>/dev/null || true
  done
done
