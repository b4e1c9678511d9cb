#!/usr/bin/env bash
# Installs what building and testing iscamd needs beside a Rust toolchain, on Debian or
# Ubuntu (as root, or with sudo): libclang for the camera feature's V4L2 bindings,
# GStreamer's development files for the gstreamer feature and its plugins (decoders,
# RTSP, the x264 encoder the tests' streams use), mosquitto, systemd-analyze and promtool
# for the daemon's tests, python3-gi with gst-rtsp-server for the tests' RTSP server, and the ONNX
# Runtime wheel whose libonnxruntime the `ort` backend's tests load, and cargo-nextest, which
# runs the tests, and Chromium, which loads the page on the board in them. Skips what is
# already there.
set -euo pipefail

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

missing=()
command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
# mosquitto_sub: packaging/check-deb.sh listens to the installed daemon with it.
command -v mosquitto_sub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# promtool: tests/it/metrics.rs checks the /metrics endpoint's text with it.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# chromium: tests/it/web.rs loads the page in Debian's headless browser.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || missing+=(libclang-dev)
pkg-config --exists gstreamer-app-1.0 gstreamer-video-1.0 2>/dev/null \
  || missing+=(pkg-config libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev)
gst_plugins=(gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav)
command -v gst-inspect-1.0 >/dev/null 2>&1 && gst-inspect-1.0 x264enc >/dev/null 2>&1 \
  && gst-inspect-1.0 rtspsrc >/dev/null 2>&1 && gst-inspect-1.0 avdec_h264 >/dev/null 2>&1 \
  || missing+=("${gst_plugins[@]}")
/usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0")' >/dev/null 2>&1 \
  || missing+=(python3-gi gir1.2-gst-rtsp-server-1.0)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The packages may start a broker on 1883 and a Prometheus server; the tests need neither.
for service in mosquitto prometheus; do
  ($sudo systemctl stop $service || $sudo service $service stop) >/dev/null 2>&1 || true
done

# Pinned: the ort crate is built against this C API. tests/it/quantize.rs runs
# models/quantize.py, which needs onnx, pillow and numpy.
if ! python3 -c 'import onnxruntime, onnx, PIL, numpy; assert onnxruntime.__version__ == "1.32.0"' >/dev/null 2>&1; then
  echo "setup: installing onnxruntime, onnx, pillow, numpy (pip)" >&2
  python3 -m pip install -q "onnxruntime==1.32.0" onnx pillow numpy
fi

# The README's test command runs the tests with cargo-nextest (one process per test,
# several at once).
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
