// app.js: the shell. The login, the hash router, and each view's lifecycle: app.js clears
// main#view, sets data-view, awaits the view's render(root, params), then sets data-ready.

import { ApiError, TOKEN_KEY, check, onUnauthorized } from "./api.js";
import { clear, el } from "./dom.js";

const REFUSED = "the token was refused (401)";

// hash path -> [data-view, module]; "/<id>" routes pass the id as params.get("id").
const ROUTES = {
  "": ["dashboard", "./dashboard.js"],
  webhooks: ["webhooks", "./webhooks.js"],
  "webhooks/": ["webhook", "./webhooks.js"],
  dlq: ["dlq", "./dlq.js"],
  "dlq/": ["dlq", "./dlq.js"],
  jobs: ["job", "./job.js"],
  "jobs/": ["job", "./job.js"],
};

const $ = (id) => document.getElementById(id);
const root = $("view");
let current = null; // the view module shown, for its stop()
let generation = 0; // a newer route wins over a render still running

/** A %-escaped id of the address; as typed when an escape is malformed (a bare
 * decodeURIComponent throws, leaving the view stopped and never replaced). */
function decode(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/** The route of location.hash: [data-view, module path, URLSearchParams]. */
function parse(hash) {
  const [path, search = ""] = hash.replace(/^#\/?/, "").split("?", 2);
  const params = new URLSearchParams(search);
  const slash = path.indexOf("/");
  let key = path.replace(/\/$/, ""); // "webhooks/" with no id is the list
  if (slash >= 0 && slash < path.length - 1) {
    key = path.slice(0, slash + 1);
    params.set("id", decode(path.slice(slash + 1)));
  }
  const [view, module] = ROUTES[key] ?? ROUTES[""];
  return [view, module, params];
}

function stopView() {
  try {
    current?.stop?.();
  } finally {
    current = null;
  }
}

async function show() {
  if (!sessionStorage.getItem(TOKEN_KEY)) return showLogin("");
  const mine = ++generation;
  stopView();
  const [view, module, params] = parse(location.hash);
  clear(root);
  delete root.dataset.ready;
  delete root.dataset.error;
  root.dataset.view = view;
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === view || (view === "webhook" && link.dataset.nav === "webhooks")) {
      link.setAttribute("aria-current", "page");
    } else {
      link.removeAttribute("aria-current");
    }
  }
  try {
    const mod = await import(module);
    if (mine !== generation) return;
    current = mod;
    await mod.render(root, params);
  } catch (err) {
    if (mine !== generation || (err instanceof ApiError && err.status === 401)) return;
    root.dataset.error = err.message;
    root.append(el("p", { class: "error", role: "alert" }, "Could not load this view: " + err.message));
  }
  if (mine === generation) root.dataset.ready = "true";
}

function showLogin(message) {
  generation++;
  stopView();
  clear(root);
  delete root.dataset.ready;
  root.hidden = true;
  $("bar").hidden = true;
  $("login-screen").hidden = false;
  $("login-error").textContent = message;
  $("token").focus();
}

async function logIn(event) {
  event.preventDefault();
  const input = $("token");
  const button = $("login").querySelector("button[type=submit]");
  const token = input.value.trim();
  if (!token) return;
  button.disabled = true;
  $("login-error").textContent = "";
  try {
    await check(token);
  } catch (err) {
    // /v1 checks the token before the handler runs: a 503 redis_unavailable has passed it, and
    // an outage is when the panel is wanted most (the dashboard says what is wrong).
    if (!(err instanceof ApiError && err.code === "redis_unavailable")) return refuse(err);
  } finally {
    button.disabled = false;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  input.value = "";
  $("login-screen").hidden = true;
  $("bar").hidden = false;
  root.hidden = false;
  show();
}

function refuse(err) {
  sessionStorage.removeItem(TOKEN_KEY);
  const status = err instanceof ApiError ? err.status : 0;
  if (status === 401) $("login-error").textContent = REFUSED;
  else $("login-error").textContent = status ? `the daemon answered ${status}: ${err.message}` : err.message;
  $("token").select();
}

function start() {
  onUnauthorized(() => showLogin(REFUSED));
  $("login").addEventListener("submit", logIn);
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("");
  });
  $("refresh").addEventListener("click", show);
  window.addEventListener("hashchange", async () => {
    await show();
    if (!root.hidden && !root.contains(document.activeElement)) root.focus();
  });
  if (sessionStorage.getItem(TOKEN_KEY)) {
    $("bar").hidden = false;
    root.hidden = false;
    show();
  } else {
    showLogin("");
  }
}

start();
