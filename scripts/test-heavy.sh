#!/usr/bin/env bash
# The heavy test cases that CI leaves out (`#[ignore = "heavy: …"]`): the reference maps
# of every method on every reference image, full IS-CAM (N=10, all channels) and the
# SS-CAM reference statistics. CI keeps one case of each method; this runs the rest.
#
#   scripts/test-heavy.sh [cargo nextest run flags...]
#
# The soak tests (tests/it/soak.rs, also ignored) have their own script: scripts/soak.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo nextest run --locked --features ort,test-hooks --run-ignored only \
  -E 'not test(/^soak::/)' "$@"
