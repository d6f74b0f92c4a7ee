// recast's dashboard: polls GET /v1/status every second, reads each service's history, follows
// GET /v1/events, and sends promote/pause/resume/abort/rollback. Vanilla JS, no build step; the
// session cookie authenticates every request (same origin).
"use strict";

const POLL_MS = 1000;
const HISTORY_MS = 5000;
const SAMPLES = 60;
const MAX_EVENTS = 200;
const MAX_MESSAGE = 160;
// The SSE stream names each event by its kind; EventSource only hands named events to
// listeners registered for that name.
const EVENT_KINDS = [
  "message", "analysis.verdict", "drift.detected", "guard.on_drift", "guard.replace_failed",
  "instance.crash_loop", "instance.health", "instance.replaced", "instance.retire_failed",
  "instance.started", "instance.stopped", "rollout.failed", "rollout.finished",
  "rollout.paused", "rollout.promoted", "rollout.resumed", "rollout.rolled_back",
  "rollout.started", "rollout.step", "service.destroyed", "state.write_failed",
  "volume.prune_failed", "volume.restored", "volume.snapshot",
];

// Per service ("project/service"): its card's elements, samples per release, last history.
const cards = new Map();

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) {
    if (c !== null && c !== undefined) e.append(c);
  }
  return e;
}

function short(digest) {
  if (!digest) return "";
  const [algo, hex] = digest.includes(":") ? digest.split(":", 2) : ["", digest];
  return (algo ? algo + ":" : "") + hex.slice(0, 12);
}

function age(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.round(s / 60) + "m ago";
  if (s < 86400) return Math.round(s / 3600) + "h ago";
  return Math.round(s / 86400) + "d ago";
}

function fmt(n, digits) {
  return Number.isFinite(n) ? n.toFixed(digits) : "–";
}

function pct(p) {
  return (Math.round(p * 10) / 10).toString() + "%";
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  };
  opts.credentials = "same-origin";
  const r = await fetch(path, opts);
  if (r.status === 401) {
    location.reload();
    throw new Error("the session ended");
  }
  const text = await r.text();
  let v = null;
  try { v = JSON.parse(text); } catch (_) { v = { error: text }; }
  if (!r.ok) throw new Error((v && v.error) || r.status + " " + r.statusText);
  return v;
}

function showError(msg) {
  const e = document.getElementById("error");
  e.textContent = msg || "";
  e.hidden = !msg;
}

// A small inline SVG line of `values` (the last SAMPLES), scaled to its own maximum.
function sparkline(values, cls) {
  const ns = "http://www.w3.org/2000/svg";
  const w = 120, h = 24;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark " + cls);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  const vs = values.filter(Number.isFinite);
  if (vs.length >= 2) {
    const max = Math.max(...vs) || 1;
    const step = w / (SAMPLES - 1);
    const off = SAMPLES - vs.length;
    const pts = vs.map((v, i) => `${((off + i) * step).toFixed(1)},${(h - 1 - (v / max) * (h - 2)).toFixed(1)}`);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", pts.join(" "));
    svg.append(line);
  }
  return svg;
}

// Rates per release from successive status samples: requests/s, share of 5xx, p99.
function series(samples) {
  const rate = [], errors = [], p99 = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i];
    const dt = (b.at - a.at) / 1000;
    const dr = b.requests - a.requests, de = b.errors - a.errors;
    if (dt <= 0 || dr < 0 || de < 0) continue; // a counter restarted
    rate.push(dr / dt);
    errors.push(dr > 0 ? (100 * de) / dr : 0);
    p99.push(b.p99);
  }
  return { rate, errors, p99 };
}

function controls(svc) {
  const box = el("div", { class: "actions" });
  const actions = [
    ["promote", "Promote the running rollout of"],
    ["pause", "Pause the running rollout of"],
    ["resume", "Resume the rollout of"],
    ["abort", "Abort the rollout of (rolls back)"],
    ["rollback", "Roll back to the previous good release:"],
  ];
  for (const [action, what] of actions) {
    const b = el("button", { type: "button", class: "action " + action, "data-action": action }, action);
    b.addEventListener("click", async () => {
      if (!confirm(`${what} ${svc.project}/${svc.service}?`)) return;
      b.disabled = true;
      try {
        await api("/v1/" + action, { service: svc.service, project: svc.project });
        showError("");
        poll();
      } catch (e) {
        showError(`${action} ${svc.service}: ${e.message}`);
      } finally {
        b.disabled = false;
      }
    });
    box.append(b);
  }
  return box;
}

function card(svc) {
  const key = svc.project + "/" + svc.service;
  let c = cards.get(key);
  if (c) return c;
  const parts = {
    head: el("span", { class: "head" }),
    rollout: el("p", { class: "rollout" }),
    traffic: el("tbody"),
    verdicts: el("ul", { class: "verdicts" }),
    instances: el("tbody"),
    drift: el("ul", { class: "drift-list" }),
    releases: el("tbody"),
    rollouts: el("ol", { class: "timeline" }),
  };
  const table = (cls, heads, body) =>
    el("table", { class: cls }, el("thead", {}, el("tr", {}, ...heads.map((h) => el("th", {}, h)))), body);
  const root = el("article", { class: "service", "data-service": svc.service, "data-project": svc.project },
    el("h3", {}, svc.service, " ", parts.head),
    controls(svc),
    parts.rollout,
    el("h4", {}, "Traffic"),
    table("traffic", ["release", "split", "", "req/s", "5xx %", "p99 ms"], parts.traffic),
    el("h4", {}, "Analysis"), parts.verdicts,
    el("h4", {}, "Instances"),
    table("instances", ["instance", "release", "state", "health", "active", "port", "age"], parts.instances),
    el("h4", {}, "Drift"), parts.drift,
    el("h4", {}, "Releases"),
    table("releases", ["release", "digest", "created", "outcome", "reason"], parts.releases),
    el("h4", {}, "Rollouts"), parts.rollouts);
  c = { key, root, parts, samples: new Map(), history: null, historyAt: 0, seen: "" };
  cards.set(key, c);
  return c;
}

function project(name) {
  const box = document.getElementById("projects");
  let p = box.querySelector(`section.project[data-project="${CSS.escape(name)}"]`);
  if (!p) {
    p = el("section", { class: "project panel", "data-project": name }, el("h2", {}, "project " + name));
    box.append(p);
  }
  return p;
}

function renderHead(c, svc) {
  const parts = [
    el("span", { class: "current", "data-release": String(svc.current_release ?? "") },
      svc.current_release == null ? "no release" : "release " + svc.current_release),
    " ", el("code", { class: "digest", title: svc.digest || "" }, short(svc.digest)),
  ];
  if (svc.paused) parts.push(el("span", { class: "badge paused" }, "paused"));
  c.parts.head.replaceChildren(...parts);
  c.parts.rollout.textContent = svc.rollout ? "Rollout: " + svc.rollout : "No rollout running.";
  c.parts.rollout.dataset.running = svc.rollout ? "true" : "false";
}

function renderTraffic(c, svc, at) {
  const rows = [];
  for (const t of svc.traffic) {
    const s = c.samples.get(t.release) || [];
    s.push({ at, requests: t.requests, errors: t.errors_5xx, p99: t.p99_ms });
    if (s.length > SAMPLES + 1) s.shift();
    c.samples.set(t.release, s);
    const { rate, errors, p99 } = series(s);
    const bar = el("span", { class: "bar" });
    bar.style.width = Math.max(0, Math.min(100, t.percent)) + "%";
    rows.push(el("tr", { class: "split", "data-release": String(t.release), "data-percent": String(t.percent) },
      el("td", { class: "release" }, "v" + t.release),
      el("td", { class: "percent" }, pct(t.percent)),
      el("td", { class: "barbox" }, bar),
      el("td", { class: "rate" }, sparkline(rate, "rate"), " ", fmt(rate.at(-1), 1)),
      el("td", { class: "errors" }, sparkline(errors, "errors"), " ", fmt(errors.at(-1), 1)),
      el("td", { class: "p99" }, sparkline(p99, "p99"), " ", fmt(t.p99_ms, 1))));
  }
  for (const r of c.samples.keys()) {
    if (!svc.traffic.some((t) => t.release === r)) c.samples.delete(r);
  }
  if (!rows.length) rows.push(el("tr", {}, el("td", { colSpan: 6, class: "muted" }, "no traffic routed")));
  c.parts.traffic.replaceChildren(...rows);
}

function numbers(n) {
  return `${n.requests} req, ${n.errors} err (${fmt(100 * n.error_rate, 1)}%), p99 ${fmt(n.p99_ms, 1)} ms`;
}

function renderVerdicts(c, svc) {
  const items = svc.verdicts.slice(-6).reverse().map((v) =>
    el("li", { class: "verdict " + v.result, "data-result": v.result, "data-release": String(v.release), "data-at": String(v.at_ms) },
      el("span", { class: "result" }, v.result), ` v${v.release} · ${v.reason} · canary: ${numbers(v.canary)} · stable: ${numbers(v.stable)}`));
  if (!items.length) items.push(el("li", { class: "muted" }, "no analysis"));
  c.parts.verdicts.replaceChildren(...items);
}

function renderInstances(c, svc) {
  const rows = svc.instances.map((i) =>
    el("tr", { class: "instance", "data-instance": i.id, "data-healthy": String(i.healthy), "data-release": String(i.release) },
      el("td", {}, el("code", {}, i.id)), el("td", {}, "v" + i.release),
      el("td", {}, i.state + (i.exit_status == null ? "" : ` (${i.exit_status})`)),
      el("td", { class: i.healthy ? "ok" : "bad" }, i.healthy ? "healthy" : "unhealthy"),
      el("td", {}, i.active ? "yes" : "no"), el("td", {}, String(i.port)),
      el("td", {}, age(Date.now() - i.age_ms))));
  c.parts.instances.replaceChildren(...rows);
  const drift = svc.drift.flatMap((d) => d.findings.map((f) =>
    el("li", { class: "drift", "data-instance": d.instance }, el("code", {}, d.instance), ` ${f.kind} ${f.path}: ${f.detail}`)));
  if (!drift.length) drift.push(el("li", { class: "muted" }, "no drift found"));
  c.parts.drift.replaceChildren(...drift);
}

function renderHistory(c) {
  const h = c.history;
  if (!h) return;
  const rows = h.releases.slice().reverse().map((r) =>
    el("tr", { class: "release-row", "data-release": String(r.number), "data-outcome": r.outcome },
      el("td", {}, "v" + r.number), el("td", {}, el("code", { title: r.digest }, short(r.digest))),
      el("td", {}, age(r.created_ms)), el("td", { class: "outcome " + r.outcome }, r.outcome),
      el("td", {}, r.reason || "")));
  c.parts.releases.replaceChildren(...rows);
  const steps = h.rollouts.slice(-10).reverse().map((r) =>
    el("li", { class: "rollout-item", "data-state": r.state, "data-to": String(r.to_release) },
      `${r.from_release == null ? "–" : "v" + r.from_release} → v${r.to_release} (${r.strategy}) `,
      el("span", { class: "state " + r.state }, r.state),
      ` step ${r.step} · ${r.detail} · ${age(r.updated_ms)}`));
  c.parts.rollouts.replaceChildren(...steps);
}

async function refreshHistory(c, svc) {
  // Again on a change of release or rollout, and every HISTORY_MS.
  const seen = `${svc.current_release}|${svc.rollout}|${svc.traffic.map((t) => t.release).join(",")}`;
  if (seen === c.seen && Date.now() - c.historyAt < HISTORY_MS) return;
  c.seen = seen;
  c.historyAt = Date.now();
  const q = `service=${encodeURIComponent(svc.service)}&project=${encodeURIComponent(svc.project)}`;
  try {
    c.history = await api("/v1/history?" + q);
    renderHistory(c);
  } catch (e) {
    c.historyAt = 0;
  }
}

let polling = false;
async function poll() {
  if (polling) return;
  polling = true;
  try {
    const st = await api("/v1/status");
    const live = new Set();
    for (const svc of st.services) {
      const c = card(svc);
      live.add(c.key);
      const p = project(svc.project);
      if (c.root.parentNode !== p) p.append(c.root);
      renderHead(c, svc);
      renderTraffic(c, svc, st.at);
      renderVerdicts(c, svc);
      renderInstances(c, svc);
      refreshHistory(c, svc);
    }
    for (const [key, c] of cards) {
      if (!live.has(key)) { c.root.remove(); cards.delete(key); }
    }
    for (const p of document.querySelectorAll("section.project")) {
      if (!p.querySelector("article.service")) p.remove();
    }
    const empty = document.getElementById("empty");
    empty.textContent = st.services.length ? "" : "No services deployed.";
    empty.hidden = st.services.length > 0;
    document.getElementById("updated").textContent = "updated " + new Date(st.at).toLocaleTimeString();
    setConn("live");
  } catch (e) {
    setConn("error", e.message);
  } finally {
    polling = false;
  }
}

function setConn(state, msg) {
  const c = document.getElementById("conn");
  c.dataset.state = state;
  c.textContent = state === "live" ? "live" : "disconnected: " + (msg || "");
}

function follow() {
  const list = document.getElementById("events");
  const label = document.getElementById("events-state");
  const seen = new Set();
  const src = new EventSource("/v1/events");
  const add = (m) => {
    let e;
    try { e = JSON.parse(m.data); } catch (_) { return; }
    if (seen.has(e.id)) return;
    seen.add(e.id);
    list.prepend(el("li", { class: "event", "data-kind": e.kind, "data-service": e.service, "data-id": String(e.id) },
      el("time", {}, new Date(e.at_ms).toLocaleTimeString()), " ",
      el("span", { class: "kind" }, e.kind), ` ${e.project}/${e.service}: `,
      el("span", { class: "message", title: e.message },
        e.message.length > MAX_MESSAGE ? e.message.slice(0, MAX_MESSAGE) + "…" : e.message)));
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
  };
  for (const k of EVENT_KINDS) src.addEventListener(k, add);
  src.onopen = () => { label.textContent = "live"; label.dataset.state = "live"; };
  src.onerror = () => { label.textContent = "reconnecting…"; label.dataset.state = "error"; };
}

document.addEventListener("DOMContentLoaded", () => {
  poll();
  setInterval(poll, POLL_MS);
  follow();
});
