// The DLQ view, #/dlq?webhook_id=&tenant_id=&reason=&since=&until=&cursor=&job=: a filtered
// page of dead jobs (50 a page, Next/Previous by cursor), replay of the ticked ones or of all
// that match, an inspector (payload and last error, as text), and a purge that the API's 409
// confirmation_required turns into a dialog. Large replays and purges answer 202 with an
// operation, whose progress is polled here.

import { call } from "./api.js";
import { clear, fmtTime, toast } from "./dom.js";
import { h, raw, shown, problem, qs, enc, fmtSpan, pill, screens, Pager, readPage } from "./webhooks.js";

const PAGE = 50;
const PAYLOAD_CAP = 64 * 1024; // characters of pretty-printed payload shown before "Show all"
const POLL_MS = 1000;
const FILTERS = ["webhook_id", "tenant_id", "reason", "since", "until"];
// Why a job is dead (outcomes.py, taskrunner.py, the Lua scripts): suggestions, not a limit.
const REASONS = ["max_attempts", "gone", "webhook_deleted", "webhook_disabled", "poison", "entry_missing", "malformed"];

const life = screens();
const memory = {}; // the list's Previous stack (Pager)

export const stop = life.stop;

export async function render(root, params) {
  const scr = life.start(root, "dlq");
  const filter = {};
  for (const name of FILTERS) filter[name] = (params.get(name) || "").trim();
  const keyOf = (f) => JSON.stringify(FILTERS.map((n) => f[n]));
  const pager = new Pager(scr, memory, {
    key: keyOf(filter),
    cursor: params.get("cursor") || null,
    ids: ["dlq-prev", "dlq-next"],
    label: "Pages of the DLQ",
    load: () => load(),
  });
  let inspected = null; // the job id in the inspector
  const selected = new Set();

  // --- the filter ---
  const inputs = {};
  const field = (name, label, attrs = {}) => {
    inputs[name] = h("input", { id: `dlq-${name}`, name, type: "text", value: filter[name], autocomplete: "off", spellcheck: "false", ...attrs });
    return h("p", { class: "field" }, h("label", { for: `dlq-${name}` }, label), inputs[name]);
  };
  const form = h(
    "form",
    { id: "dlq-filter", class: "filter", role: "search" },
    field("webhook_id", "Webhook"),
    field("tenant_id", "Tenant"),
    field("reason", "Reason", { list: "dlq-reasons" }),
    h("datalist", { id: "dlq-reasons" }, ...REASONS.map((r) => h("option", { value: r }))),
    field("since", "Failed since", { placeholder: "2026-12-01T00:00:00Z", "aria-describedby": "dlq-time-hint" }),
    field("until", "Failed until", { placeholder: "2026-12-01T12:00:00Z", "aria-describedby": "dlq-time-hint" }),
    h("p", { class: "field actions" }, h("button", { type: "submit" }, "Filter"), h("button", { type: "reset" }, "Clear")),
    h("p", { id: "dlq-time-hint", class: "muted hint" }, "Times are RFC 3339 with a zone, e.g. 2026-12-01T09:30:00Z."),
  );
  const applyFilter = () => {
    for (const name of FILTERS) filter[name] = inputs[name].value.trim();
    pager.reset(keyOf(filter));
    closeInspector(false);
    return scr.busy(load);
  };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    scr.act(applyFilter)();
  });
  form.addEventListener("reset", (ev) => {
    ev.preventDefault();
    for (const name of FILTERS) inputs[name].value = "";
    scr.act(applyFilter)();
  });

  // --- the toolbar ---
  const replaySelected = h("button", { type: "button", id: "replay-selected", disabled: true }, "Replay selected");
  const replayMatching = h("button", { type: "button", id: "replay-matching" }, "Replay all matching…");
  const purge = h("button", { type: "button", id: "purge", class: "danger" }, "Purge old entries…");
  const selection = h("span", { class: "muted", "data-field": "selected", "data-value": "0" }, "None selected");
  const operation = h("section", { id: "operation", "aria-live": "polite", "data-value": "" });
  operation.hidden = true;

  // --- the list ---
  const note = h("p", { class: "muted", role: "status" });
  const all = h("input", { type: "checkbox", id: "dlq-select-all", "aria-label": "Select every job on this page" });
  const tbody = h("tbody", {});
  const table = h(
    "table",
    { class: "list", id: "dlq-list" },
    h(
      "thead",
      {},
      h("tr", {}, h("th", { scope: "col", class: "check" }, all), ...["Job", "Webhook", "Tenant", "Event type", "Reason", "Attempts", "Last status", "Last error", "Failed at"].map((c) => h("th", { scope: "col" }, c))),
    ),
    tbody,
  );

  // --- the inspector ---
  const inspectTitle = h("h2", { id: "inspect-title", tabindex: "-1" }, "Dead job");
  const inspectFacts = h("dl", { class: "facts" });
  const lastError = h("pre", { id: "last-error", class: "error-text", "data-value": "" });
  const payload = h("pre", { id: "payload", class: "payload", "data-truncated": "false" });
  const payloadNote = h("p", { class: "muted" });
  const showAll = h("button", { type: "button" }, "Show all");
  showAll.hidden = true;
  const replayOne = h("button", { type: "button", "data-action": "replay" }, "Replay this job");
  const closeBtn = h("button", { type: "button", "data-action": "close" }, "Close");
  const inspect = h(
    "section",
    { id: "inspect", "aria-labelledby": "inspect-title" },
    inspectTitle,
    inspectFacts,
    h("h3", {}, "Last error"),
    lastError,
    h("h3", {}, "Payload"),
    payloadNote,
    payload,
    h("div", { class: "toolbar" }, showAll, replayOne, closeBtn),
  );
  inspect.hidden = true;

  // --- the dialogs ---
  const older = h("input", { id: "older-than", type: "number", min: "0", step: "any", value: "0", inputmode: "decimal" });
  const wouldPurge = h("strong", { "data-field": "would_purge", "data-value": "" }, "…");
  const retention = h("strong", { "data-field": "retention_s", "data-value": "" }, "…");
  const within = h("strong", { "data-field": "within_retention", "data-value": "" }, "…");
  const purgeNote = h("p", { class: "problem", role: "alert" });
  const purgeConfirm = h("button", { type: "button", id: "purge-confirm", class: "danger" }, "Purge");
  const purgeCancel = h("button", { type: "button", id: "purge-cancel", autofocus: true }, "Cancel");
  const purgeDialog = h(
    "dialog",
    { id: "purge-dialog", "aria-labelledby": "purge-title" },
    h("h2", { id: "purge-title" }, "Purge the DLQ"),
    h("p", { class: "field" }, h("label", { for: "older-than" }, "Older than (seconds)"), older),
    h("p", {}, wouldPurge, " entries would be deleted, with their job records, whatever the list's filter."),
    h("p", {}, "Retention: ", retention, ". Nothing younger is ever purged: ", within, " entries are within it and stay."),
    purgeNote,
    h("div", { class: "toolbar" }, purgeCancel, purgeConfirm),
  );
  const replayFilter = h("ul", { class: "muted" });
  const replayConfirm = h("button", { type: "button", id: "replay-confirm" }, "Replay");
  const replayCancel = h("button", { type: "button", id: "replay-cancel", autofocus: true }, "Cancel");
  const replayDialog = h(
    "dialog",
    { id: "replay-dialog", "aria-labelledby": "replay-title" },
    h("h2", { id: "replay-title" }, "Replay every matching dead job"),
    h("p", {}, "Each dead job of this filter goes back to its queue, attempts reset. Those that cannot go back (payload lost, webhook deleted or disabled) stay and are counted."),
    replayFilter,
    h("div", { class: "toolbar" }, replayCancel, replayConfirm),
  );

  root.append(
    h("h1", {}, "Dead-letter queue"),
    form,
    h("div", { class: "toolbar" }, replaySelected, replayMatching, purge, selection),
    operation,
    note,
    table,
    pager.nav,
    inspect,
    purgeDialog,
    replayDialog,
  );

  // --- behaviour ---
  const here = () => scr.at("/dlq", { ...filter, cursor: pager.cursor, job: inspected });
  const updateSelection = () => {
    const n = selected.size;
    replaySelected.disabled = n === 0;
    replaySelected.textContent = n ? `Replay selected (${n})` : "Replay selected";
    selection.dataset.value = String(n);
    selection.textContent = n ? `${n} selected on this page` : "None selected";
    const boxes = [...tbody.querySelectorAll("input[type=checkbox]:not([disabled])")];
    all.checked = boxes.length > 0 && boxes.every((b) => b.checked);
    all.indeterminate = n > 0 && !all.checked;
  };
  all.addEventListener("change", () => {
    for (const box of tbody.querySelectorAll("input[type=checkbox]:not([disabled])")) {
      box.checked = all.checked;
      if (all.checked) selected.add(box.value);
      else selected.delete(box.value);
    }
    updateSelection();
  });

  const load = scr.latest(async (fresh) => {
    let page;
    try {
      page = await readPage("dlq", filter, pager.cursor, PAGE);
    } catch (err) {
      if (!fresh()) return;
      clear(tbody);
      note.textContent = problem(err);
      pager.shown(null);
      return;
    }
    if (!fresh()) return;
    pager.shown(page.next_cursor);
    here();
    selected.clear();
    clear(tbody);
    const items = page.items || [];
    for (const item of items) tbody.append(row(item));
    const filtered = FILTERS.some((n) => filter[n]);
    if (items.length) note.textContent = `${items.length} dead job${items.length === 1 ? "" : "s"}, oldest first${filtered ? ", matching the filter" : ""}.`;
    else if (page.next_cursor) note.textContent = "No match among the entries read so far: Next reads on.";
    else if (pager.page > 1) note.textContent = "No more dead jobs.";
    else note.textContent = filtered ? "No dead job matches this filter." : "The DLQ is empty.";
    updateSelection();
  });

  function row(item) {
    const id = item.id;
    const box = h("input", { type: "checkbox", value: id ?? "", disabled: id === null, "aria-label": id === null ? "A malformed entry" : `Select ${id}` });
    box.addEventListener("change", () => {
      if (box.checked) selected.add(id);
      else selected.delete(id);
      updateSelection();
    });
    const opener = id === null
      ? h("span", { class: "muted" }, "malformed entry")
      : h("button", { type: "button", class: "link mono", "data-action": "inspect", onclick: scr.act(() => openInspector(id, opener)) }, id);
    const tr = h(
      "tr",
      { "data-job": id ?? "", "data-dlq-id": item.dlq_id ?? null },
      h("td", { class: "check" }, box),
      h("td", {}, opener),
      shown("td", "webhook_id", item.webhook_id ?? null, undefined, { class: "mono" }),
      shown("td", "tenant_id", item.tenant_id ?? null),
      shown("td", "event_type", item.event_type ?? null),
      shown("td", "reason", item.reason ?? null),
      shown("td", "attempt", item.attempt ?? null, undefined, { class: "num" }),
      shown("td", "last_status", item.last_status ?? null, undefined, { class: "num" }),
      shown("td", "last_error", item.last_error ?? null, undefined, { class: "clip" }),
      shown("td", "failed_at", item.failed_at ?? null, fmtTime(item.failed_at ?? null), { class: "when" }),
    );
    // A click anywhere on the row (not on its checkbox or button) opens it too.
    tr.addEventListener("click", (ev) => {
      if (id !== null && !ev.target.closest("input, button, a")) scr.act(() => openInspector(id, opener))();
    });
    return tr;
  }

  let returnFocus = null;
  async function openInspector(id, from = null) {
    returnFocus = from;
    await scr.busy(async () => {
      inspected = id;
      here();
      let job;
      try {
        job = await call("GET", `dlq/${enc(id)}`);
      } catch (err) {
        if (scr.alive && inspected === id) fillInspector(id, null, problem(err));
        return;
      }
      if (scr.alive && inspected === id) fillInspector(id, job, null);
    });
    inspect.scrollIntoView({ block: "nearest" });
    inspectTitle.focus();
  }

  function fillInspector(id, job, failure) {
    inspect.hidden = false;
    inspect.dataset.job = id;
    inspectTitle.textContent = `Dead job ${id}`;
    clear(inspectFacts);
    clear(payloadNote);
    payload.textContent = "";
    payload.dataset.truncated = "false";
    showAll.hidden = true;
    replayOne.hidden = !job;
    if (!job) {
      lastError.textContent = failure;
      lastError.dataset.value = "";
      return;
    }
    const pairs = [
      ["Job", h("a", { href: "#/jobs/" + enc(job.id), class: "mono" }, job.id)],
      ["State", pill("state", job.state, job.state, job.state === "dead" ? "bad" : "info")],
      ["Reason", shown("span", "dead_reason", job.dead_reason ?? null)],
      ["Webhook", job.webhook_id ? h("a", { href: "#/webhooks/" + enc(job.webhook_id), class: "mono", "data-field": "webhook_id", "data-value": job.webhook_id }, job.webhook_id) : shown("span", "webhook_id", null)],
      ["Tenant", shown("span", "tenant_id", job.tenant_id ?? null)],
      ["Event type", shown("span", "event_type", job.event_type ?? null)],
      ["Attempts", shown("span", "attempt", job.attempt ?? null)],
      ["Last status", shown("span", "last_status", job.last_status ?? null)],
      ["Created", shown("span", "created_at", job.created_at ?? null, fmtTime(job.created_at ?? null))],
      ["Failed at", shown("span", "finished_at", job.finished_at ?? null, fmtTime(job.finished_at ?? null))],
      ["DLQ entry", shown("span", "dlq_id", job.dlq_id ?? null, undefined, { class: "mono" })],
    ];
    for (const [term, value] of pairs) inspectFacts.append(h("dt", {}, term), h("dd", {}, value));
    lastError.dataset.value = raw(job.last_error ?? null);
    lastError.textContent = job.last_error ?? "—";
    if (job.payload === null || job.payload === undefined) {
      payloadNote.textContent = "The payload was lost: this job cannot be replayed.";
      return;
    }
    const text = JSON.stringify(job.payload, null, 2);
    if (text.length > PAYLOAD_CAP) {
      payload.textContent = text.slice(0, PAYLOAD_CAP);
      payload.dataset.truncated = "true";
      payloadNote.textContent = `Showing the first 64 KiB of ${Math.ceil(text.length / 1024)} KiB.`;
      showAll.hidden = false;
      showAll.onclick = () => {
        payload.textContent = text;
        payload.dataset.truncated = "false";
        payloadNote.textContent = "";
        showAll.hidden = true;
        payload.focus();
      };
    }
    else payload.textContent = text;
  }

  function closeInspector(focusBack = true) {
    inspected = null;
    inspect.hidden = true;
    here();
    if (focusBack && returnFocus && returnFocus.isConnected) returnFocus.focus();
  }
  closeBtn.addEventListener("click", () => closeInspector());
  replayOne.addEventListener("click", scr.act(() => replayIds([inspected])));
  inspect.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") closeInspector();
  });

  // Replay by ids: all or nothing (409 not_replayable names those that cannot go back).
  async function replayIds(ids) {
    let answer;
    try {
      answer = await scr.busy(() => call("POST", "dlq/replay", { ids }));
    } catch (err) {
      const refused = err && err.body && err.body.refused;
      if (refused && refused.length) {
        toast(`Nothing replayed: ${refused.length} cannot go back (${refused.map((r) => `${r.id}: ${r.reason}`).join(", ")}).`);
        return;
      }
      throw err;
    }
    const extra = [];
    if (answer.not_found && answer.not_found.length) extra.push(`${answer.not_found.length} not found`);
    if (answer.not_dead && answer.not_dead.length) extra.push(`${answer.not_dead.length} no longer dead`);
    toast(`${answer.replayed} replayed${extra.length ? `; ${extra.join(", ")}` : ""}.`);
    if (inspected && ids.includes(inspected)) closeInspector(false);
    await scr.busy(load);
  }
  replaySelected.addEventListener("click", scr.act(() => replayIds([...selected])));

  // Replay all matching: a confirmation, then 200, or 202 with an operation to follow.
  const matching = () => {
    const body = { all: true };
    for (const name of FILTERS) if (filter[name]) body[name] = filter[name];
    return body;
  };
  replayMatching.addEventListener("click", () => {
    clear(replayFilter);
    const used = FILTERS.filter((n) => filter[n]);
    if (!used.length) replayFilter.append(h("li", {}, h("strong", {}, "No filter: every dead job in the DLQ.")));
    for (const name of used) replayFilter.append(h("li", { "data-field": name, "data-value": filter[name] }, `${name} = ${filter[name]}`));
    replayDialog.showModal();
    replayCancel.focus();
  });
  replayCancel.addEventListener("click", () => replayDialog.close());
  replayConfirm.addEventListener("click", scr.act(async () => {
    replayDialog.close();
    const answer = await scr.busy(() => call("POST", "dlq/replay", matching()));
    toast(`${answer.replayed} replayed${answer.skipped ? `, ${answer.skipped} skipped (${reasons(answer.skipped_reasons)})` : ""}${answer.operation ? "; the rest continues in the background" : ""}.`);
    if (answer.operation) follow(answer.operation);
    await scr.busy(load);
  }));

  // Purge: the 409 confirmation_required fills the dialog; Purge re-sends with confirm=true.
  let asked = null; // the older_than_s the dialog's counts are for
  async function ask() {
    const value = older.value.trim() || "0";
    purgeConfirm.disabled = true;
    purgeNote.textContent = "";
    try {
      await call("DELETE", "dlq" + qs({ older_than_s: value }));
      purgeNote.textContent = "The daemon purged without asking for a confirmation.";
      return false;
    } catch (err) {
      if (err && err.status === 409 && err.code === "confirmation_required") {
        const b = err.body || {};
        wouldPurge.dataset.value = raw(b.would_purge);
        wouldPurge.textContent = String(b.would_purge ?? "?");
        retention.dataset.value = raw(b.retention_s ?? null);
        retention.textContent = b.retention_s === undefined ? "unknown" : `${fmtSpan(b.retention_s)} (${b.retention_s} s)`;
        within.dataset.value = raw(b.within_retention ?? null);
        within.textContent = String(b.within_retention ?? "?");
        asked = value;
        purgeConfirm.disabled = !b.would_purge;
        if (!b.would_purge) purgeNote.textContent = "Nothing is old enough to purge.";
        return true;
      }
      if (err && err.status === 401) return false;
      purgeNote.textContent = problem(err);
      return true;
    }
  }
  purge.addEventListener("click", scr.act(async () => {
    purge.disabled = true;
    try {
      if (!(await ask())) return;
      purgeDialog.showModal();
      purgeCancel.focus();
    } finally {
      purge.disabled = false;
    }
  }));
  older.addEventListener("input", () => {
    purgeConfirm.disabled = true; // the counts shown are for another value until ask() answers
  });
  older.addEventListener("change", scr.act(ask));
  purgeCancel.addEventListener("click", () => purgeDialog.close());
  purgeConfirm.addEventListener("click", scr.act(async () => {
    if (asked === null) return;
    purgeConfirm.disabled = true;
    let answer;
    try {
      answer = await scr.busy(() => call("DELETE", "dlq" + qs({ older_than_s: asked, confirm: "true" })));
    } catch (err) {
      purgeNote.textContent = problem(err);
      return;
    }
    purgeDialog.close();
    toast(`${answer.purged} purged; ${answer.within_retention} younger than the retention stay${answer.operation ? "; the rest continues in the background" : ""}.`);
    if (answer.operation) follow(answer.operation);
    await scr.busy(load);
  }));

  // The operation read again; after a failed read (a Redis blip, a timeout) it is shown as
  // it was and read again a second later. Only a 401 (the login) or a 404 (gone) stop it.
  async function reread(op) {
    try {
      return await call("GET", `operations/${enc(op.id)}`);
    } catch (err) {
      if (err && (err.status === 401 || err.status === 404)) throw err;
      return op;
    }
  }

  // A background operation (202): its progress, polled until it ends.
  function follow(op) {
    operation.hidden = false;
    operation.dataset.value = op.state;
    operation.dataset.operation = op.id;
    clear(operation);
    const count = op.kind === "purge" ? op.purged : op.replayed;
    const bar = h("progress", { max: String(op.total || 1), value: String(op.done || 0) });
    if (op.total === null) bar.removeAttribute("value");
    operation.append(
      h("h2", {}, `${op.kind === "purge" ? "Purge" : "Replay"} ${op.id}`),
      bar,
      h(
        "p",
        {},
        pill("state", op.state, op.state, op.state === "succeeded" ? "ok" : op.state === "failed" ? "bad" : "info"),
        " ",
        shown("span", "done", op.done),
        ` of ${op.total ?? "?"} entries done; `,
        shown("span", op.kind === "purge" ? "purged" : "replayed", count ?? null, String(count ?? 0)),
        op.kind === "purge" ? " purged" : " replayed",
        op.skipped ? `, ${op.skipped} skipped (${reasons(op.skipped_reasons)})` : "",
        ".",
      ),
      op.error ? shown("p", "error", op.error, undefined, { class: "problem" }) : "",
    );
    if (op.state === "running") {
      scr.later(POLL_MS, scr.act(async () => follow(await reread(op))));
    } else {
      toast(`${op.kind === "purge" ? "Purge" : "Replay"} ${op.state}: ${count ?? 0} ${op.kind === "purge" ? "purged" : "replayed"}.`);
      scr.act(() => scr.busy(load))();
    }
  }

  await scr.busy(load);
  const job = params.get("job") || params.get("id"); // #/dlq?job=<id> or #/dlq/<id>
  if (job) await openInspector(job);
}

function reasons(map) {
  return Object.entries(map || {})
    .map(([k, v]) => `${k}: ${v}`)
    .join(", ");
}
