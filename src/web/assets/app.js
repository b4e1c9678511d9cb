// The page: reads /api/live (Server-Sent Events) and the JSON API; writes text only
// through textContent, so no payload can become markup.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function fill(list, pairs) {
  list.replaceChildren();
  for (const [key, value] of pairs) {
    if (value === undefined || value === null) continue;
    list.append(el("dt", key), el("dd", String(value)));
  }
}

const pct = (x) => (x * 100).toFixed(1) + " %";
// "2026-11-26T01:07:46.801Z" → "01:07:46" (UTC, as published).
const clock = (ts) => (typeof ts === "string" ? ts.slice(11, 19) : "");
const ms = (x) => (x === null || x === undefined ? "–" : x.toFixed(1) + " ms");

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options));
  if (response.status === 401) {
    showLogin();
    throw new Error("the web token is needed");
  }
  return response;
}

function showLogin() {
  $("login").hidden = false;
  $("main").hidden = true;
}

function showMain() {
  $("login").hidden = true;
  $("main").hidden = false;
}

function caption(info) {
  if (!info) return "no heatmap yet";
  const m = info.method || {};
  const cls = info.class || {};
  const kind = info.fresh ? "full map" : "live map, weights " + Math.round(info.age_ms) + " ms old";
  return `${cls.label} [${cls.index}] ${pct(cls.score || 0)} · ${m.name} (${info.passes} passes) · ${kind} · frame ${info.frame} at ${clock(info.ts)} UTC`;
}

let shownOverlay = null;

function showStatus(status) {
  const stats = status.stats;
  const health = $("health");
  if (stats) {
    $("device").textContent = stats.device;
    const source = stats.source;
    const up = stats.connected && (!source || source.ok);
    health.className = "pill " + (up ? "ok" : "bad");
    health.textContent = (source && !source.ok ? "source down" : "source ok") +
      " · " + (stats.connected ? "broker connected" : "broker unreachable");
    fill($("stats"), [
      ["fps", stats.fps.toFixed(2)],
      ["inference", ms(stats.latency_ms.inference_mean)],
      ["last full map", ms(stats.latency_ms.heatmap_last)],
      ["capture → publish p50", ms(stats.latency_ms.capture_to_publish_p50)],
      ["capture → publish p95", ms(stats.latency_ms.capture_to_publish_p95)],
      ["frames processed", stats.frames_processed],
      ["frames dropped", stats.frames_dropped],
      ["heatmaps", stats.heatmaps + " full, " + stats.live_maps + " live"],
      ["queued for the broker", stats.queue_depth],
      ["source", source ? (source.ok ? "ok" : "down: " + (source.last_error || "")) : undefined],
      ["uptime", Math.round(stats.uptime_s) + " s"],
    ]);
  }
  const p = status.prediction;
  const top5 = $("top5");
  top5.replaceChildren();
  if (p) {
    for (const c of p.top) {
      const bar = el("div", undefined, "bar");
      bar.style.width = Math.max(1, c.score * 100).toFixed(1) + "%";
      const item = el("li", `${c.label} [${c.index}] ${pct(c.score)}`);
      item.append(bar);
      top5.append(item);
    }
    $("prediction-meta").textContent = `frame ${p.frame} at ${clock(p.ts)} UTC · ${p.model}`;
  }
  const info = status.heatmap;
  $("caption").textContent = caption(info);
  if (info && info.seq !== shownOverlay) {
    shownOverlay = info.seq;
    $("overlay").src = "/api/overlay.jpg?seq=" + encodeURIComponent(info.seq);
  }
}

async function showEpisodes() {
  const response = await api("/api/episodes");
  if (!response.ok) return;
  const { episodes } = await response.json();
  const list = $("episode-list");
  list.replaceChildren();
  $("episodes-none").hidden = episodes.length > 0;
  for (const { end, snapshot } of episodes) {
    const item = el("li");
    if (snapshot) {
      const img = el("img");
      img.src = snapshot;
      img.alt = "the peak frame of " + end.class.label;
      item.append(img);
    }
    const frames = end.frames === 1 ? "1 frame" : end.frames + " frames";
    item.append(el("div", `${end.class.label}: peak ${pct(end.peak.score)}, ${frames}`),
      el("div", `${clock(end.start.ts)} → ${clock(end.last.ts)} UTC (${end.reason})`, "meta"));
    list.append(item);
  }
}

async function showDevice() {
  const response = await api("/api/device");
  if (!response.ok) return;
  const d = await response.json();
  const m = d.model;
  const pre = m.preprocess;
  fill($("device-info"), [
    ["model", m.file],
    ["SHA-256", m.sha256],
    ["classes", m.classes],
    ["CAM layer", m.cam_layer],
    ["preprocessing", `${pre.input_size}px (resize ${pre.resize}), ${pre.channel_order}, 0..${pre.pixel_max}, mean ${pre.mean.join("/")}, std ${pre.std.join("/")}`],
    ["backend", m.backend],
    ["method", d.method],
    ["iscamd", d.version],
    ["run", d.run],
  ]);
  $("config").textContent = d.config || "";
}

async function explain(event) {
  event.preventDefault();
  const command = { cmd: "explain" };
  const method = $("method").value.trim();
  if (method) command.method = method;
  const cls = $("class").value.trim();
  if (cls) command.class = Number(cls);
  const status = $("explain-status");
  status.className = "meta";
  status.textContent = "waiting for the next frame's map…";
  const started = performance.now();
  try {
    const response = await api("/api/cmd", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(command),
    });
    const answer = await response.json();
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    if (!response.ok || !answer.result || !answer.result.ok) {
      status.className = "error";
      status.textContent = "refused: " + ((answer.result && answer.result.error) || answer.error);
      return;
    }
    status.textContent = `done in ${seconds} s`;
    if (answer.image) {
      $("explained").hidden = false;
      $("explained-image").src = answer.image;
      $("explained-caption").textContent = caption(answer.heatmap);
    }
  } catch (e) {
    status.className = "error";
    status.textContent = String(e.message || e);
  }
}

async function compare(event) {
  event.preventDefault();
  const methods = [...document.querySelectorAll("#compare-form .spec")]
    .map((input) => input.value.trim())
    .filter((spec) => spec);
  const status = $("compare-status");
  status.className = "meta";
  status.textContent = "explaining the last frame with " + methods.length + " methods…";
  try {
    const response = await api("/api/compare", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ methods }),
    });
    const answer = await response.json();
    if (!response.ok) {
      status.className = "error";
      status.textContent = "refused: " + answer.error;
      return;
    }
    const m = answer.manifest;
    status.textContent = `frame ${m.frame.number} (${clock(m.frame.ts)} UTC): ${m.top[0].label} ${pct(m.top[0].score)}`;
    const maps = $("compared");
    maps.replaceChildren();
    m.maps.forEach((map, i) => {
      const figure = el("figure");
      const img = el("img");
      img.src = answer.images[i] + "?at=" + encodeURIComponent(m.created);
      img.alt = "the map of " + map.spec;
      const caption = `${map.spec} → ${map.class.label}: ${map.passes} passes, ${Math.round(map.millis)} ms`;
      figure.append(el("figcaption", caption), img);
      maps.append(figure);
    });
    const link = el("a", "Download these maps as a bundle");
    link.href = answer.bundle;
    link.setAttribute("download", "");
    maps.append(link);
  } catch (e) {
    status.className = "error";
    status.textContent = String(e.message || e);
  }
}

async function login(event) {
  event.preventDefault();
  const response = await fetch("/api/login", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: $("token").value }),
  });
  if (response.ok) {
    $("login-error").textContent = "";
    start();
  } else {
    $("login-error").textContent = "wrong token";
  }
}

let live = null;

async function start() {
  // The first view comes with the page (/api/status.js), read again after a login.
  let status = window.iscamdStatus;
  window.iscamdStatus = undefined;
  if (!status) {
    const response = await api("/api/status").catch(() => null);
    if (!response || !response.ok) return;
    status = await response.json();
  }
  showMain();
  showStatus(status);
  showDevice();
  showEpisodes();
  if (live) live.close();
  live = new EventSource("/api/live");
  let episodes = "";
  live.addEventListener("status", (e) => {
    const status = JSON.parse(e.data);
    showStatus(status);
    const uptime = status.stats ? status.stats.uptime_s : 0;
    // The episode list changes rarely: read again every ~10 s.
    const tick = String(Math.floor(uptime / 10));
    if (tick !== episodes) {
      episodes = tick;
      showEpisodes();
    }
  });
}

// Deferred: runs once the document is parsed, after /api/status.js.
$("explain-form").addEventListener("submit", explain);
$("compare-form").addEventListener("submit", compare);
$("login-form").addEventListener("submit", login);
start();
