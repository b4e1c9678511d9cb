#!/usr/bin/env bash
# Builds the Debian package for this machine's architecture with cargo-deb (installed
# first when missing): target/debian/iscamd_<version>-1_<arch>.deb. The arm64 package is
# built by cross/package-aarch64.sh.
#
#   scripts/package-deb.sh [cargo-deb flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb@3.8.0
cargo deb --locked -o target/debian/ "$@"
