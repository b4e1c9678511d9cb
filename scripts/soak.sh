#!/usr/bin/env bash
# Runs the soaks of tests/it/soak.rs on a release build (not part of the default test run):
# the 10-minute broker-restart soak and the 30-minute live-maps-and-commands soak.
# SOAK_SECONDS shortens both, e.g. SOAK_SECONDS=120 scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --release --locked --test it -- --ignored --nocapture --test-threads 1 soak:: "$@"
