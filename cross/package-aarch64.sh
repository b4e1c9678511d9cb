#!/usr/bin/env bash
# Builds the arm64 Debian package (Jetson, Raspberry Pi OS 64-bit, any arm64 Debian or
# Ubuntu with glibc 2.31 or later): target/debian/iscamd_<version>-1_arm64.deb.
#
#   cross/package-aarch64.sh                          a release build, then the package
#   cross/package-aarch64.sh --no-build --profile dev  the package of cross/build-aarch64.sh's build
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/env.sh
# cargo-deb must not build: rustup's cargo has no aarch64 standard library.
build=(--no-build)
if [[ " $* " == *" --no-build "* ]]; then build=(); else cross/build-aarch64.sh --release; fi
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb@3.8.0
# dpkg-shlibdeps cannot read another architecture's sysroot: the arm64 variant in
# Cargo.toml names the dependencies itself.
cargo deb --locked --target "$CROSS_TARGET" --variant arm64 "${build[@]}" -o target/debian/ "$@"
