#!/usr/bin/env python3
"""A real Home Assistant Core consumes iscamd's MQTT discovery.

Starts mosquitto and Home Assistant on loopback, onboards Home Assistant and sets up its
MQTT integration through its REST API, runs `iscamd run` on an image, and checks through
the REST and websocket APIs: every entity exists with the documented entity id on one
device, states and availability follow the daemon, the image entity serves a JPEG
through /api/image_proxy, the button makes a heatmap, the number and the switch change
the daemon's settings, the event entity sees an episode, stopping the daemon makes every
entity unavailable, and Home Assistant's log has no warning or error about MQTT or iscamd.

Run by scripts/ha-check.sh with Home Assistant's virtualenv:
    home_assistant.py ISCAMD_BINARY MODEL IMAGE_A LABEL_A IMAGE_B LABEL_B
The daemon sees A for 3 s, then B for 3 s, in a loop, so that episodes begin and end while
Home Assistant watches.
Exits non-zero with the reason on the first failed check.
"""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

DEVICE = "cam7"
CONFIGURATION_URL = "http://grafana.invalid/d/iscamd?var-device=cam7"
PREFIX = f"iscamd_{DEVICE}"
# object id → entity id, as docs/mqtt.md lists them.
ENTITIES = {
    "label": f"sensor.{PREFIX}_label",
    "confidence": f"sensor.{PREFIX}_confidence",
    "heatmap": f"image.{PREFIX}_heatmap",
    "explain": f"button.{PREFIX}_explain_now",
    "source": f"binary_sensor.{PREFIX}_source",
    "heatmap_interval": f"number.{PREFIX}_heatmap_interval",
    "live": f"switch.{PREFIX}_live_maps",
    "episode": f"event.{PREFIX}_episode",
    "episode_snapshot": f"image.{PREFIX}_episode_snapshot",
    "fps": f"sensor.{PREFIX}_frame_rate",
    "inference_latency": f"sensor.{PREFIX}_inference_latency",
    "heatmap_latency": f"sensor.{PREFIX}_heatmap_latency",
    "dropped_frames": f"sensor.{PREFIX}_dropped_frames",
    "explanation_faithfulness": f"sensor.{PREFIX}_explanation_faithfulness",
}


class Failed(Exception):
    pass


def check(condition, what):
    if not condition:
        raise Failed(what)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name, args, workdir, env=None):
    log = open(workdir / f"{name}.log", "wb")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)


def mosquitto(workdir):
    port = free_port()
    conf = workdir / "mosquitto.conf"
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(f"{user}listener {port} 127.0.0.1\nallow_anonymous true\n")
    return start("mosquitto", ["mosquitto", "-c", str(conf)], workdir), port


def home_assistant(workdir):
    port = free_port()
    config = workdir / "ha"
    config.mkdir()
    # No default_config: only what onboarding, the REST and websocket APIs and MQTT need,
    # so that Home Assistant installs nothing at start.
    (config / "configuration.yaml").write_text(
        f"""homeassistant:
  name: iscamd test
  latitude: 0
  longitude: 0
  elevation: 0
  unit_system: metric
  time_zone: UTC
  country: US
  language: en
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
config:
onboarding:
websocket_api:
logger:
  default: info
"""
    )
    args = [sys.executable, "-m", "homeassistant", "-c", str(config), "--skip-pip"]
    return start("home-assistant", args, workdir), port, config


def scene(workdir, images):
    """A folder of frames: each image 15 times (3 s at 5 fps), in turn."""
    frames = workdir / "frames"
    frames.mkdir()
    n = 0
    for image in images:
        for _ in range(15):
            (frames / f"{n:05}.jpg").symlink_to(Path(image).resolve())
            n += 1
    return frames


def daemon_config(workdir, mqtt_port, model, image):
    path = workdir / "iscamd.toml"
    path.write_text(
        f"""[device]
id = "{DEVICE}"
[source]
kind = "images"
path = "{image}"
fps = 5
[model]
path = "{model}"
[cam]
interval = "0s"
on_class_change = false
health_every = 1
health_window = 1
[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
stats_interval = "2s"
heatmap_image_width = 320
[homeassistant]
configuration_url = "{CONFIGURATION_URL}"
"""
    )
    return path


async def until(what, probe, timeout=60.0, every=0.5):
    """Calls the coroutine `probe` until it returns something true; returns that."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = await probe()
        except (aiohttp.ClientError, OSError) as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        await asyncio.sleep(every)
    raise Failed(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


class HomeAssistant:
    def __init__(self, session, port):
        self.session = session
        self.base = f"http://127.0.0.1:{port}"
        self.headers = {}
        self.ws = None
        self.next_id = 1

    async def onboard(self):
        client_id = self.base + "/"
        async with self.session.post(
            self.base + "/api/onboarding/users",
            json={
                "client_id": client_id,
                "name": "Test",
                "username": "test",
                "password": "iscamd-test-password",
                "language": "en",
            },
        ) as r:
            check(r.status == 200, f"onboarding: {r.status} {await r.text()}")
            code = (await r.json())["auth_code"]
        async with self.session.post(
            self.base + "/auth/token",
            data={"grant_type": "authorization_code", "code": code, "client_id": client_id},
        ) as r:
            check(r.status == 200, f"token: {r.status} {await r.text()}")
            token = (await r.json())["access_token"]
        self.headers = {"Authorization": f"Bearer {token}"}
        self.ws = await self.session.ws_connect(self.base + "/api/websocket")
        check((await self.ws.receive_json())["type"] == "auth_required", "websocket auth")
        await self.ws.send_json({"type": "auth", "access_token": token})
        reply = await self.ws.receive_json()
        check(reply["type"] == "auth_ok", f"websocket auth: {reply}")

    async def post(self, path, body):
        async with self.session.post(self.base + path, json=body, headers=self.headers) as r:
            text = await r.text()
            check(r.status in (200, 201), f"POST {path}: {r.status} {text}")
            return json.loads(text) if text else None

    async def state(self, entity_id):
        async with self.session.get(
            f"{self.base}/api/states/{entity_id}", headers=self.headers
        ) as r:
            return await r.json() if r.status == 200 else None

    async def command(self, kind, **fields):
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "type": kind, **fields})
        while True:
            reply = await self.ws.receive_json()
            if reply.get("id") == self.next_id:
                check(reply.get("success"), f"{kind}: {reply}")
                return reply["result"]

    async def set_up_mqtt(self, port):
        flow = await self.post("/api/config/config_entries/flow", {"handler": "mqtt"})
        check(flow.get("step_id") == "broker", f"MQTT config flow: {flow}")
        done = await self.post(
            f"/api/config/config_entries/flow/{flow['flow_id']}",
            {"broker": "127.0.0.1", "port": port},
        )
        check(done.get("type") == "create_entry", f"MQTT config flow: {done}")

    async def wait_state(self, entity_id, accept, what, timeout=60.0):
        async def probe():
            s = await self.state(entity_id)
            return s if s and accept(s) else None

        return await until(f"{entity_id}: {what}", probe, timeout)


def number(state):
    try:
        return float(state["state"])
    except ValueError:
        return None


async def check_registry(ha):
    entities = await until(
        "every entity in the registry",
        lambda: entities_of(ha),
    )
    by_id = {e["entity_id"]: e for e in entities}
    check(
        set(by_id) == set(ENTITIES.values()),
        f"entity ids: missing {sorted(set(ENTITIES.values()) - set(by_id))}, "
        f"unexpected {sorted(set(by_id) - set(ENTITIES.values()))}",
    )
    for obj, entity_id in ENTITIES.items():
        unique_id = by_id[entity_id]["unique_id"]
        check(unique_id == f"{PREFIX}_{obj}", f"{entity_id}: unique_id {unique_id}")
    devices = {e["device_id"] for e in entities}
    check(len(devices) == 1, f"entities on {len(devices)} devices")
    device = next(
        d for d in await ha.command("config/device_registry/list") if d["id"] in devices
    )
    check(device["name"] == f"iscamd {DEVICE}", f"device name: {device['name']}")
    check(device["manufacturer"] == "iscamd", f"manufacturer: {device['manufacturer']}")
    check(bool(device["sw_version"]), "device sw_version")
    url = device["configuration_url"]
    check(url == CONFIGURATION_URL, f"configuration_url: {url}")
    categories = {e["entity_id"]: e["entity_category"] for e in entities}
    for diagnostic in ["fps", "explanation_faithfulness"]:
        category = categories[ENTITIES[diagnostic]]
        check(category == "diagnostic", f"{diagnostic} category: {categories}")
    check(categories[ENTITIES["live"]] == "config", f"switch category: {categories}")
    print(f"registry: {len(entities)} entities on device {device['name']!r}")


async def entities_of(ha):
    listed = await ha.command("config/entity_registry/list")
    ours = [e for e in listed if e["platform"] == "mqtt"]
    return ours if len(ours) >= len(ENTITIES) else None


async def check_states(ha, labels):
    s = await ha.wait_state(ENTITIES["label"], lambda s: s["state"] in labels, f"a label of {labels}")
    print(f"label: {s['state']}")
    s = await ha.wait_state(
        ENTITIES["confidence"], lambda s: (number(s) or 0) > 50, "confidence > 50 %"
    )
    check(s["attributes"].get("unit_of_measurement") == "%", f"confidence unit: {s}")
    print(f"confidence: {s['state']} %")
    await ha.wait_state(ENTITIES["source"], lambda s: s["state"] == "on", "source on")
    s = await ha.wait_state(ENTITIES["fps"], lambda s: (number(s) or 0) > 0, "fps > 0")
    print(f"frame rate: {s['state']} fps")
    await ha.wait_state(
        ENTITIES["inference_latency"], lambda s: (number(s) or 0) > 0, "latency > 0"
    )
    await ha.wait_state(ENTITIES["dropped_frames"], lambda s: number(s) is not None, "a count")
    await ha.wait_state(ENTITIES["heatmap_interval"], lambda s: number(s) == 0, "interval 0")
    await ha.wait_state(ENTITIES["live"], lambda s: s["state"] == "off", "live maps off")
    s = await ha.wait_state(
        ENTITIES["episode"],
        lambda s: s["attributes"].get("event_type") == "new",
        "an episode",
    )
    check(s["attributes"].get("class") in labels, f"episode class: {s}")
    print(f"episode: {s['attributes']['event_type']} {s['attributes']['class']}")
    s = await ha.wait_state(
        ENTITIES["episode"],
        lambda s: s["attributes"].get("event_type") == "end",
        "an episode's end",
    )
    await ha.wait_state(
        ENTITIES["episode_snapshot"], lambda s: s["state"] not in ("unknown", ""), "a snapshot"
    )
    print(f"episode: end of {s['attributes']['class']}, with its snapshot")


async def check_button_and_image(ha, labels):
    heatmap = ENTITIES["heatmap"]
    await ha.post("/api/services/button/press", {"entity_id": ENTITIES["explain"]})
    # Episodes' ends bring maps too; the button's names its request.
    s = await ha.wait_state(
        heatmap,
        lambda s: s["attributes"].get("request_id") == "homeassistant",
        "the button's heatmap",
        timeout=120,
    )
    label = s["attributes"]["class"]["label"]
    check(label in labels, f"heatmap attributes: {s['attributes']}")
    check(s["attributes"]["passes"] > 0, f"heatmap attributes: {s['attributes']}")
    async with ha.session.get(
        f"{ha.base}/api/image_proxy/{heatmap}", headers=ha.headers
    ) as r:
        body = await r.read()
        check(r.status == 200, f"image_proxy: {r.status}")
        check(r.headers.get("Content-Type") == "image/jpeg", f"image_proxy: {r.headers}")
        check(body[:2] == b"\xff\xd8", "image_proxy: not a JPEG")
    print(f"button → heatmap of {label}; image_proxy served a {len(body)}-byte JPEG")
    # Every full map's health is measured here ([cam] health_every = 1).
    s = await ha.wait_state(
        ENTITIES["explanation_faithfulness"],
        lambda s: number(s) is not None,
        "the explanations' health",
    )
    check(-1.0 <= number(s) <= 1.0, f"explanation faithfulness: {s}")
    print(f"explanation faithfulness: {s['state']} (a diagnostic sensor)")


async def check_controls(ha):
    entity = ENTITIES["heatmap_interval"]
    await ha.post("/api/services/number/set_value", {"entity_id": entity, "value": 7})
    await ha.wait_state(entity, lambda s: number(s) == 7, "interval 7 s from the daemon")
    switch = ENTITIES["live"]
    await ha.post("/api/services/switch/turn_on", {"entity_id": switch})
    await ha.wait_state(switch, lambda s: s["state"] == "on", "live maps on")
    await ha.post("/api/services/switch/turn_off", {"entity_id": switch})
    await ha.wait_state(switch, lambda s: s["state"] == "off", "live maps off")
    print("number → interval 7 s, switch → live maps on and off, each echoed by the daemon")


async def check_unavailable(ha, daemon):
    daemon.send_signal(signal.SIGTERM)
    check(daemon.wait(timeout=30) == 0, "iscamd exited non-zero")

    async def all_unavailable():
        states = [await ha.state(e) for e in ENTITIES.values()]
        return all(s and s["state"] == "unavailable" for s in states)

    await until("every entity unavailable", all_unavailable, timeout=30)
    print("iscamd stopped: every entity unavailable")


def check_log(config):
    lines = (config / "home-assistant.log").read_text(errors="replace").splitlines()
    problems = [
        line
        for line in lines
        if (" WARNING " in line or " ERROR " in line)
        and ("mqtt" in line.lower() or "iscamd" in line.lower())
    ]
    check(not problems, "Home Assistant's log:\n" + "\n".join(problems))
    others = [line for line in lines if " WARNING " in line or " ERROR " in line]
    print(f"Home Assistant's log: no warning or error about MQTT or iscamd ({len(others)} others)")
    for line in others:
        print(f"  (other) {line}")


async def run(workdir, iscamd, model, images, labels):
    t0 = time.monotonic()
    broker, mqtt_port = mosquitto(workdir)
    hass, ha_port, ha_config = home_assistant(workdir)
    processes = [broker, hass]
    try:
        async with aiohttp.ClientSession() as session:
            ha = HomeAssistant(session, ha_port)

            async def onboarding_open():
                async with session.get(ha.base + "/api/onboarding") as r:
                    return r.status == 200

            await until("Home Assistant's HTTP API", onboarding_open, timeout=300)
            print(f"Home Assistant up after {time.monotonic() - t0:.1f} s")
            await ha.onboard()
            await ha.set_up_mqtt(mqtt_port)
            config = daemon_config(workdir, mqtt_port, model, scene(workdir, images))
            daemon = start("iscamd", [iscamd, "run", "--config", str(config)], workdir)
            processes.append(daemon)
            await check_registry(ha)
            await check_states(ha, labels)
            await check_button_and_image(ha, labels)
            await check_controls(ha)
            await check_unavailable(ha, daemon)
            await ha.ws.close()
        check_log(ha_config)
    finally:
        for p in reversed(processes):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
    print(f"Home Assistant check passed in {time.monotonic() - t0:.1f} s")


def main():
    iscamd, model, image_a, label_a, image_b, label_b = sys.argv[1:7]
    workdir = Path(tempfile.mkdtemp(prefix="iscamd-ha-"))
    try:
        asyncio.run(run(workdir, iscamd, model, [image_a, image_b], {label_a, label_b}))
    except Failed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        for name in ["iscamd", "home-assistant"]:
            log = workdir / f"{name}.log"
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-40:]
                print(f"--- {name}.log (last 40 lines)", file=sys.stderr)
                print("\n".join(tail), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
