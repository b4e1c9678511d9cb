#!/usr/bin/env bash
# Installs the iscamd package on this machine and checks it the way a user meets it (as
# root; CI runs it): the units verify; `iscamd model fetch` from a server on loopback puts
# the model where the default config finds it; `iscamd check` passes against a mosquitto
# on loopback; the daemon, run as the package's user with the unit's sandboxing that
# applies outside systemd, publishes predictions; `dpkg -r` keeps the config and the
# models, and `dpkg -P` leaves nothing but the iscamd user (Debian policy keeps it).
#
#   packaging/check-deb.sh target/debian/iscamd_<version>_amd64.deb
#
# Needs ../shared/models (or ISCAMD_MODEL_DIR) for the model the test server serves.
set -euo pipefail
deb=$(realpath "$1")
cd "$(dirname "$0")/.."
models=${ISCAMD_MODEL_DIR:-$(realpath ../shared/models)}
[ "$(id -u)" = 0 ] || { echo "check-deb: run as root (it installs the package)" >&2; exit 1; }
dpkg -s iscamd >/dev/null 2>&1 && { echo "check-deb: iscamd is installed already; dpkg -P iscamd first" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "check-deb: FAIL: $*" >&2; exit 1; }
ok() { echo "check-deb: ok: $*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
snapshot() { find /etc /usr /var/lib /opt -xdev 2>/dev/null | grep -v -e '^/var/lib/dpkg' -e '^/var/lib/apt' -e '^/etc/ld.so.cache' | sort; }

snapshot >"$work/before"
dpkg -i "$deb"
ok "installed $(dpkg-deb -f "$deb" Package Version Architecture | tr '\n' ' ')"

# The units.
for unit in iscamd.service iscamd@cam1.service; do
  said=$(systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify $unit: $said"
  [ -z "$said" ] || fail "systemd-analyze verify $unit: $said"
done
ok "systemd-analyze verify iscamd.service iscamd@cam1.service: no complaints"
id -nG iscamd | grep -qw video || fail "user iscamd is not in group video: $(id iscamd)"
[ "$(stat -c %U /var/lib/iscamd/models)" = iscamd ] || fail "/var/lib/iscamd/models is not iscamd's"
ok "user $(id iscamd); /var/lib/iscamd/models"

# A model from a server on loopback, where the default config finds it.
mkdir "$work/www"
ln -s "$models/squeezenet1.0-dc.onnx" "$work/www/squeezenet1.0.onnx"
http_port=$(free_port)
(cd "$work/www" && exec python3 -m http.server "$http_port" --bind 127.0.0.1 >/dev/null 2>&1) &
pids+=($!)
sha=$(sha256sum "$models/squeezenet1.0-dc.onnx" | cut -d' ' -f1)
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$http_port") 2>/dev/null && break; sleep 0.1; done
(cd / && iscamd model fetch --url "http://127.0.0.1:$http_port/squeezenet1.0.onnx" --sha256 "$sha")
[ -f /var/lib/iscamd/models/squeezenet1.0.onnx ] || fail "model fetch did not store /var/lib/iscamd/models/squeezenet1.0.onnx"
ok "iscamd model fetch → /var/lib/iscamd/models/squeezenet1.0.onnx"

# A broker on loopback, and the packaged config edited as a user would.
mqtt_port=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\n' "$mqtt_port" >"$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)
web_port=$(free_port)
sed -i -e 's/^# id = .*/id = "pkg-check"/' -e 's/^# host = .*/host = "127.0.0.1"/' \
  -e "s/^# port = .*/port = $mqtt_port/" -e "s/^listen = \"127.0.0.1:8080\"/listen = \"127.0.0.1:$web_port\"/" \
  /etc/iscamd/iscamd.toml

# As the service's user, with what of the unit's sandbox applies outside systemd: no new
# privileges, no capabilities, UMask=0077, a clean environment with the unit's variables.
as_service() {
  exec setpriv --reuid=iscamd --regid=iscamd --init-groups --no-new-privs --inh-caps=-all \
    --bounding-set=-all env -i PATH=/usr/bin:/bin STATE_DIRECTORY=/var/lib/iscamd \
    ISCAMD_MODEL_DIR=/var/lib/iscamd/models sh -c 'umask 0077; cd /; exec "$@"' sh "$@"
}
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null && break; sleep 0.1; done
(as_service iscamd check --config /etc/iscamd/iscamd.toml) || fail "iscamd check --config /etc/iscamd/iscamd.toml"
ok "iscamd check --config /etc/iscamd/iscamd.toml"

mosquitto_sub -p "$mqtt_port" -t iscamd/pkg-check/prediction -C 3 -W 120 >"$work/predictions" &
sub=$!
as_service iscamd run --config /etc/iscamd/iscamd.toml 2>"$work/daemon.log" &
daemon=$!
pids+=("$daemon")
wait "$sub" || { cat "$work/daemon.log" >&2; fail "no predictions within 120 s"; }
grep -q '"top"' "$work/predictions" || fail "predictions without classes: $(head -c 300 "$work/predictions")"
# The packaged config serves the page on loopback.
status=$(exec 3<>"/dev/tcp/127.0.0.1/$web_port" && printf 'GET /api/status HTTP/1.0\r\n\r\n' >&3 && cat <&3)
grep -q '"schema":"iscamd.web_status/1"' <<<"$status" || fail "no page on 127.0.0.1:$web_port: $(head -c 300 <<<"$status")"
ok "the page answers on 127.0.0.1:$web_port"
sleep 10
rss=$(awk '/^VmRSS/ {print $2 " " $3}' "/proc/$daemon/status")
ok "the daemon as user iscamd published $(wc -l <"$work/predictions") predictions; RSS after 10 s: $rss"
kill -TERM "$daemon"
wait "$daemon" || fail "the daemon did not stop cleanly: $(tail -3 "$work/daemon.log")"

# Remove keeps the conffile and the models; purge leaves nothing but the user.
dpkg -r iscamd
[ ! -e /usr/bin/iscamd ] || fail "dpkg -r left /usr/bin/iscamd"
[ -f /etc/iscamd/iscamd.toml ] || fail "dpkg -r removed the conffile"
[ -f /var/lib/iscamd/models/squeezenet1.0.onnx ] || fail "dpkg -r removed the models"
ok "dpkg -r: binary gone; /etc/iscamd/iscamd.toml and the models kept"
dpkg -P iscamd
snapshot >"$work/after"
left=$(comm -13 "$work/before" "$work/after")
[ -z "$left" ] || fail "dpkg -P left: $left"
id iscamd >/dev/null || fail "the iscamd user is gone"
ok "dpkg -P: no file left; user iscamd kept"
