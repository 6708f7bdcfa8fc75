// The webhooks views: #/webhooks (a page of webhooks, grouped by tenant, or every webhook of
// one tenant) and #/webhooks/<id> (its settings, delivery stats, a test send, recent jobs).
// Also the small helpers the DLQ and job views share (h, raw, shown, problem, Screen).
// Text goes in with textContent only (el/svg children); styles are classes of views.css.

import { call, query, ApiError } from "./api.js";
import { el, svg, clear, fmtTime, fmtMs, toast } from "./dom.js";

const PAGE = 50; // webhooks a page (the API allows 1..100)
const JOBS = 20; // recent jobs on the detail page
const WINDOWS = ["1h", "24h", "7d"];

// --- helpers shared by webhooks.js, dlq.js and job.js ---------------------------------------

const EL_ATTRS = new Set(["class", "id", "type", "value", "disabled"]);

/** el() with any attribute: those dom.js's el() documents go through it, the others
 * (href, name, for, aria-*, ...) are set here. null/undefined/false attributes and children
 * are left out; numbers become text. */
export function h(tag, attrs = {}, ...children) {
  const known = {};
  const other = [];
  for (const [name, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (EL_ATTRS.has(name) || name.startsWith("data-") || (name.startsWith("on") && typeof v === "function")) {
      known[name] = v;
    } else {
      other.push([name, v === true ? "" : String(v)]);
    }
  }
  const kids = children
    .filter((c) => c !== null && c !== undefined && c !== false)
    .map((c) => (typeof c === "number" ? String(c) : c));
  const node = el(tag, known, ...kids);
  for (const [name, v] of other) node.setAttribute(name, v);
  return node;
}

/** The data-value of an API value: "" for null, JSON for arrays and objects. */
export function raw(v) {
  if (v === null || v === undefined) return "";
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}

/** An element showing one API field: data-field, data-value (raw) and readable text. */
export function shown(tag, field, v, text = undefined, attrs = {}) {
  const label = text !== undefined ? text : v === null || v === undefined || v === "" ? "—" : raw(v);
  return h(tag, { ...attrs, "data-field": field, "data-value": raw(v) }, label);
}

/** A failed call as one line of text. A 401 has already sent the panel to its login. */
export function problem(err) {
  if (err instanceof ApiError) {
    const msg = err.body && err.body.error && err.body.error.message ? err.body.error.message : err.message;
    return `${err.status}${err.code ? " " + err.code : ""}: ${msg}`;
  }
  return String((err && err.message) || err);
}

/** "?a=1&b=2" for the non-empty params ("" when none). */
export function qs(params) {
  const q = query(params);
  return q === "?" ? "" : q;
}

/** The life of one rendered view: its timers end with it, and a late answer never marks a
 * newer view ready. `busy` marks main#view not ready while an in-place reload runs. */
export class Screen {
  constructor(root, view) {
    this.root = root;
    this.view = view;
    this.ended = false;
    this.timers = new Set();
  }

  get alive() {
    return !this.ended && this.root.dataset.view === this.view;
  }

  end() {
    this.ended = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }

  later(ms, fn) {
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (this.alive) fn();
    }, ms);
    this.timers.add(t);
  }

  async busy(fn) {
    this.pending = (this.pending || 0) + 1;
    if (this.alive) this.root.dataset.ready = "false";
    try {
      return await fn();
    } finally {
      this.pending -= 1;
      if (this.alive && this.pending === 0) this.root.dataset.ready = "true";
    }
  }

  /** A loader whose answer is shown only if no later call of it started meanwhile:
   * `fresh()` tells the running call whether it is still the latest. */
  latest(load) {
    let count = 0;
    return () => {
      const mine = ++count;
      return load(() => mine === count && this.alive);
    };
  }

  /** Record where the view is in the address bar without a re-render (no hashchange). */
  at(path, params = {}) {
    if (this.alive) history.replaceState(history.state, "", "#" + path + qs(params));
  }

  /** An event handler running `fn`; its failure becomes a toast, never an uncaught error. */
  act(fn) {
    return (ev) => {
      Promise.resolve()
        .then(() => fn(ev))
        .catch((err) => {
          if (!(err instanceof ApiError && err.status === 401)) toast(problem(err)); // 401: the login shows
        });
    };
  }
}

export const enc = encodeURIComponent;

/** A view module's one live Screen: `start` ends the one before (a re-render), `stop` ends it
 * (app.js, leaving the view). */
export function screens() {
  let current = null;
  const stop = () => {
    if (current) current.end();
    current = null;
  };
  return {
    stop,
    start(root, view) {
      stop();
      current = new Screen(root, view);
      return current;
    },
  };
}

const MAX_READS = 10; // calls for one page of a list whose answers come short

/** One page of up to `limit` items of a cursor-paged list from `cursor`. The API may answer
 * fewer items with a next_cursor (a filtered DLQ read skips what does not match, and each call
 * reads a bounded number of entries), so this reads on, at most MAX_READS calls, until the
 * page is full or the list ends. Never more than one page of items. */
export async function readPage(path, params, cursor, limit) {
  let items = [];
  let at = cursor;
  for (let reads = 1; ; reads++) {
    const page = await call("GET", path + qs({ ...params, limit: limit - items.length, cursor: at }));
    items = items.concat(page.items || []);
    const next = page.next_cursor || null;
    if (items.length >= limit || !next || reads >= MAX_READS) return { items, next_cursor: next };
    at = next;
  }
}

/** Previous/Next over a cursor-paged list: the cursors of the pages before are a stack, kept
 * in the view module's `memory` so that a re-render of the same list (Refresh) keeps it. */
export class Pager {
  constructor(scr, memory, { key, cursor, ids, label, load }) {
    this.memory = memory;
    this.key = key;
    this.cursor = cursor;
    this.stack = memory.key === key && memory.cursor === cursor ? memory.stack : cursor ? [null] : [];
    this.after = null; // the next page's cursor
    this.prev = h("button", { type: "button", id: ids[0] }, "← Previous");
    this.next = h("button", { type: "button", id: ids[1] }, "Next →");
    this.label = h("span", { class: "muted" });
    this.nav = h("nav", { class: "pager", "aria-label": label }, this.prev, this.label, this.next);
    this.prev.addEventListener("click", scr.act(() => {
      this.cursor = this.stack.pop() ?? null;
      return scr.busy(load);
    }));
    this.next.addEventListener("click", scr.act(() => {
      if (!this.after) return undefined;
      this.stack.push(this.cursor);
      this.cursor = this.after;
      this.after = null; // taken: a second click before this page arrives does nothing
      return scr.busy(load);
    }));
  }

  /** Back to the first page of the list `key` (a new filter). */
  reset(key) {
    this.key = key;
    this.cursor = null;
    this.stack = [];
  }

  get page() {
    return this.stack.length + 1;
  }

  /** A page is shown; `after` is its next_cursor (null at the end, or on a failure). */
  shown(after) {
    this.after = after || null;
    Object.assign(this.memory, { key: this.key, stack: this.stack, cursor: this.cursor });
    this.prev.disabled = this.stack.length === 0;
    this.next.disabled = !this.after;
    this.label.textContent = `Page ${this.page}`;
  }
}


/** "7 d", "1 h 30 min", "45 s": a span of seconds. */
export function fmtSpan(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  let s = Math.round(Math.abs(seconds));
  const parts = [];
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["min", 60], ["s", 1]]) {
    if (s >= size || (unit === "s" && parts.length === 0)) {
      parts.push(`${Math.floor(s / size)} ${unit}`);
      s %= size;
    }
    if (parts.length === 2) break;
  }
  return parts.join(" ");
}

/** A time with how far it is from now: "… (in 3 min 20 s)" or "(2 min ago)". */
export function fmtWhen(iso) {
  if (!iso) return "—";
  const delta = (Date.parse(iso) - Date.now()) / 1000;
  if (Number.isNaN(delta)) return fmtTime(iso);
  const rel = Math.abs(delta) < 1 ? "now" : delta > 0 ? `in ${fmtSpan(delta)}` : `${fmtSpan(delta)} ago`;
  return `${fmtTime(iso)} (${rel})`;
}

/** A "state pill": its class names the state's colour. */
export function pill(field, v, text, tone) {
  return shown("span", field, v, text, { class: `state state-${tone}` });
}

// --- the views --------------------------------------------------------------------------------

const life = screens();
const memory = {}; // the list's Previous stack (Pager)

export const stop = life.stop;

export async function render(root, params) {
  const id = params.get("id");
  const scr = life.start(root, id ? "webhook" : "webhooks");
  if (id) await renderDetail(root, id, scr);
  else await renderList(root, params, scr);
}

function hookStates(hook) {
  const breaker = hook.breaker ? hook.breaker.state || null : null;
  return [
    pill("enabled", hook.enabled, hook.enabled ? "enabled" : "disabled", hook.enabled ? "ok" : "bad"),
    pill("paused", hook.paused === undefined ? false : hook.paused, hook.paused ? "paused" : "running", hook.paused ? "warn" : "ok"),
    pill("breaker", breaker, breaker || "closed", breaker === "open" ? "bad" : breaker === "half_open" ? "warn" : "ok"),
  ];
}

async function renderList(root, params, scr) {
  let tenant = (params.get("tenant_id") || "").trim();
  const pager = new Pager(scr, memory, {
    key: tenant,
    cursor: tenant ? null : params.get("cursor") || null,
    ids: ["webhooks-prev", "webhooks-next"],
    label: "Pages of webhooks",
    load: () => load(),
  });

  const input = h("input", {
    id: "tenant", type: "search", name: "tenant_id", value: tenant,
    placeholder: "every tenant", autocomplete: "off", spellcheck: "false",
  });
  const note = h("p", { class: "muted", role: "status" });
  const results = h("div", { class: "results" });

  const show = (t) => {
    tenant = t;
    input.value = t;
    pager.reset(t);
    return scr.busy(load);
  };
  const form = h(
    "form",
    { class: "filter", role: "search", onsubmit: (ev) => { ev.preventDefault(); scr.act(() => show(input.value.trim()))(); } },
    h("label", { for: "tenant" }, "Tenant"),
    input,
    h("button", { type: "submit" }, "Show"),
    h("button", { type: "button", onclick: scr.act(() => show("")) }, "Every tenant"),
  );
  root.append(h("h1", {}, "Webhooks"), form, note, results, pager.nav);

  const load = scr.latest(async (fresh) => {
    const cursor = pager.cursor;
    let page;
    try {
      page = tenant
        ? await call("GET", "webhooks" + qs({ tenant_id: tenant })) // all of its webhooks, unpaged
        : await readPage("webhooks", {}, cursor, PAGE);
    } catch (err) {
      if (!fresh()) return;
      clear(results);
      note.textContent = !tenant && err instanceof ApiError && err.status === 422
        ? `This daemon lists webhooks by tenant only: enter a tenant. (${problem(err)})`
        : problem(err);
      pager.shown(null);
      return;
    }
    if (!fresh()) return;
    const items = page.items || [];
    const nextCursor = tenant ? null : page.next_cursor || null;
    pager.shown(nextCursor);
    scr.at("/webhooks", { tenant_id: tenant, cursor });
    clear(results);
    results.append(table(items));
    note.textContent = items.length
      ? `${items.length} webhook${items.length === 1 ? "" : "s"}${tenant ? ` of tenant ${tenant}` : pager.page > 1 || nextCursor ? `, page ${pager.page}` : ""}`
      : tenant ? `Tenant ${tenant} has no webhook.` : cursor ? "No more webhooks." : "No webhook yet.";
    pager.nav.hidden = !!tenant;
  });

  function table(items) {
    const byTenant = new Map();
    for (const hook of items) {
      if (!byTenant.has(hook.tenant_id)) byTenant.set(hook.tenant_id, []);
      byTenant.get(hook.tenant_id).push(hook);
    }
    const groups = [...byTenant.keys()].sort().map((t) =>
      h(
        "tbody",
        { "data-tenant": t },
        h(
          "tr",
          { class: "group" },
          h(
            "th",
            { colspan: 6, scope: "rowgroup" },
            tenant ? `Tenant ${t}` : h("button", { type: "button", class: "link", onclick: scr.act(() => show(t)) }, `Tenant ${t}`),
          ),
        ),
        ...byTenant.get(t).map(row),
      ),
    );
    return h(
      "table",
      { class: "list" },
      h("thead", {}, h("tr", {}, ...["Webhook", "URL", "Event types", "Queue", "State", "Failing since"].map((c) => h("th", { scope: "col" }, c)))),
      ...groups,
    );
  }

  function row(hook) {
    return h(
      "tr",
      { "data-webhook": hook.id },
      h("td", { class: "mono" }, h("a", { href: "#/webhooks/" + enc(hook.id) }, hook.id)),
      shown("td", "url", hook.url, undefined, { class: "clip" }),
      shown("td", "event_types", hook.event_types, (hook.event_types || []).join(", ")),
      shown("td", "queue", hook.queue),
      h("td", {}, h("span", { class: "states" }, ...hookStates(hook))),
      shown("td", "failing_since", hook.failing_since ?? null, hook.failing_since ? fmtTime(hook.failing_since) : "—"),
    );
  }

  await scr.busy(load);
}

async function renderDetail(root, id, scr) {
  root.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/webhooks" }, "← Webhooks")),
    h("h1", {}, "Webhook ", h("code", {}, id)),
  );
  let hook;
  try {
    hook = await call("GET", `webhooks/${enc(id)}`);
  } catch (err) {
    root.append(h("p", { class: "problem", role: "alert" }, problem(err)));
    return;
  }
  if (!scr.alive) return;

  const state = h("dl", { class: "facts", id: "webhook-state" });
  const settings = h("dl", { class: "facts", id: "webhook-settings" });
  const actions = h("div", { class: "toolbar" });
  const fillHook = (w) => {
    hook = w;
    const breaker = w.breaker || null;
    const fill = (dl, pairs) => {
      clear(dl);
      for (const [term, value] of pairs) dl.append(h("dt", {}, term), h("dd", {}, value));
    };
    fill(state, [
      ["State", h("span", { class: "states" }, ...hookStates(w))],
      ["Tenant", shown("span", "tenant_id", w.tenant_id, undefined, { class: "mono" })],
      ["URL", shown("span", "url", w.url, undefined, { class: "mono wrap" })],
      ["Disabled because", shown("span", "disabled_reason", w.disabled_reason ?? null)],
      ["Failing since", shown("span", "failing_since", w.failing_since ?? null, w.failing_since ? fmtWhen(w.failing_since) : "—")],
      ["Breaker retries at", shown("span", "breaker_retry_at", breaker ? breaker.retry_at ?? null : null, breaker && breaker.retry_at ? fmtWhen(breaker.retry_at) : "—")],
      ["Breaker's last error", shown("span", "breaker_last_error", breaker ? breaker.last_error ?? null : null, undefined, { class: "wrap" })],
    ]);
    fill(settings, [
      ["Event types", shown("span", "event_types", w.event_types, (w.event_types || []).join(", "))],
      ["Queue", shown("span", "queue", w.queue)],
      ["Ordering", shown("span", "ordering", w.ordering ?? null)],
      ["Rate limit", shown("span", "rate_limit", w.rate_limit ?? null, w.rate_limit ? `${w.rate_limit.per_second}/s, burst ${w.rate_limit.burst ?? "—"}` : "none")],
      ["Max in flight", shown("span", "max_in_flight", w.max_in_flight ?? null, w.max_in_flight ?? "no limit")],
      ["Signature", shown("span", "signature_scheme", w.signature_scheme ?? null)],
      ["Description", shown("span", "description", w.description ?? null)],
      ["Created", shown("span", "created_at", w.created_at, fmtTime(w.created_at))],
      ["Updated", shown("span", "updated_at", w.updated_at, fmtTime(w.updated_at))],
    ]);
    clear(actions);
    const paused = !!w.paused;
    actions.append(
      h("button", { type: "button", "data-action": paused ? "resume" : "pause", onclick: scr.act(() => patch({ paused: !paused }, paused ? "resumed" : "paused")) }, paused ? "Resume deliveries" : "Pause deliveries"),
    );
    if (!w.enabled) {
      actions.append(h("button", { type: "button", "data-action": "enable", onclick: scr.act(() => patch({ enabled: true }, "enabled")) }, "Enable"));
    }
    actions.append(testBtn, h("a", { href: "#/dlq" + qs({ webhook_id: w.id }), class: "button" }, "Its dead jobs"));
  };
  const patch = async (changes, done) => {
    const w = await scr.busy(() => call("PATCH", `webhooks/${enc(id)}`, changes));
    if (!scr.alive) return;
    fillHook(w);
    const again = actions.querySelector("button[data-action]"); // the button pressed was replaced
    if (again) again.focus();
    toast(`Webhook ${done}`);
  };

  // Test send: one signed attempt now; its verdict as text.
  const testResult = h("div", { id: "test-result", role: "status", "data-value": "", class: "verdict" });
  const testBtn = h("button", { type: "button", id: "test-send" }, "Send a test");
  testBtn.addEventListener("click", scr.act(async () => {
    testBtn.disabled = true;
    clear(testResult);
    testResult.dataset.value = "";
    testResult.className = "verdict";
    testResult.textContent = "Sending a test…";
    try {
      const v = await call("POST", `webhooks/${enc(id)}/test`);
      showVerdict(v);
    } catch (err) {
      testResult.className = "verdict verdict-bad";
      testResult.textContent = err instanceof ApiError && err.status === 429
        ? "Tested less than a second ago: nothing was sent. Try again in a moment."
        : problem(err);
    } finally {
      testBtn.disabled = false;
    }
  }));
  const showVerdict = (v) => {
    clear(testResult);
    testResult.dataset.value = String(!!v.delivered);
    testResult.className = `verdict ${v.delivered ? "verdict-ok" : "verdict-bad"}`;
    const status = v.status === null ? "no answer" : `HTTP ${v.status}`;
    testResult.append(
      h("p", {}, h("strong", {}, v.delivered ? "Delivered" : "Not delivered"), `: ${status} in ${fmtMs(v.duration_ms)}.`),
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "Status"), h("dd", {}, shown("span", "status", v.status)),
        h("dt", {}, "Duration"), h("dd", {}, shown("span", "duration_ms", v.duration_ms, fmtMs(v.duration_ms))),
        h("dt", {}, "Signature accepted"), h("dd", {}, shown("span", "signature_accepted", v.signature_accepted, v.signature_accepted === null ? "no answer" : v.signature_accepted ? "yes" : "no")),
        h("dt", {}, "Error"), h("dd", {}, shown("span", "error", v.error, undefined, { class: "wrap" })),
        h("dt", {}, "Response"), h("dd", {}, shown("pre", "response_snippet", v.response_snippet, undefined, { class: "snippet" })),
        h("dt", {}, "Message id"), h("dd", {}, shown("span", "message_id", v.message_id, undefined, { class: "mono" })),
      ),
    );
  };

  // Stats of a window, with a bar per point (delivered over failed).
  const windowSelect = h("select", { id: "stats-window", name: "window" }, ...WINDOWS.map((w) => h("option", { value: w }, w)));
  windowSelect.value = "1h";
  const statsBody = h("div", {});
  const stats = h(
    "section",
    { id: "stats", "aria-labelledby": "stats-title", "data-window": "1h" },
    h("h2", { id: "stats-title" }, "Deliveries"),
    h("p", { class: "filter" }, h("label", { for: "stats-window" }, "Window"), windowSelect),
    statsBody,
  );
  windowSelect.addEventListener("change", scr.act(() => scr.busy(fillStats)));
  async function fillStats() {
    const window = windowSelect.value;
    let s;
    try {
      s = await call("GET", `webhooks/${enc(id)}/stats` + qs({ window }));
    } catch (err) {
      clear(statsBody);
      statsBody.append(h("p", { class: "problem" }, `Stats not available: ${problem(err)}`));
      return;
    }
    if (!scr.alive) return;
    stats.dataset.window = window;
    clear(statsBody);
    const pct = (r) => (r === null || r === undefined ? "—" : `${(r * 100).toFixed(r === 1 ? 0 : 2)} %`);
    const tile = (label, field, v, text) => h("div", { class: "stat" }, h("span", { class: "stat-label" }, label), shown("span", field, v, text, { class: "stat-value" }));
    const lat = s.latency_ms || {};
    const lag = s.lag_ms || {};
    statsBody.append(
      h(
        "div",
        { class: "stat-row" },
        tile("Attempts", "attempts", s.attempts),
        tile("Delivered", "delivered", s.delivered),
        tile("Failed", "failed", s.failed),
        tile("Success rate", "success_rate", s.success_rate, pct(s.success_rate)),
        tile("Latency p50", "latency_p50", lat.p50 ?? null, fmtMs(lat.p50 ?? null)),
        tile("Latency p95", "latency_p95", lat.p95 ?? null, fmtMs(lat.p95 ?? null)),
        tile("Latency p99", "latency_p99", lat.p99 ?? null, fmtMs(lat.p99 ?? null)),
        tile("Lag p95", "lag_p95", lag.p95 ?? null, fmtMs(lag.p95 ?? null)),
      ),
      bars(s.series || [], window),
    );
  }

  // Recent jobs: a bounded read on the server; it says how many jobs it looked at.
  const jobsBody = h("div", {});
  const jobs = h("section", { id: "recent-jobs", "aria-labelledby": "jobs-title" }, h("h2", { id: "jobs-title" }, "Recent jobs"), jobsBody);
  async function fillJobs() {
    let page;
    try {
      page = await call("GET", `webhooks/${enc(id)}/jobs` + qs({ limit: JOBS }));
    } catch (err) {
      clear(jobsBody);
      jobsBody.append(h("p", { class: "problem" }, `Recent jobs not available: ${problem(err)}`));
      return;
    }
    if (!scr.alive) return;
    clear(jobsBody);
    const items = page.items || [];
    const scanned = page.scanned ?? null;
    if (!items.length) {
      jobsBody.append(
        h(
          "p",
          { class: "muted", "data-field": "scanned", "data-value": raw(scanned) },
          scanned === null ? "No recent job found. " : `None among the ${scanned} most recent jobs read on its shard. `,
          h("a", { href: "#/dlq" + qs({ webhook_id: id }) }, "Look in the DLQ"),
        ),
      );
      return;
    }
    jobsBody.append(
      h(
        "table",
        { class: "list" },
        h("caption", { class: "muted", "data-field": "scanned", "data-value": raw(scanned) }, `Newest first${scanned === null ? "" : `, among ${scanned} jobs read`}`),
        h("thead", {}, h("tr", {}, ...["Job", "State", "Event type", "Attempts", "Last status", "Last error", "Created", "Finished"].map((c) => h("th", { scope: "col" }, c)))),
        h(
          "tbody",
          {},
          ...items.map((j) =>
            h(
              "tr",
              { "data-job": j.id },
              h("td", { class: "mono" }, h("a", { href: "#/jobs/" + enc(j.id) }, j.id)),
              h("td", {}, pill("state", j.state, j.state, stateTone(j.state))),
              shown("td", "event_type", j.event_type ?? null),
              shown("td", "attempt", j.attempt ?? null, undefined, { class: "num" }),
              shown("td", "last_status", j.last_status ?? null, undefined, { class: "num" }),
              shown("td", "last_error", j.last_error ?? null, undefined, { class: "clip" }),
              shown("td", "created_at", j.created_at ?? null, fmtTime(j.created_at ?? null)),
              shown("td", "finished_at", j.finished_at ?? null, fmtTime(j.finished_at ?? null)),
            ),
          ),
        ),
      ),
    );
  }

  fillHook(hook);
  const more = h("section", { "aria-labelledby": "settings-title" }, h("h2", { id: "settings-title" }, "Settings"), settings);
  root.append(actions, testResult, state, stats, jobs, more);
  await Promise.all([fillStats(), fillJobs()]);
}

export function stateTone(state) {
  return { delivered: "ok", dead: "bad", scheduled: "warn", active: "info", queued: "info" }[state] || "off";
}

/** A bar per point: delivered stacked under failed, scaled to the busiest point. */
function bars(series, window) {
  const W = 600;
  const H = 80;
  const n = Math.max(series.length, 1);
  const step = W / n;
  const top = Math.max(1, ...series.map((p) => (p.delivered || 0) + (p.failed || 0)));
  const chart = svg("svg", {
    viewBox: `0 0 ${W} ${H}`, class: "bars", role: "img", "data-chart": "webhook",
    "aria-label": `Delivered and failed attempts per ${window === "1h" ? "minute" : "hour"}`,
    preserveAspectRatio: "none",
  });
  series.forEach((p, i) => {
    const ok = ((p.delivered || 0) / top) * H;
    const bad = ((p.failed || 0) / top) * H;
    const x = (i * step).toFixed(2);
    const w = Math.max(step - 1, 0.5).toFixed(2);
    const tip = svg("title", {}, `${fmtTime(p.t)}: ${p.delivered} delivered, ${p.failed} failed`);
    chart.append(
      svg("rect", { x, y: (H - ok).toFixed(2), width: w, height: ok.toFixed(2), class: "bar-ok", "data-t": p.t, "data-value": raw(p.delivered) }, tip),
      svg("rect", { x, y: (H - ok - bad).toFixed(2), width: w, height: bad.toFixed(2), class: "bar-bad", "data-t": p.t, "data-value": raw(p.failed) }),
    );
  });
  return chart;
}
