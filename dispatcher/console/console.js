/* Switchyard console: the management API in a browser.
 *
 * Plain DOM in ES modules, no framework and no build step: this file
 * routes and shows the tenants, common.js holds the DOM and API helpers
 * (text only, never markup), editor.js the adapter editor.
 *
 * Views are hash routes: #/tenants, #/tenants/<id>, #/tenants/<id>/adapter.
 * The token is kept in sessionStorage, so it is gone when the tab closes,
 * and sent as "Authorization: Bearer" on every call.
 */
import { showAdapter } from "./editor.js";
import {
  TOKEN_KEY,
  api,
  el,
  missingIsNull,
  scriptPath,
  shown,
  table,
  when,
  whenTokenRefused,
} from "./common.js";

const REFRESH_MS = 5000;
const STATES = new Set(["warm", "idle", "failed"]);

const view = document.getElementById("view");
let generation = 0; // bumped by each render; late answers for old ones are dropped
let refreshTimer = null;
let flash = null; // a message for the next view: {kind, text}

/* ---------- formatting ---------- */

function total(counts, keep = () => true) {
  return Object.entries(counts || {})
    .filter(([code]) => keep(code))
    .reduce((sum, [, count]) => sum + count, 0);
}

function millis(latency, key) {
  const value = latency ? latency[key] : null;
  return typeof value === "number" ? `${value.toFixed(1)} ms` : "-";
}

// A tenant with no live worker holds no memory worth a number: "-".
function mebibytes(bytes) {
  return typeof bytes === "number" && bytes > 0
    ? `${(bytes / 1048576).toFixed(1)} MiB`
    : "-";
}

function counted(number, noun) {
  return `${number} ${noun}${number === 1 ? "" : "s"}`;
}

function pairs(counts) {
  const entries = Object.entries(counts || {});
  return entries.length ? entries.map(([k, v]) => `${k} ${v}`).join(", ") : "-";
}

function notice() {
  const shownFlash = flash;
  flash = null;
  if (!shownFlash) return null;
  const role = shownFlash.kind === "error" ? "alert" : "status";
  return el("p", { class: `message ${shownFlash.kind}`, role }, shownFlash.text);
}

/* ---------- routing ---------- */

function route() {
  if (!sessionStorage.getItem(TOKEN_KEY)) {
    showLogin();
    return;
  }
  document.getElementById("nav").hidden = false;
  const hash = location.hash || "#/tenants";
  const match = hash.match(/^#\/tenants\/([a-z0-9-]+)(\/adapter)?$/);
  if (match && match[2]) {
    render((ticket) => showAdapter(view, match[1], () => ticket === generation));
  } else if (match) render((ticket) => showTenant(ticket, match[1]));
  else render(showTenants);
}

async function render(loader) {
  const ticket = ++generation;
  clearTimeout(refreshTimer);
  try {
    await loader(ticket);
  } catch (error) {
    if (error.handled || ticket !== generation) return;
    const message = `Could not load this view: ${error.message}`;
    view.replaceChildren(
      el(
        "section",
        { class: "panel" },
        el("p", { class: "message error", role: "alert" }, message),
      ),
    );
  }
}

function refreshLater(ticket) {
  refreshTimer = setTimeout(() => ticket === generation && route(), REFRESH_MS);
}

/* ---------- login ---------- */

function showLogin(message = "") {
  ++generation;
  clearTimeout(refreshTimer);
  document.getElementById("nav").hidden = true;
  const input = el("input", {
    type: "password",
    id: "token",
    name: "token",
    autocomplete: "current-password",
    required: true,
  });
  const error = el("p", { class: "message error", role: "alert", id: "login-error" }, message);
  error.hidden = !message;
  const button = el("button", { type: "submit" }, "Log in");

  async function logIn(event) {
    event.preventDefault();
    const token = input.value.trim();
    button.disabled = true;
    try {
      await api("GET", "/status", { token });
      sessionStorage.setItem(TOKEN_KEY, token);
      if (location.hash === "#/tenants") route();
      else location.hash = "#/tenants";
    } catch (failure) {
      error.textContent = loginProblem(failure);
      error.hidden = false;
      input.select();
    } finally {
      button.disabled = false;
    }
  }

  view.replaceChildren(
    el(
      "form",
      { class: "panel login", id: "login", onsubmit: logIn },
      el("h2", {}, "Log in"),
      el(
        "p",
        { class: "muted" },
        "The management API token: ",
        el("code", {}, "state/admin.token"),
        " under make run, or the value of ",
        el("code", {}, "SWITCHYARD_ADMIN_TOKEN"),
        ".",
      ),
      el("label", { for: "token" }, "Token"),
      input,
      button,
      error,
    ),
  );
  input.focus();
}

function loginProblem(failure) {
  if (failure.status === 403) {
    return "The management API refused this token (403 forbidden): check it and try again.";
  }
  if (failure.status === 401) return "Enter the token first.";
  return `Could not log in: ${failure.message}.`;
}

function logOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin();
}

/* ---------- tenants ---------- */

async function showTenants(ticket) {
  const status = await api("GET", "/status");
  if (ticket !== generation) return;
  const tenants = counted(status.tenants.length, "tenant");
  const summary = `${tenants}, ${counted(status.warm_workers, "warm worker")}`;
  const headings = ["Tenant", "Version", "State", "Requests", "Errors", "p50", "p99", "Memory"];
  view.replaceChildren(
    el(
      "section",
      { class: "panel" },
      notice(),
      el(
        "div",
        { class: "heading" },
        el("h2", {}, "Tenants"),
        el("span", { class: "muted" }, summary),
      ),
      el(
        "div",
        { id: "tenants" },
        table(headings, status.tenants.map(tenantRow), "No tenant yet."),
      ),
    ),
  );
  refreshLater(ticket);
}

// requests_total and errors_total, where the dispatcher sends them; else
// the same sums over the per-outcome counts every /status has.
function tenantRow(entry) {
  const requests = entry.requests_total ?? total(entry.requests);
  const errors = entry.errors_total ?? total(entry.requests, (code) => code !== "ok");
  return el(
    "tr",
    { "data-tenant": entry.tenant },
    el("td", {}, el("a", { href: `#/tenants/${encodeURIComponent(entry.tenant)}` }, entry.tenant)),
    el("td", { class: "mono" }, shown(entry.version)),
    stateCell(entry),
    el("td", { class: "num" }, requests),
    el("td", { class: errors ? "num bad" : "num" }, errors),
    el("td", { class: "num" }, millis(entry.latency_ms, "p50")),
    el("td", { class: "num" }, millis(entry.latency_ms, "p99")),
    el("td", { class: "num" }, mebibytes(entry.memory_bytes)),
  );
}

function stateCell(entry) {
  const problem = entry.problem ? el("div", { class: "problem" }, entry.problem) : null;
  return el("td", {}, stateBadge(entry), problem);
}

function stateBadge(entry) {
  const kind = STATES.has(entry.state) ? entry.state : "other";
  return el("span", { class: `state state-${kind}` }, shown(entry.state));
}

/* ---------- one tenant ---------- */

async function showTenant(ticket, tenant) {
  const [entry, settings, dead, recent] = await Promise.all([
    api("GET", `/status/${encodeURIComponent(tenant)}`),
    api("GET", scriptPath(tenant, "/settings")).catch(missingIsNull),
    api("GET", scriptPath(tenant, "/deliveries?state=dead")),
    api("GET", scriptPath(tenant, "/deliveries")),
  ]);
  if (ticket !== generation) return;
  view.replaceChildren(
    tenantSummary(entry, settings),
    logPanel(entry.logs || []),
    slowPanel(entry.slow_requests || []),
    deadLetterPanel(tenant, dead.deliveries),
    deliveryPanel(recent.deliveries),
  );
}

function tenantSummary(entry, settings) {
  const isAdapter = settings && settings.main_module.endsWith(".json");
  const adapterLink = el(
    "a",
    {
      class: "button",
      id: "edit-adapter",
      href: `#/tenants/${encodeURIComponent(entry.tenant)}/adapter`,
    },
    "Edit adapter",
  );
  const facts = [
    ["Version", shown(entry.version)],
    ["Script", settings ? `${settings.main_module} (${settings.source})` : "-"],
    ["Region", shown(entry.region)],
    [
      "Warm workers",
      entry.worker_pids.length
        ? `${entry.warm_workers} (pids ${entry.worker_pids.join(", ")})`
        : String(entry.warm_workers),
    ],
    ["Requests", pairs(entry.requests)],
    [
      "Latency p50 / p99",
      `${millis(entry.latency_ms, "p50")} / ${millis(entry.latency_ms, "p99")}`,
    ],
    ["Memory", mebibytes(entry.memory_bytes)],
    ["Inbound limit", rateLimit(entry.rate_limit)],
    ["Outbound calls", pairs(entry.outbound)],
  ];
  return el(
    "section",
    { class: "panel", id: "summary" },
    notice(),
    el(
      "div",
      { class: "heading" },
      el("h2", {}, entry.tenant),
      stateBadge(entry),
      el(
        "span",
        { class: "actions" },
        isAdapter ? adapterLink : null,
        el("button", { type: "button", class: "quiet", onclick: route }, "Refresh"),
      ),
    ),
    entry.problem ? el("p", { class: "message error" }, entry.problem) : null,
    el(
      "dl",
      { class: "facts" },
      facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]),
    ),
  );
}

function rateLimit(limit) {
  if (!limit || !limit.requests_per_second) return "none";
  return `${limit.requests_per_second}/s, burst ${limit.burst}`;
}

function logPanel(lines) {
  const rows = lines
    .slice()
    .reverse()
    .map((line) =>
      el(
        "tr",
        {},
        el("td", { class: "mono nowrap" }, when(line.at)),
        el("td", { class: "num" }, line.pid),
        el("td", { class: "log-text" }, line.text),
      ),
    );
  return el(
    "section",
    { class: "panel", id: "logs" },
    el("h3", {}, "Recent log, newest first"),
    table(["Time (UTC)", "Pid", "Line"], rows, "Nothing logged since the dispatcher started."),
  );
}

function slowPanel(slow) {
  const rows = slow.map((request) =>
    el(
      "tr",
      {},
      el("td", { class: "mono nowrap" }, when(request.at)),
      el("td", { class: "mono" }, request.request_id),
      el("td", { class: "num" }, request.pid),
      el("td", { class: "num" }, `${Math.round(request.elapsed_ms)} ms`),
      el("td", {}, stack(request.stack || [])),
    ),
  );
  return el(
    "section",
    { class: "panel", id: "slow-requests" },
    el("h3", {}, "Slow requests"),
    table(
      ["Time (UTC)", "Request", "Pid", "Elapsed", "Where it was"],
      rows,
      "No slow request recorded.",
    ),
  );
}

function stack(frames) {
  if (!frames.length) return "-";
  const last = frames[frames.length - 1];
  const lines = frames.map((f) => `${f.file}:${f.line} in ${f.function}\n    ${f.code || ""}`);
  return el(
    "details",
    {},
    el("summary", {}, `${last.function} (${last.file}:${last.line})`),
    el("pre", {}, lines.join("\n")),
  );
}

function deadLetterPanel(tenant, deliveries) {
  const replay = (id) => () =>
    act(`Delivery ${id} is queued again.`, () =>
      api("POST", scriptPath(tenant, `/deliveries/${encodeURIComponent(id)}/replay`)),
    );
  const rows = deliveries.map((d) =>
    el(
      "tr",
      { "data-delivery": d.id },
      el("td", { class: "mono" }, d.id),
      el("td", { class: "mono" }, `${d.method} ${d.url}`),
      el("td", { class: "num" }, d.attempts),
      el("td", {}, shown(d.last_error)),
      el(
        "td",
        {},
        el("button", { type: "button", class: "replay", onclick: replay(d.id) }, "Replay"),
      ),
    ),
  );
  const replayAll = el(
    "button",
    {
      type: "button",
      id: "replay-all",
      onclick: () =>
        act("Every dead letter is queued again.", () =>
          api("POST", scriptPath(tenant, "/deliveries/replay")),
        ),
    },
    "Replay all",
  );
  return el(
    "section",
    { class: "panel", id: "dead-letters" },
    el(
      "div",
      { class: "heading" },
      el("h3", {}, "Dead letters"),
      deliveries.length ? replayAll : null,
    ),
    table(["Delivery", "Call", "Attempts", "Last error", ""], rows, "No dead letter."),
  );
}

function deliveryPanel(deliveries) {
  const rows = deliveries.map((d) =>
    el(
      "tr",
      {},
      el("td", { class: "mono" }, d.id),
      el("td", {}, el("span", { class: `delivery delivery-${d.state}` }, d.state)),
      el("td", { class: "mono" }, `${d.method} ${d.url}`),
      el("td", { class: "num" }, d.attempts),
      el("td", { class: "num" }, shown(d.last_status)),
      el("td", { class: "mono nowrap" }, when(d.created_at)),
    ),
  );
  return el(
    "section",
    { class: "panel", id: "deliveries" },
    el("h3", {}, "Recent deliveries"),
    table(
      ["Delivery", "State", "Call", "Attempts", "Last status", "Created (UTC)"],
      rows,
      "No delivery yet.",
    ),
  );
}

// Run an action, then show the view again with what it said.
async function act(success, action) {
  try {
    await action();
    flash = { kind: "ok", text: success };
  } catch (error) {
    if (error.handled) return;
    flash = { kind: "error", text: `Refused: ${error.message}` };
  }
  route();
}

/* ---------- start ---------- */

whenTokenRefused(showLogin);
document.getElementById("logout").addEventListener("click", logOut);
window.addEventListener("hashchange", route);
route();
