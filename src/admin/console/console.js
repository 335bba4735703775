// respguard's live console: polls this listener's /console/data and /keyspace, keeps the
// last five minutes of figures in the browser, and draws them. Plain script, no library,
// no request to any other host.
"use strict";

const DATA_EVERY_MS = 2000;
const KEYSPACE_EVERY_MS = 10000;
const HISTORY_MS = 5 * 60 * 1000;
const HISTORY_MAX = 300; // points kept, whatever the clock says
const LEVELS = { normal: 0, soft: 1, hard: 2 };

const history = []; // { t, share, level, cps }
let previous = null; // the last sample, for the command rate

const $ = (id) => document.getElementById(id);

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}

function number(n, digits) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return n.toLocaleString("en-US", { maximumFractionDigits: digits || 0 });
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
}

// Replace a table's body with one row per item, or one row saying why there is none.
function fillTable(table, items, columns, emptyText) {
  const body = table.tBodies[0];
  body.replaceChildren();
  if (!items || items.length === 0) {
    const row = body.insertRow();
    cell(row, emptyText, "empty");
    row.cells[0].colSpan = table.tHead.rows[0].cells.length;
    return;
  }
  for (const item of items) {
    const row = body.insertRow();
    for (const [value, numeric] of columns(item)) cell(row, value, numeric ? "num" : "");
  }
}

function remember(data) {
  const t = data.unix_ms;
  const memory = data.memory || {};
  const share = memory.limit_bytes > 0 ? memory.used_bytes / memory.limit_bytes : null;
  let cps = null;
  if (previous && data.commands_answered !== null && previous.count !== null && t > previous.t) {
    cps = Math.max(0, (data.commands_answered - previous.count) * 1000 / (t - previous.t));
  }
  previous = { t, count: data.commands_answered };
  history.push({ t, share, level: LEVELS[memory.shedding_level] || 0, cps });
  while (history.length > HISTORY_MAX || (history.length && history[0].t < t - HISTORY_MS)) {
    history.shift();
  }
  return cps;
}

function showFigures(data, cps) {
  const memory = data.memory || {};
  $("memory-used").textContent = bytes(memory.used_bytes);
  $("memory-limit").textContent = memory.limit_bytes > 0
    ? bytes(memory.limit_bytes) + " (" + memory.limit_source + ")" : "none";
  $("memory-pressure").textContent = memory.pressure === undefined ? "–"
    : number(memory.pressure * 100, 1) + " %";
  const level = $("shedding-level");
  level.textContent = memory.shedding_level || "–";
  level.className = "level-" + (memory.shedding_level || "normal");
  if (cps !== null) $("commands-per-second").textContent = number(cps, 1);
  $("commands-answered").textContent = data.commands_answered === null
    ? "metrics disabled" : number(data.commands_answered);
  const clients = data.clients || {};
  $("clients").textContent = number(clients.connected) + " of " + number(clients.max);
  const upstream = data.upstream || {};
  $("upstream").textContent = (upstream.up ? "up" : "DOWN") + ", " + number(upstream.connections)
    + (upstream.connections === 1 ? " connection" : " connections");
  $("summary").textContent = upstream.address + " · " + (upstream.up ? "Redis answering" : "Redis not answering")
    + " · shedding " + (memory.shedding_level || "–");
  const config = data.config || {};
  $("about").textContent = "respguard " + data.version + " · up " + number(data.uptime_seconds)
    + " s · configuration generation " + config.generation + " (" + config.hash + ")"
    + (config.path ? " from " + config.path : "");
}

function showTables(data) {
  const decisions = $("decisions");
  if (data.decisions === null) {
    fillTable(decisions, [], null, "Metrics disabled (admin.metrics = false): no decision counts.");
  } else {
    fillTable(decisions, data.decisions, (d) => [
      [d.guard], [d.rule], [d.action], [d.mode], [number(d.count), true],
    ], "No rule has decided anything yet.");
  }
  fillTable($("refused"), data.top_refused_clients, (c) => [[c.client], [number(c.refusals), true]],
    "No client refused.");
  $("rules").textContent = data.rules_toml || "(no guard configured)";
}

// Draw `series` (values in [0, top]) over the history's time span, with an optional band per
// point (shedding levels) behind the line.
function chart(canvas, pick, top, bands) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 4;
  ctx.clearRect(0, 0, w, h);
  if (history.length === 0) return;
  const end = history[history.length - 1].t;
  const x = (t) => pad + (w - 2 * pad) * (1 - (end - t) / HISTORY_MS);
  const y = (v) => h - pad - (h - 2 * pad) * Math.min(v / top, 1);
  const style = getComputedStyle(document.documentElement);
  if (bands) {
    for (let i = 0; i < history.length; i++) {
      const level = history[i].level;
      if (level === 0) continue;
      const next = i + 1 < history.length ? history[i + 1].t : end + DATA_EVERY_MS;
      ctx.fillStyle = style.getPropertyValue(level === 2 ? "--hard" : "--soft");
      ctx.globalAlpha = 0.35;
      ctx.fillRect(x(history[i].t), 0, Math.max(1, x(next) - x(history[i].t)), h);
      ctx.globalAlpha = 1;
    }
  }
  ctx.strokeStyle = style.getPropertyValue("--line");
  ctx.beginPath(); ctx.moveTo(pad, y(top)); ctx.lineTo(w - pad, y(top)); ctx.stroke();
  ctx.strokeStyle = style.getPropertyValue("--used");
  ctx.lineWidth = 2;
  ctx.beginPath();
  let drawing = false;
  for (const p of history) {
    const v = pick(p);
    if (v === null) { drawing = false; continue; }
    if (drawing) ctx.lineTo(x(p.t), y(v)); else ctx.moveTo(x(p.t), y(v));
    drawing = true;
  }
  ctx.stroke();
  ctx.lineWidth = 1;
  ctx.fillStyle = style.getPropertyValue("--muted");
  ctx.font = "11px sans-serif";
  ctx.fillText(bands ? "100 % of limit" : number(top, 1) + " /s", pad + 2, 12);
}

function draw() {
  chart($("memory-chart"), (p) => p.share, 1, true);
  const peak = history.reduce((m, p) => Math.max(m, p.cps || 0), 0);
  chart($("commands-chart"), (p) => p.cps, peak > 0 ? peak * 1.1 : 1, false);
}

async function pollData() {
  try {
    const response = await fetch("/console/data", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const data = await response.json();
    const cps = remember(data);
    showFigures(data, cps);
    showTables(data);
    draw();
  } catch (e) {
    $("summary").textContent = "Cannot read the proxy's figures: " + e.message;
  }
  setTimeout(pollData, DATA_EVERY_MS);
}

function showKeyspace(report) {
  const table = $("keyspace");
  $("keyspace-note").hidden = true;
  table.hidden = false;
  $("keyspace-caption").textContent = "Key prefixes, most operations first, over the last "
    + number(report.window_seconds) + " s"
    + (report.sample_rate > 1 ? " (one command in " + report.sample_rate + " observed)" : "");
  fillTable(table, report.prefixes, (p) => [
    [p.prefix],
    [number(p.operations), true],
    [number(p.writes_per_second, 2), true],
    [bytes(p.bytes_written), true],
    [p.writes > 0 ? number(100 * p.writes_without_ttl / p.writes, 1) + " %" : "–", true],
    [bytes(p.largest_value_bytes), true],
    [number(p.pushes - p.pops), true],
    [p.library || "–"],
  ], "No key seen yet.");
}

async function pollKeyspace() {
  try {
    const response = await fetch("/keyspace", { cache: "no-store" });
    if (response.status === 404) {
      $("keyspace").hidden = true;
      $("keyspace-note").hidden = false;
      $("keyspace-note").textContent = "keyspace insight disabled";
    } else if (response.ok) {
      showKeyspace(await response.json());
    } else {
      throw new Error("HTTP " + response.status);
    }
  } catch (e) {
    $("keyspace-note").hidden = false;
    $("keyspace-note").textContent = "Cannot read the keyspace report: " + e.message;
  }
  setTimeout(pollKeyspace, KEYSPACE_EVERY_MS);
}

pollData();
pollKeyspace();
