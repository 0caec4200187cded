// sekisho's live dashboard. No dependencies: the charts are drawn on canvases by hand.
//
// The data comes from one server-sent event stream, GET /api/v1/stream, read with fetch() so the
// admin token travels in the Authorization header (never a cookie, so no request can be forged
// from another site) — EventSource cannot send headers. The token is asked once and kept in
// sessionStorage: it lives as long as the tab. The stream reconnects by itself, with a short
// growing pause, after a drop or a restart of the gateway; a stream silent for longer than a few
// snapshot periods is treated as dropped.
//
// Memory stays flat however long the page is open: history lives in fixed-size rings, and the
// elements of an upstream, circuit, route or alert are made once and updated in place (removed
// when it disappears).
"use strict";

const HISTORY = 600;            // points per series: ten minutes at one snapshot a second
const SILENT_MS = 5000;         // no event for this long: reconnect
const TOKEN_KEY = "sekisho.admin.token";
const COLOURS = { rps: "#0969da", err: "#cf222e", p50: "#1a7f37", p95: "#b07800", p99: "#8250df", hit: "#1a7f37" };

class Ring {
  constructor(size) { this.size = size; this.items = new Array(size); this.start = 0; this.length = 0; }
  push(item) {
    if (this.length < this.size) { this.items[(this.start + this.length) % this.size] = item; this.length++; }
    else { this.items[this.start] = item; this.start = (this.start + 1) % this.size; }
  }
  at(index) { return this.items[(this.start + index) % this.size]; }
  last() { return this.length ? this.at(this.length - 1) : undefined; }
}

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  upstreamHistory: new Map(),   // name → Ring of [t, rps, err, p50, p95, p99]
  routeHistory: new Map(),      // route name → the same
  cacheHistory: new Ring(HISTORY),
  lastPoint: 0,
  controller: null,
  watchdog: null,
  retryMs: 1000,
  lastEvent: 0,
  snapshot: null,
};

// For a look from the console (and the browser test): the page's state, read-only by intent.
window.sekishoDashboard = state;

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "text") node.textContent = value; else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function num(value, digits = 1) { return value === null || value === undefined ? "–" : Number(value).toFixed(digits); }
function pct(value) { return value === null || value === undefined ? "–" : (value * 100).toFixed(1) + " %"; }
function ms(value) { return value === null || value === undefined ? "–" : Number(value).toFixed(value < 10 ? 2 : 0) + " ms"; }

function toast(message) {
  const box = $("toast");
  box.textContent = message;
  box.classList.add("shown");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => box.classList.remove("shown"), 4000);
}

function setConnection(what) {
  const badge = $("connection");
  badge.dataset.connection = what;
  badge.textContent = what;
}

// ---- the stream -------------------------------------------------------------------------------

function headers() {
  const h = { "Accept": "text/event-stream" };
  if (state.token) h["Authorization"] = "Bearer " + state.token;
  return h;
}

function scheduleReconnect() {
  clearTimeout(state.reconnectTimer);
  setConnection("reconnecting");
  state.reconnectTimer = setTimeout(connect, state.retryMs);
  state.retryMs = Math.min(state.retryMs * 2, 5000);
}

async function connect() {
  if (state.controller) state.controller.abort();
  const controller = new AbortController();
  state.controller = controller;
  let response;
  try {
    response = await fetch("/api/v1/stream", { headers: headers(), cache: "no-store", signal: controller.signal });
  } catch (error) {
    if (state.controller === controller) scheduleReconnect();
    return;
  }
  if (response.status === 401) { askToken(state.token ? "that token was refused" : ""); return; }
  if (response.status === 429) {
    // Too many wrong tokens from this address: wait as told, then ask again.
    const wait = Number(response.headers.get("Retry-After") || 60);
    setConnection("locked");
    state.reconnectTimer = setTimeout(() => askToken("too many wrong tokens from this address; try again"), wait * 1000);
    return;
  }
  if (!response.ok || !response.body) { scheduleReconnect(); return; }
  state.retryMs = 1000;
  state.lastEvent = Date.now();
  setConnection("live");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        dispatch(block);
      }
    }
  } catch (error) {
    // aborted or dropped: reconnect below
  }
  if (state.controller === controller) scheduleReconnect();
}

function dispatch(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event: ")) name = line.slice(7);
    else if (line.startsWith("data: ")) data.push(line.slice(6));
  }
  state.lastEvent = Date.now();
  if (!data.length) return;
  let payload;
  try { payload = JSON.parse(data.join("\n")); } catch (error) { return; }
  if (name === "history") payload.forEach(addPoint);
  else if (name === "snapshot") { addPoint(payload.point); render(payload); }
}

// A stream that says nothing for too long (a half-open connection) is dropped and reopened.
setInterval(() => {
  if ($("connection").dataset.connection === "live" && Date.now() - state.lastEvent > SILENT_MS) {
    if (state.controller) state.controller.abort();
    scheduleReconnect();
  }
}, 1000);

function addPoint(point) {
  if (!point || point.t <= state.lastPoint) return;
  state.lastPoint = point.t;
  for (const [name, values] of Object.entries(point.u || {})) {
    if (!state.upstreamHistory.has(name)) state.upstreamHistory.set(name, new Ring(HISTORY));
    state.upstreamHistory.get(name).push([point.t, ...values]);
  }
  for (const [name, values] of Object.entries(point.r || {})) {
    if (!state.routeHistory.has(name)) state.routeHistory.set(name, new Ring(HISTORY));
    state.routeHistory.get(name).push([point.t, ...values]);
  }
  state.cacheHistory.push([point.t, point.c]);
}

// ---- the token --------------------------------------------------------------------------------

function askToken(why) {
  setConnection("locked");
  $("login-error").textContent = why || "";
  const dialog = $("login");
  if (!dialog.open) dialog.showModal();
  $("token").focus();
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("token").value;
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $("login").close();
  connect();
});

// ---- actions ----------------------------------------------------------------------------------

async function api(method, path, body) {
  const init = { method, headers: headers(), cache: "no-store" };
  init.headers["Accept"] = "application/json";
  if (body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  let response;
  try { response = await fetch(path, init); } catch (error) { toast(method + " " + path + ": " + error); return null; }
  const answer = await response.json().catch(() => ({}));
  if (response.status === 401) { askToken("that token was refused"); return null; }
  if (!response.ok) {
    toast((answer.error && answer.error.message) || (method + " " + path + ": " + response.status));
    return null;
  }
  return answer;
}

async function circuitAction(name, action) {
  const answer = await api("POST", "/api/v1/circuits/" + encodeURIComponent(name), { action });
  if (answer) toast("circuit " + name + ": " + answer.circuit.state);
}

$("reload").addEventListener("click", async () => {
  const answer = await api("POST", "/api/v1/config/reload");
  if (answer) toast("config reloaded: generation " + answer.generation + (answer.needs_restart && answer.needs_restart.length ? " (needs a restart: " + answer.needs_restart.join(", ") + ")" : ""));
});

$("purge-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = {};
  body[$("purge-kind").value] = $("purge-value").value;
  const answer = await api("POST", "/api/v1/cache/purge", body);
  if (answer) toast("purged " + JSON.stringify(answer.purge));
});

// ---- rendering --------------------------------------------------------------------------------

// Keeps one element per key in `container`, made by `make` once, updated by `update` each time;
// elements whose key is gone are removed.
function keyed(container, items, key, make, update) {
  const seen = new Set();
  for (const item of items) {
    const id = key(item);
    seen.add(id);
    let node = container.querySelector(":scope > [data-key=\"" + CSS.escape(id) + "\"]");
    if (!node) { node = make(item); node.dataset.key = id; container.append(node); }
    update(node, item);
  }
  for (const node of [...container.children]) {
    if (node.dataset.key !== undefined && !seen.has(node.dataset.key)) node.remove();
  }
}

function render(snapshot) {
  state.snapshot = snapshot;
  const overall = $("overall");
  overall.dataset.state = snapshot.status;
  overall.textContent = snapshot.status;
  $("meta").textContent = "generation " + snapshot.generation + " · " + new Date(snapshot.at_unix_ms).toLocaleTimeString() + " · " + snapshot.viewers + " viewer(s)";
  renderAlerts(snapshot.alerts);
  renderUpstreams(snapshot.upstreams);
  renderCircuits(snapshot.circuits);
  renderRoutes(snapshot.routes);
  renderRateLimits(snapshot.rate_limits);
  renderCache(snapshot.cache);
  renderConfig(snapshot);
  // Histories of upstreams that no longer exist are forgotten.
  const names = new Set(snapshot.upstreams.map((u) => u.name));
  for (const name of [...state.upstreamHistory.keys()]) if (!names.has(name)) state.upstreamHistory.delete(name);
  const routeNames = new Set(snapshot.routes.map((r) => r.name));
  for (const name of [...state.routeHistory.keys()]) if (!routeNames.has(name)) state.routeHistory.delete(name);
}

function renderAlerts(alerts) {
  const box = $("alerts");
  if (alerts === null) { if (!box.querySelector(".muted")) box.replaceChildren(el("p", { class: "muted", text: "alerting is not running" })); return; }
  const placeholder = box.querySelector(".muted");
  if (placeholder) placeholder.remove();
  keyed(box, alerts, (a) => a.fingerprint, (a) => {
    const node = el("div", { class: "alert", "data-alert": a.name },
      el("span", { class: "badge" }), el("span", { class: "what" }),
      el("button", { type: "button", "data-action": "ack", text: "Ack" }),
      el("button", { type: "button", "data-action": "silence", text: "Silence 1 h" }));
    node.querySelector("[data-action=ack]").addEventListener("click", async () => {
      const answer = await api("POST", "/api/v1/alerts/" + encodeURIComponent(a.fingerprint) + "/ack");
      if (answer) toast("acknowledged " + a.name);
    });
    node.querySelector("[data-action=silence]").addEventListener("click", async () => {
      const answer = await api("POST", "/api/v1/silences", { matchers: [{ name: "alertname", value: a.name }], duration_seconds: 3600, comment: "silenced from the dashboard" });
      if (answer) toast("silenced " + a.name + " for 1 h (silence " + answer.id + ")");
    });
    return node;
  }, (node, a) => {
    node.dataset.severity = a.severity;
    const badge = node.querySelector(".badge");
    badge.dataset.state = a.severity === "critical" ? "critical" : "warning";
    badge.textContent = a.severity;
    const summary = (a.annotations && a.annotations.summary) || "";
    node.querySelector(".what").textContent = a.name + (summary ? " — " + summary : "") + " · firing " + a.firing_for_seconds + " s" + (a.acknowledged ? " · acknowledged" : "") + (a.muted ? " · silenced" : "");
  });
  if (!alerts.length && !box.children.length) box.append(el("p", { class: "muted", text: "no active alert" }));
}

function renderUpstreams(upstreams) {
  keyed($("upstreams"), upstreams, (u) => u.name, (u) => {
    const card = el("div", { class: "card", "data-upstream": u.name },
      el("h3", {}, el("span", { class: "badge state" }), el("span", { text: u.name }), el("span", { class: "muted balance" }), el("span", { class: "badge circuit" })),
      el("div", { class: "reasons" }),
      el("div", { class: "figures" }),
      el("div", { class: "legend" },
        el("span", {}, el("i"), "req/s"), el("span", {}, el("i"), "errors %")),
      el("canvas", { class: "traffic", height: "90" }),
      el("div", { class: "legend" }, el("span", {}, el("i"), "p50"), el("span", {}, el("i"), "p95"), el("span", {}, el("i"), "p99")),
      el("canvas", { class: "latency", height: "90" }),
      el("div", { class: "bulkhead" }),
      el("table", { class: "targets" }, el("thead", {}, el("tr", {}, ...["target", "health", "in flight", "latency", "errors", "ejections", "ejected for"].map((h) => el("th", { text: h })))), el("tbody")));
    const swatches = card.querySelectorAll(".legend i");
    [COLOURS.rps, COLOURS.err, COLOURS.p50, COLOURS.p95, COLOURS.p99].forEach((c, i) => { swatches[i].style.background = c; });
    return card;
  }, (card, u) => {
    card.dataset.state = u.state;
    const badge = card.querySelector(".badge.state");
    badge.dataset.state = u.state;
    badge.textContent = u.state;
    card.querySelector(".balance").textContent = u.balance;
    const circuit = card.querySelector(".badge.circuit");
    circuit.hidden = !u.circuit;
    if (u.circuit) { circuit.dataset.state = u.circuit; circuit.textContent = "circuit " + u.circuit; }
    card.querySelector(".reasons").textContent = u.reasons.join(" · ");
    card.querySelector(".figures").replaceChildren(
      el("span", {}, "req/s ", el("b", { text: num(u.requests_per_second) })),
      el("span", {}, "errors ", el("b", { text: pct(u.error_rate) })),
      el("span", {}, "p50 ", el("b", { text: ms(u.p50_ms) })),
      el("span", {}, "p95 ", el("b", { text: ms(u.p95_ms) })),
      el("span", {}, "p99 ", el("b", { text: ms(u.p99_ms) })));
    const bulkhead = card.querySelector(".bulkhead");
    if (u.bulkhead) {
      const b = u.bulkhead;
      if (!bulkhead.firstChild) bulkhead.append(el("div", { class: "muted" }), el("div", { class: "bar" }, el("div")));
      bulkhead.firstChild.textContent = "bulkhead " + b.in_use + "/" + b.max_concurrent + " in use · " + b.queued + " queued · " + b.rejected + " rejected";
      const fill = bulkhead.querySelector(".bar > div");
      const share = b.max_concurrent ? b.in_use / b.max_concurrent : 0;
      fill.style.width = Math.min(100, share * 100) + "%";
      fill.style.background = share >= 1 ? "var(--critical)" : share >= 0.8 ? "var(--warning)" : "var(--healthy)";
    } else bulkhead.replaceChildren();
    const rows = card.querySelector(".targets tbody");
    keyed(rows, u.targets, (t) => t.address, () => el("tr", {}, ...Array.from({ length: 7 }, () => el("td"))), (row, t) => {
      const cells = row.children;
      cells[0].textContent = t.address + (t.backup ? " (backup)" : "");
      cells[1].textContent = t.health + (t.eligible ? "" : " · not eligible");
      cells[1].className = "health-" + t.health;
      cells[2].textContent = t.in_flight;
      cells[3].textContent = ms(t.ewma_latency_ms);
      cells[4].textContent = pct(t.error_rate);
      cells[5].textContent = t.ejections;
      cells[6].textContent = t.ejected_for_ms ? (t.ejected_for_ms / 1000).toFixed(1) + " s" : "";
    });
    const history = state.upstreamHistory.get(u.name);
    if (history) {
      chart(card.querySelector("canvas.traffic"), history, [{ index: 1, colour: COLOURS.rps }, { index: 2, colour: COLOURS.err, scale: 100, axis: "right", max: 100 }]);
      chart(card.querySelector("canvas.latency"), history, [{ index: 3, colour: COLOURS.p50 }, { index: 4, colour: COLOURS.p95 }, { index: 5, colour: COLOURS.p99 }], " ms");
    }
  });
}

function renderCircuits(circuits) {
  const box = $("circuits");
  keyed(box, circuits, (c) => c.name, (c) => {
    const card = el("div", { class: "card", "data-circuit": c.name },
      el("h3", {}, el("span", { class: "badge" }), el("span", { text: c.name })),
      el("div", { class: "figures" }),
      el("div", { class: "muted transitions" }),
      el("div", { class: "actions" }));
    for (const [action, label] of [["force_open", "Force open"], ["force_closed", "Force close"], ["reset", "Reset"], ["disable", "Disable"]]) {
      const button = el("button", { type: "button", "data-action": action, text: label });
      button.addEventListener("click", () => circuitAction(c.name, action));
      card.querySelector(".actions").append(button, " ");
    }
    return card;
  }, (card, c) => {
    card.dataset.state = c.state;
    const badge = card.querySelector(".badge");
    badge.dataset.state = c.state;
    badge.textContent = c.state;
    card.querySelector(".figures").replaceChildren(
      el("span", {}, "failures ", el("b", { text: pct(c.failure_rate) })),
      el("span", {}, "slow ", el("b", { text: pct(c.slow_call_rate) })),
      el("span", {}, "calls in window ", el("b", { text: String(c.calls) })),
      el("span", {}, "opened ", el("b", { text: c.opened + "×" })));
    const recent = c.transitions.slice(-4).map((t) => new Date(t.at_unix_ms).toLocaleTimeString() + " " + t.from + " → " + t.to);
    card.querySelector(".transitions").textContent = recent.length ? recent.join(" · ") : "no transition yet";
  });
  if (!circuits.length && !box.children.length) box.append(el("p", { class: "muted", text: "no upstream has a circuit breaker" }));
  else if (circuits.length) { const none = box.querySelector(":scope > p.muted"); if (none) none.remove(); }
}

function renderRoutes(routes) {
  keyed($("routes").tBodies[0], routes, (r) => r.name + " → " + r.upstream, (r) => {
    const row = el("tr", { "data-route": r.name }, ...Array.from({ length: 12 }, () => el("td")), el("td", {}, el("canvas", { class: "spark", height: "28" })));
    row.children[8].classList.add("budget");
    return row;
  }, (row, r) => {
    // The retry budget: retries still allowed over its window, of those its requests earn.
    const budget = r.retry_budget;
    const values = [r.name, r.upstream, num(r.requests_per_second), pct(r.error_rate), ms(r.p50_ms), ms(r.p95_ms), ms(r.p99_ms),
      num(r.retries_per_second), budget ? budget.available + " (" + budget.retries + " used)" : "no retries", String(r.retry_budget_exhausted),
      r.rate_limit ? num(r.rate_limit.limited_per_second) : "", r.cache ? pct(r.cache.hit_rate) : ""];
    values.forEach((v, i) => { row.children[i].textContent = v; });
    const cell = row.children[8];
    if (budget) { cell.dataset.retryBudget = budget.available; cell.dataset.state = budget.available === 0 ? "critical" : "healthy"; }
    else { delete cell.dataset.retryBudget; delete cell.dataset.state; }
    const history = state.routeHistory.get(r.name);
    if (history) chart(row.querySelector("canvas"), history, [{ index: 1, colour: COLOURS.rps }, { index: 2, colour: COLOURS.err, scale: 100, axis: "right", max: 100 }], "", true);
  });
}

function renderRateLimits(limits) {
  keyed($("ratelimits").tBodies[0], limits, (l) => l.scope, () => el("tr", {}, ...Array.from({ length: 6 }, () => el("td"))), (row, l) => {
    [l.scope, l.limit, l.backend, num(l.allowed_per_second), num(l.limited_per_second), String(l.limited_total)].forEach((v, i) => { row.children[i].textContent = v; });
  });
}

function renderCache(cache) {
  $("cache-hit-rate").textContent = pct(cache.hit_rate);
  $("cache-stats").textContent = cache.stats ? cache.stats.entries + " entries · " + (cache.stats.bytes / 1024).toFixed(0) + " KiB" + (cache.stats.shared ? " · shared tier" : "") : "no route caches";
  chart($("cache-chart"), state.cacheHistory, [{ index: 1, colour: COLOURS.hit, scale: 100, max: 100 }], " %");
}

function renderConfig(snapshot) {
  const reload = snapshot.last_reload;
  let text = "generation " + snapshot.generation + ", loaded " + new Date(snapshot.loaded_at_unix_ms).toLocaleString() + " · reloads: " + snapshot.reloads.ok + " ok, " + snapshot.reloads.error + " refused";
  if (reload.error) text += " · the last reload was refused, the previous config stays: " + reload.error;
  $("config").textContent = text;
  $("config").className = reload.error ? "error" : "";
  // The last reloads, newest first, each once (keyed by its time).
  const recent = snapshot.reloads.recent || [];
  const list = $("reloads");
  if (recent.length) { const none = list.querySelector(":scope > li.muted"); if (none) none.remove(); }
  keyed(list, recent, (r) => String(r.at_unix_ms), () => el("li"), (item, r) => {
    item.dataset.reload = r.generation;
    item.dataset.state = r.ok ? "healthy" : "critical";
    item.textContent = new Date(r.at_unix_ms).toLocaleTimeString() + " · " + (r.ok ? "applied, generation " + r.generation : "refused, generation " + r.generation + " stays: " + r.error) + (r.reloads > 1 ? " (" + r.reloads + " reloads)" : "");
  });
  // Newest first: keyed() appends new items at the end, so put them in order.
  for (const r of recent) { const item = list.querySelector(":scope > [data-key=\"" + CSS.escape(String(r.at_unix_ms)) + "\"]"); if (item) list.append(item); }
}

// ---- charts -----------------------------------------------------------------------------------

// Draws `series` ({index, colour, scale, axis, max}) of the points in `ring` ([t, v1, v2, …]) as
// lines over the last HISTORY seconds; left axis for the series without axis "right".
function chart(canvas, ring, series, unit = "", bare = false) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(100, canvas.clientWidth) * ratio;
  const height = Number(canvas.getAttribute("height") || 90) * ratio;
  if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, width, height);
  const pad = (bare ? 1 : 4) * ratio, top = (bare ? 2 : 6) * ratio, bottom = height - (bare ? 2 : 12) * ratio;
  const now = ring.length ? ring.last()[0] : Date.now();
  const from = now - HISTORY * 1000;
  const x = (t) => pad + (width - 2 * pad) * (t - from) / (HISTORY * 1000);
  const scales = {};
  for (const s of series) {
    const axis = s.axis || "left";
    let max = s.max !== undefined ? s.max : 0;
    if (s.max === undefined) for (let i = 0; i < ring.length; i++) { const v = ring.at(i)[s.index]; if (v !== null && v * (s.scale || 1) > max) max = v * (s.scale || 1); }
    scales[axis] = Math.max(scales[axis] || 0, max || 1);
  }
  g.strokeStyle = "#eaeef2"; g.lineWidth = 1;
  if (!bare) for (const f of [0, 0.5, 1]) { const y = bottom - (bottom - top) * f; g.beginPath(); g.moveTo(pad, y); g.lineTo(width - pad, y); g.stroke(); }
  g.fillStyle = "#656d76"; g.font = (10 * ratio) + "px system-ui, sans-serif";
  if (!bare) {
    g.fillText(niceNumber(scales.left || 1) + (series[0].axis === "right" ? "" : unit), pad, top + 8 * ratio);
    if (scales.right) { const label = niceNumber(scales.right) + " %"; g.fillText(label, width - pad - g.measureText(label).width, top + 8 * ratio); }
    g.fillText("−10 min", pad, height - 1 * ratio);
  }
  for (const s of series) {
    const max = scales[s.axis || "left"];
    g.strokeStyle = s.colour; g.lineWidth = 1.5 * ratio; g.beginPath();
    let drawing = false;
    for (let i = 0; i < ring.length; i++) {
      const point = ring.at(i);
      const v = point[s.index];
      if (point[0] < from || v === null || v === undefined) { drawing = false; continue; }
      const y = bottom - (bottom - top) * Math.min(1, v * (s.scale || 1) / max);
      if (drawing) g.lineTo(x(point[0]), y); else g.moveTo(x(point[0]), y);
      drawing = true;
    }
    g.stroke();
  }
}

function niceNumber(value) { return value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2); }

connect();
