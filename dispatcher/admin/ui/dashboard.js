// dashboard.js: the tiles of /v1/status, the last hour's per-minute charts of /v1/stats,
// the queues (pause, resume), alerts, workers and breakers. Polls while the tab is visible.

import { ApiError, call } from "./api.js";
import { barChart } from "./chart.js";
import { clear, el, fmtMs, fmtTime, toast } from "./dom.js";

const STATUS_EVERY_MS = 5000;
const STATS_EVERY_MS = 30000;
const SERIES = [
  ["delivered", "delivered"],
  ["failed", "failed attempts"],
  ["dead", "dead-lettered"],
];

let poll = null; // the running view's timers; stop() ends them

const raw = (value) => (value === null || value === undefined ? "" : String(value));

function tile(name, label) {
  return el(
    "div",
    { class: "tile", "data-tile": name, "data-value": "" },
    el("span", { class: "label" }, label),
    el("span", { class: "num" }, "…"),
  );
}

function setTile(box, name, value, text, label = null) {
  const node = box.querySelector(`[data-tile="${name}"]`);
  node.dataset.value = raw(value);
  node.querySelector(".num").textContent = text;
  if (label) node.querySelector(".label").textContent = label;
}

function cell(field, value, text = raw(value)) {
  return el("td", { "data-field": field, "data-value": raw(value) }, text);
}

function section(id, title, ...body) {
  return el("section", { class: "panel", "aria-labelledby": id + "-title" }, el("h2", { id: id + "-title" }, title), ...body);
}

function table(id, headings) {
  return el("table", { id }, el("thead", {}, el("tr", {}, headings.map((h) => el("th", { scope: "col" }, h)))), el("tbody"));
}

export async function render(root) {
  stop();
  const parts = {
    tiles: el(
      "div",
      { class: "tiles" },
      tile("queued", "queued"),
      tile("active", "active"),
      tile("scheduled", "scheduled"),
      tile("failed_recent", "failed (recent)"),
      tile("dlq_size", "in the DLQ"),
      tile("avg_processing_ms", "avg processing"),
    ),
    charts: el("div", { class: "charts", id: "charts" }),
    queues: table("queues", ["queue", "queued", "active", "scheduled", "state", ""]),
    alerts: el("ul", { id: "alerts", class: "plain" }),
    workers: table("workers", ["worker", "host", "pid", "queues", "in flight", "started", "last seen"]),
    breakers: table("breakers", ["webhook", "state", "failing since", "retry at", "last error"]),
    breakerCounts: el("p", { class: "muted" }),
    problem: el("p", { class: "error", role: "alert", hidden: true }),
    updated: el("p", { class: "muted updated" }),
  };
  root.append(
    el("h1", { class: "sr-only" }, "Dashboard"),
    parts.problem,
    parts.tiles,
    section("charts", "Last hour, per minute", parts.charts),
    el(
      "div",
      { class: "columns" },
      section("queues", "Queues", parts.queues),
      section("alerts", "Alerts", parts.alerts),
    ),
    section("workers", "Workers", parts.workers),
    section("breakers", "Breakers open or half-open", parts.breakerCounts, parts.breakers),
    parts.updated,
  );
  const mine = { timers: [], busy: new Set(), stopped: false, parts };
  poll = mine;
  // A first status that fails (Redis down: 503) is shown, and polling goes on: the page
  // recovers by itself when the daemon does. A 401 goes back to the login (app.js).
  await Promise.all([loadStatus(parts).catch((err) => showProblem(parts, err)), loadStats(parts)]);
  if (mine.stopped) return;
  every(mine, STATUS_EVERY_MS, "status", () => loadStatus(parts));
  every(mine, STATS_EVERY_MS, "stats", () => loadStats(parts));
}

/** Ends the polling of the view shown; app.js calls it when leaving. */
export function stop() {
  if (!poll) return;
  poll.stopped = true;
  poll.timers.forEach(clearTimeout);
  poll = null;
}

/** Run `load` every `ms` (a setTimeout chain), skipped while the tab is hidden or the last
 * call is still out. A failure other than a 401 keeps the last values and tries again. */
function every(mine, ms, name, load) {
  const tick = async () => {
    if (mine.stopped) return;
    if (!document.hidden && !mine.busy.has(name)) {
      mine.busy.add(name);
      try {
        await load();
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) return;
        if (name === "status") showProblem(mine.parts, err);
      } finally {
        mine.busy.delete(name);
      }
    }
    if (!mine.stopped) mine.timers.push(setTimeout(tick, ms));
  };
  mine.timers.push(setTimeout(tick, ms));
}

function showProblem(parts, err) {
  if (err instanceof ApiError && err.status === 401) throw err;
  const at = parts.updated.dataset.at;
  const why = err.message.replace(/\.+$/, "");
  parts.problem.textContent = `The status could not be read (${why}); trying again every ${STATUS_EVERY_MS / 1000} s.${at ? ` The values shown are from ${at}.` : ""}`;
  parts.problem.hidden = false;
}

async function loadStatus(parts) {
  const status = await call("GET", "status");
  parts.problem.hidden = true;
  const at = new Date().toISOString().slice(11, 19) + " UTC";
  parts.updated.dataset.at = at;
  parts.updated.textContent = `Updated ${at}; every ${STATUS_EVERY_MS / 1000} s while this tab is shown.`;
  const tiles = parts.tiles;
  for (const name of ["queued", "active", "scheduled", "dlq_size"]) {
    setTile(tiles, name, status[name], Number(status[name]).toLocaleString("en"));
  }
  const failed = status.failed_recent ?? { count: null, window_s: 0 };
  setTile(tiles, "failed_recent", failed.count, raw(failed.count), `failed (last ${Math.round(failed.window_s / 60)} min)`);
  setTile(tiles, "avg_processing_ms", status.avg_processing_ms, fmtMs(status.avg_processing_ms));
  showQueues(parts.queues, status);
  showAlerts(parts.alerts, status.alerts ?? []);
  showWorkers(parts.workers, status.workers ?? []);
  showBreakers(parts, status.breakers ?? {});
}

async function loadStats(parts) {
  let stats;
  try {
    stats = await call("GET", "stats?window=1h");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) throw err;
    const why = err.status === 404 ? "this daemon has no GET /v1/stats" : err.message;
    clear(parts.charts).append(el("p", { class: "muted" }, `Charts not available (${why}).`));
    return;
  }
  const series = stats.series ?? [];
  clear(parts.charts).append(
    ...SERIES.map(([name, label]) => barChart(name, label, series.map((p) => ({ t: p.t, value: p[name] })))),
  );
}

function showQueues(tbl, status) {
  const body = tbl.tBodies[0];
  const paused = new Set(status.paused ?? []);
  const queues = status.queues ?? [...paused].map((name) => ({ name, paused: true }));
  const seen = new Set();
  for (const q of queues) {
    seen.add(q.name);
    const isPaused = q.paused ?? paused.has(q.name);
    let row = body.querySelector(`tr[data-queue="${CSS.escape(q.name)}"]`);
    if (!row) {
      const button = el("button", { type: "button", onclick: () => toggle(tbl, q.name, button) });
      row = el("tr", { "data-queue": q.name }, el("th", { scope: "row" }, q.name), cell("queued"), cell("active"), cell("scheduled"), cell("paused"), el("td", {}, button));
      body.append(row);
    }
    for (const field of ["queued", "active", "scheduled"]) {
      const td = row.querySelector(`[data-field=${field}]`);
      td.dataset.value = raw(q[field]);
      td.textContent = raw(q[field]);
    }
    setPaused(row, isPaused);
  }
  for (const row of [...body.rows]) if (!seen.has(row.dataset.queue)) row.remove();
  if (!body.rows.length) body.append(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "no queue yet")));
}

function setPaused(row, isPaused) {
  const td = row.querySelector("[data-field=paused]");
  td.dataset.value = String(isPaused);
  td.textContent = isPaused ? "paused" : "sending";
  td.className = isPaused ? "warn" : "";
  const button = row.querySelector("button");
  button.dataset.action = isPaused ? "resume" : "pause";
  button.textContent = isPaused ? "Resume" : "Pause";
  button.setAttribute("aria-label", `${isPaused ? "Resume" : "Pause"} queue ${row.dataset.queue}`);
}

async function toggle(tbl, name, button) {
  const action = button.dataset.action;
  button.disabled = true;
  try {
    const answer = await call("POST", `queues/${encodeURIComponent(name)}/${action}`);
    setPaused(button.closest("tr"), answer.paused);
    toast(`queue ${name} ${answer.paused ? "paused: workers stop sending from it within a second" : "resumed"}`);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) toast(`could not ${action} ${name}: ${err.message}`);
  } finally {
    button.disabled = false;
    button.focus();
  }
}

function showAlerts(list, alerts) {
  clear(list);
  if (!alerts.length) list.append(el("li", { class: "muted" }, "no alert"));
  for (const a of alerts) {
    list.append(
      el("li", { "data-alert": a.name, "data-value": a.value, class: "alert" }, el("strong", {}, a.name), ` ${a.value} (threshold ${a.threshold}) since ${fmtTime(a.since)}`),
    );
  }
}

function showWorkers(tbl, workers) {
  const body = clear(tbl.tBodies[0]);
  if (!workers.length) body.append(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "no worker is running")));
  for (const w of workers) {
    body.append(
      el(
        "tr",
        { "data-worker": w.id },
        el("th", { scope: "row" }, w.id),
        cell("host", w.host),
        cell("pid", w.pid),
        cell("queues", (w.queues ?? []).join(","), (w.queues ?? []).join(", ")),
        cell("in_flight", w.in_flight),
        cell("started_at", w.started_at, fmtTime(w.started_at)),
        cell("last_seen_at", w.last_seen_at, fmtTime(w.last_seen_at)),
      ),
    );
  }
}

function showBreakers(parts, breakers) {
  parts.breakerCounts.textContent = `${breakers.open ?? 0} open, ${breakers.half_open ?? 0} half-open, ${breakers.parked ?? 0} jobs parked behind them`;
  const body = clear(parts.breakers.tBodies[0]);
  const tripped = breakers.tripped ?? [];
  if (!tripped.length) body.append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "every breaker is closed")));
  for (const b of tripped) {
    body.append(
      el(
        "tr",
        { "data-webhook": b.webhook_id, "data-state": b.state },
        el("th", { scope: "row" }, el("a", { href: "#/webhooks/" + encodeURIComponent(b.webhook_id ?? "") }, b.webhook_id ?? "")),
        cell("state", b.state),
        cell("failing_since", b.failing_since, fmtTime(b.failing_since)),
        cell("retry_at", b.retry_at, fmtTime(b.retry_at)),
        cell("last_error", b.last_error, b.last_error ?? ""),
      ),
    );
  }
}
