/* Switchyard console: what every view uses - the DOM as text only, and
 * the management API.
 *
 * el() appends text nodes and sets properties, never markup, so nothing a
 * tenant writes (a log line, a name, an error) can become HTML in an
 * operator's browser. api() sends the token from sessionStorage as
 * "Authorization: Bearer" on every call.
 */

export const TOKEN_KEY = "switchyard.token";
const SCRIPTS = "/accounts/local/workers/dispatch/namespaces/default/scripts";

let tokenRefused = () => {};

/** Call `handler(message)` when the API refuses the saved token. */
export function whenTokenRefused(handler) {
  tokenRefused = handler;
}

/* ---------- the DOM, as text only ---------- */

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key in node && !key.includes("-")) node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined && child !== false) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

export function shown(value) {
  return value === null || value === undefined || value === "" ? "-" : String(value);
}

export function when(seconds) {
  if (!seconds) return "-";
  return new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19);
}

export function table(headings, rows, empty) {
  if (!rows.length) return el("p", { class: "muted" }, empty);
  return el(
    "table",
    { class: "grid" },
    el(
      "thead",
      {},
      el(
        "tr",
        {},
        headings.map((h) => el("th", {}, h)),
      ),
    ),
    el("tbody", {}, rows),
  );
}

/* ---------- the API ---------- */

export class ApiError extends Error {
  constructor(status, error) {
    super((error && error.message) || `the API answered ${status}`);
    this.status = status;
    this.code = (error && error.code) || `http_${status}`;
  }
}

// A call to the management API. With `token` it is a login attempt, and
// a refusal is the caller's to report; otherwise a refused saved token
// ends the session and shows the login form.
export async function api(method, path, { body, token, raw = false } = {}) {
  const loggingIn = token !== undefined;
  const bearer = loggingIn ? token : sessionStorage.getItem(TOKEN_KEY);
  let response;
  try {
    response = await fetch(path, {
      method,
      body,
      cache: "no-store",
      headers: { authorization: `Bearer ${bearer}` },
    });
  } catch {
    throw new ApiError(0, { message: "the management API did not answer" });
  }
  if (response.ok) {
    return raw ? response.text() : response.json();
  }
  const answer = await response.json().catch(() => null);
  const error = new ApiError(response.status, answer && answer.error);
  if (!loggingIn && (response.status === 401 || response.status === 403)) {
    sessionStorage.removeItem(TOKEN_KEY);
    tokenRefused("The management API refused the saved token: log in again.");
    error.handled = true;
  }
  throw error;
}

export function scriptPath(tenant, suffix = "") {
  return `${SCRIPTS}/${encodeURIComponent(tenant)}${suffix}`;
}

export function missingIsNull(error) {
  if (error instanceof ApiError && error.status === 404) return null;
  throw error;
}
