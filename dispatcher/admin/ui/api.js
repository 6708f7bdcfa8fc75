// api.js: the panel's one way to /v1. The bearer token comes from this tab's sessionStorage;
// no cookie is sent (credentials: "omit"), nothing is cached, and a redirect is an error.

export const TOKEN_KEY = "dispatcher.token";
// A read that has not answered by then is an error: fetch never gives up by itself, and the
// views wait for one read before the next, so a hung one would stop their polling for good.
const READ_TIMEOUT_MS = 30000;

/** A non-2xx answer: `status`, the answer's `error.code` as `code`, and the parsed `body`. */
export class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

let unauthorized = () => {};

/** app.js's hook for a 401: back to the login. */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

/** `?a=1&b=2` from an object or URLSearchParams, skipping null, undefined and "". */
export function query(params) {
  const entries = params instanceof URLSearchParams ? [...params] : Object.entries(params ?? {});
  const kept = entries.filter(([, v]) => v !== null && v !== undefined && v !== "");
  return kept.length ? "?" + new URLSearchParams(kept.map(([k, v]) => [k, String(v)])) : "";
}

/** Call /v1/`path` with the stored token: the parsed JSON (null for 204), or an ApiError.
 * A 401 also removes the token and shows the login. */
export async function call(method, path, body = undefined) {
  try {
    return await send(method, path, body, sessionStorage.getItem(TOKEN_KEY) ?? "");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      unauthorized(err);
    }
    throw err;
  }
}

/** GET /v1/status with a token not stored yet (the login's check): the status or an ApiError. */
export function check(token) {
  return send("GET", "status", undefined, token);
}

async function send(method, path, body, token) {
  const headers = { Accept: "application/json", Authorization: "Bearer " + token };
  const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
  if (method === "GET") init.signal = AbortSignal.timeout(READ_TIMEOUT_MS);
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  let text;
  try {
    response = await fetch(new URL("../v1/" + path, document.baseURI), init);
    text = await response.text();
  } catch (err) {
    throw new ApiError(0, "network", "the daemon did not answer (" + err.message + ")", null);
  }
  let parsed = null;
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = null;
    }
  }
  if (!response.ok) {
    const error = parsed?.error ?? {};
    const message = error.message ?? `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, error.code ?? "http_" + response.status, message, parsed);
  }
  return parsed;
}
