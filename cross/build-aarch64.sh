#!/usr/bin/env bash
# Builds iscamd for 64-bit ARM Linux (Jetson Orin/Xavier, Raspberry Pi 4/5 with a 64-bit
# OS) on Debian 12 without Docker, for glibc 2.31 and later (JetPack 5, Debian 11, Ubuntu
# 20.04 and newer). Installs the toolchain first when run as root.
#
#   cross/build-aarch64.sh [--unit-tests] [--release] [cargo build flags...]
#   CROSS_FEATURES="--no-default-features --features edge" cross/build-aarch64.sh …  # the edge build
#
# The binary lands in target/cross/aarch64-unknown-linux-gnu/{debug,release}/iscamd;
# --unit-tests builds the library's unit tests too (cross/check-aarch64.sh runs them).
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/env.sh
if [ "$(id -u)" = 0 ]; then cross_install; fi
cross_sysroot
"$CARGO" --version
if [ "${1:-}" = --unit-tests ]; then
  shift
  "$CARGO" test --locked --target "$CROSS_TARGET" "${CROSS_FEATURE_FLAGS[@]}" --lib --no-run
  # Cargo.toml gives every build the dev-dependencies' features: the build after the unit
  # tests compiles iscamd alone, else the features drifted apart.
  built=$("$CARGO" build --locked --target "$CROSS_TARGET" "${CROSS_FEATURE_FLAGS[@]}" "$@" 2>&1) || { echo "$built" >&2; exit 1; }
  echo "$built"
  again=$(echo "$built" | grep -E '^ *Compiling' | grep -v ' iscamd ' || true)
  [ -z "$again" ] || { echo "the build compiled again what the unit tests had built (features drifted; see Cargo.toml)" >&2; exit 1; }
else
  "$CARGO" build --locked --target "$CROSS_TARGET" "${CROSS_FEATURE_FLAGS[@]}" "$@"
fi
for binary in $(find "$CARGO_TARGET_DIR/$CROSS_TARGET" -maxdepth 2 -name iscamd -type f); do
  file "$binary"
  cross_check_glibc "$binary"
done
