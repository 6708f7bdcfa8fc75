// The job view, #/jobs and #/jobs/<id>: look a job up by id; its state, timestamps, next
// retry, why it waits, and its attempts as a timeline. A dead or delivered job can be sent
// again (POST /v1/jobs/{id}/retry). A job still in progress is re-read every few seconds,
// and the page changes only when the job did.

import { call } from "./api.js";
import { clear, fmtTime, fmtMs, toast } from "./dom.js";
import { h, raw, shown, problem, enc, fmtWhen, pill, stateTone, screens } from "./webhooks.js";

const POLL_MS = 3000;
const SETTLED = new Set(["delivered", "dead"]);
const RETRYABLE = new Set(["delivered", "dead"]);

const WAITING = {
  rate_limit: "its webhook's rate limit",
  max_in_flight: "its webhook's max_in_flight",
  endpoint_capacity: "this endpoint's capacity",
  breaker: "an open circuit breaker",
  paused: "its webhook being paused",
  ordering: "the job ahead of it in its FIFO lane",
  undecryptable: "a key this daemon is not configured with (its webhook's secrets cannot be read)",
};

const life = screens();

export const stop = life.stop;

export async function render(root, params) {
  const scr = life.start(root, "job");
  const input = h("input", { id: "job-id", name: "id", type: "search", value: params.get("id") || "", autocomplete: "off", spellcheck: "false", placeholder: "job id", required: true });
  const out = h("div", { id: "job" });
  const form = h(
    "form",
    { class: "filter", role: "search" },
    h("label", { for: "job-id" }, "Job id"),
    input,
    h("button", { type: "submit" }, "Look up"),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = input.value.trim();
    if (id) scr.act(() => scr.busy(() => show(id)))();
  });
  root.append(h("h1", {}, "Job"), form, out);

  let seen = null; // the last answer shown, as JSON: a poll re-draws only on a change
  let polling = false; // one poll at a time

  let current = null; // the id looked up last

  async function show(id) {
    scr.at("/jobs/" + enc(id));
    current = id;
    seen = null;
    let job;
    try {
      job = await call("GET", `jobs/${enc(id)}`);
    } catch (err) {
      clear(out);
      out.append(h("p", { class: "problem", role: "alert", "data-field": "error" }, err && err.status === 404 ? `No job ${id} (never one, or its record was swept).` : problem(err)));
      return;
    }
    if (scr.alive && current === id) draw(job);
  }

  function draw(job) {
    const text = JSON.stringify(job);
    if (text !== seen) {
      seen = text;
      clear(out);
      out.append(...view(job));
    }
    if (!SETTLED.has(job.state) && !polling) {
      polling = true;
      scr.later(POLL_MS, async () => {
        polling = false;
        try {
          const id = current;
          const again = await call("GET", `jobs/${enc(id)}`);
          if (scr.alive && current === id) draw(again);
        } catch (err) {
          // A failed poll leaves the page as it was; the next look-up or Refresh tries again.
        }
      });
    }
  }

  function view(job) {
    out.dataset.job = job.id;
    const waiting = job.waiting_for ?? null;
    const breaker = job.breaker ?? null;
    const pairs = [
      ["State", pill("state", job.state, job.state, stateTone(job.state))],
      ["Kind", shown("span", "kind", job.kind ?? null)],
      ["Webhook", job.webhook_id ? h("a", { href: "#/webhooks/" + enc(job.webhook_id), class: "mono", "data-field": "webhook_id", "data-value": job.webhook_id }, job.webhook_id) : shown("span", "webhook_id", null)],
      ["Tenant", shown("span", "tenant_id", job.tenant_id ?? null)],
      ["Event type", shown("span", "event_type", job.event_type ?? null)],
      ["Queue", shown("span", "queue", job.queue ?? null)],
      ["Priority", shown("span", "priority", job.priority ?? null)],
      ["Created", shown("time", "created_at", job.created_at ?? null, fmtTime(job.created_at ?? null))],
      ["Processed", shown("time", "processed_at", job.processed_at ?? null, fmtTime(job.processed_at ?? null))],
      ["Finished", shown("time", "finished_at", job.finished_at ?? null, fmtTime(job.finished_at ?? null))],
      ["Next attempt", shown("time", "next_attempt_at", job.next_attempt_at ?? null, job.next_attempt_at ? fmtWhen(job.next_attempt_at) : "—")],
      ["Waiting for", shown("span", "waiting_for", waiting, waiting ? WAITING[waiting] || waiting : "—")],
      ["Breaker", pill("breaker", breaker, breaker || "—", breaker === "open" ? "bad" : breaker === "half_open" ? "warn" : "ok")],
      ["Attempt", shown("span", "attempt", job.attempt ?? null)],
      ["Stalls", shown("span", "stalls", job.stalls ?? null)],
      ["Last status", shown("span", "last_status", job.last_status ?? null)],
      ["Last error", shown("span", "last_error", job.last_error ?? null, undefined, { class: "wrap error-text" })],
      ["Dead because", shown("span", "dead_reason", job.dead_reason ?? null)],
      ["Retry possible until", shown("time", "retry_until", job.retry_until ?? null, job.retry_until ? fmtWhen(job.retry_until) : "—")],
    ];
    const facts = h("dl", { class: "facts" });
    for (const [term, value] of pairs) facts.append(h("dt", {}, term), h("dd", {}, value));

    const actions = h("div", { class: "toolbar" });
    if (RETRYABLE.has(job.state)) {
      const retry = h("button", { type: "button", id: "retry", "data-action": "retry" }, job.state === "dead" ? "Retry (replay)" : "Send again");
      retry.addEventListener("click", scr.act(async () => {
        retry.disabled = true;
        try {
          const again = await scr.busy(() => call("POST", `jobs/${enc(job.id)}/retry`));
          toast(`Job ${job.id} queued again.`);
          if (scr.alive && current === job.id) draw(again);
        } catch (err) {
          retry.disabled = false;
          throw err;
        }
      }));
      actions.append(retry);
    }
    if (job.state === "dead") actions.append(h("a", { class: "button", href: "#/dlq?job=" + enc(job.id) }, "Inspect in the DLQ"));

    const attempts = h("ol", { id: "attempts", class: "timeline" });
    for (const a of job.attempts || []) {
      const ok = a.status !== null && a.status >= 200 && a.status < 300;
      attempts.append(
        h(
          "li",
          { "data-status": raw(a.status), "data-duration-ms": raw(a.duration_ms), class: ok ? "attempt-ok" : "attempt-bad" },
          h(
            "p",
            { class: "attempt-head" },
            shown("time", "at", a.at ?? null, fmtTime(a.at ?? null)),
            " ",
            shown("strong", "status", a.status, a.status === null ? "no answer" : `HTTP ${a.status}`),
            " in ",
            shown("span", "duration_ms", a.duration_ms, fmtMs(a.duration_ms)),
            a.late ? h("span", { class: "muted", "data-field": "late", "data-value": "true" }, " (late: past its deadline)") : null,
          ),
          shown("p", "error", a.error ?? null, a.error ?? "", { class: "error error-text" }),
        ),
      );
    }
    const timeline = h(
      "section",
      { "aria-labelledby": "attempts-title" },
      h("h2", { id: "attempts-title" }, `Attempts (${(job.attempts || []).length})`),
      (job.attempts || []).length ? attempts : h("p", { class: "muted" }, "No attempt yet."),
    );
    if (!(job.attempts || []).length) timeline.append(attempts); // the list is there, empty
    return [h("h2", { class: "mono" }, job.id), actions, facts, timeline];
  }

  const id = (params.get("id") || "").trim();
  if (id) await show(id);
  else input.focus();
}
