#!/usr/bin/env bash
# Builds iscamd for 64-bit ARM Linux (Jetson Orin/Xavier, Raspberry Pi 4/5 with a 64-bit
# OS) on Debian 12 without Docker, for glibc 2.31 and later (JetPack 5, Debian 11, Ubuntu
# 20.04 and newer). Installs the toolchain first when run as root.
#
#   cross/build-aarch64.sh [--release] [cargo build flags...]
#
# The binary lands in target/cross/aarch64-unknown-linux-gnu/{debug,release}/iscamd.
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/env.sh
if [ "$(id -u)" = 0 ]; then cross_install; fi
cross_sysroot
"$CARGO" --version
"$CARGO" build --locked --target "$CROSS_TARGET" "$@"
for binary in $(find "$CARGO_TARGET_DIR/$CROSS_TARGET" -maxdepth 2 -name iscamd -type f); do
  file "$binary"
  cross_check_glibc "$binary"
done
