#!/usr/bin/env bash
# A real Home Assistant Core consumes iscamd's discovery: tests/support/home_assistant.py
# (what it checks is written there). Installs Home Assistant 2025.4.4 — the newest that
# Python 3.13.0 runs; later releases need 3.13.2 or 3.14 — with the two packages its
# MQTT integration and onboarding load (so it installs nothing itself at start) into
# target/ha-venv, once. Needs Python 3.13 (pyenv's, or python3.13 on PATH), mosquitto and
# the shared test data.
#   scripts/ha-check.sh [ISCAMD_BINARY]     (default target/debug/iscamd)
#   scripts/ha-check.sh --install           (only the virtualenv: CI makes it while it builds)
set -euo pipefail
cd "$(dirname "$0")/.."

install_only=false
[ "${1:-}" = "--install" ] && install_only=true
iscamd=${1:-target/debug/iscamd}
if ! $install_only; then
  [ -x "$iscamd" ] || { echo "ha-check: no iscamd binary at $iscamd; build it first" >&2; exit 1; }
fi
data=${ISCAMD_TEST_DATA:-../shared}
models=${ISCAMD_MODEL_DIR:-$data/models}
model=$models/squeezenet1.0-dc.onnx
panda=$data/images/n02510455_giant_panda.JPEG
macaw=$data/images/n01818515_macaw.JPEG
for f in "$model" "$panda" "$macaw"; do
  [ -f "$f" ] || { echo "ha-check: $f is missing (set ISCAMD_TEST_DATA / ISCAMD_MODEL_DIR)" >&2; exit 1; }
done

venv=target/ha-venv
# Home Assistant itself, then the requirements of frontend, onboarding's dependencies,
# backup, hardware, network, MQTT and the helpers it sets up by default (their manifests).
packages=("homeassistant==2025.4.4" "home-assistant-frontend==20250411.0" "paho-mqtt==2.1.0"
  "Pillow==11.1.0" "cronsim==2.6" "ifaddr==0.2.0" "psutil-home-assistant==0.0.1"
  "securetar==2025.2.1")
if ! "$venv/bin/python" -c 'from homeassistant.const import __version__ as v; assert v == "2025.4.4"; import paho.mqtt, PIL, hass_frontend' 2>/dev/null; then
  python=""
  pyenv_root=${PYENV_ROOT:-$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")}
  for candidate in "$pyenv_root"/versions/3.13*/bin/python3.13 "$(command -v python3.13 || true)"; do
    [ -x "$candidate" ] && { python=$candidate; break; }
  done
  [ -n "$python" ] || { echo "ha-check: Home Assistant 2025.4 needs Python 3.13; none found (pyenv install 3.13.0)" >&2; exit 1; }
  echo "ha-check: installing Home Assistant 2025.4.4 with $python" >&2
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${packages[@]}"
fi
$install_only && exit 0
"$venv/bin/python" tests/support/home_assistant.py "$iscamd" "$model" "$panda" "giant panda" "$macaw" "macaw"
