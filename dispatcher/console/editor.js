/* Switchyard console: the adapter editor, the customer platform's face.
 *
 * Edits a declarative adapter (a .json main module) - name, trigger,
 * target, mapping rows, retry policy - checks the basics here, then
 * deploys it with PUT .../scripts/<id> (multipart: metadata, then the
 * file), keeping the settings the tenant serves with now. The dispatcher
 * trial-loads it and refuses one it cannot run, and its reason is shown.
 */

import { api, el, scriptPath } from "./common.js";

// The adapter vocabulary of sandbox_runner/adapters.py, for the menus and
// hints. The server stays the judge of what an adapter may say.
const TRIGGERS = {
  slack_webhook: "slack",
  teams_webhook: "teams",
  stripe_webhook: "stripe",
  generic_json: "json",
};
const TARGETS = { notion_api: "notion", airtable_api: "airtable", http: "http" };

/** Show the editor of `tenant` in `view`, unless `isCurrent()` turns false. */
export async function showAdapter(view, tenant, isCurrent) {
  const settings = await api("GET", scriptPath(tenant, "/settings"));
  if (!settings.main_module.endsWith(".json")) {
    throw new Error(`${tenant} runs code (${settings.main_module}), not a declarative adapter`);
  }
  const code = await api("GET", scriptPath(tenant, "/content"), { raw: true });
  if (!isCurrent()) return;
  let adapter;
  try {
    adapter = JSON.parse(code);
  } catch (error) {
    throw new Error(`${settings.main_module} is not valid JSON (${error.message})`);
  }
  view.replaceChildren(adapterEditor(tenant, settings, adapter));
}

function adapterEditor(tenant, settings, adapter) {
  const retry = adapter.retry_policy || {};
  const rows = el("tbody", { id: "mapping-rows" });
  for (const [source, destination] of Object.entries(adapter.mapping || {})) {
    rows.append(mappingRow(source, destination));
  }
  const form = el(
    "form",
    { class: "panel editor", id: "adapter-form", novalidate: true },
    el(
      "div",
      { class: "heading" },
      el("h2", {}, `Adapter of ${tenant}`),
      el("a", { href: `#/tenants/${encodeURIComponent(tenant)}` }, "Back to the tenant"),
    ),
    settingsNote(settings),
    field(
      "Name",
      el("input", { type: "text", name: "name", value: adapter.name || "", required: true }),
    ),
    el(
      "div",
      { class: "row" },
      field("Trigger", choice("trigger", TRIGGERS, adapter.trigger)),
      field("Target", choice("target", TARGETS, adapter.target)),
    ),
    el("h3", {}, "Mapping"),
    el("p", { class: "muted", id: "mapping-hint" }),
    el(
      "table",
      { class: "grid mapping" },
      el(
        "thead",
        {},
        el(
          "tr",
          {},
          el("th", {}, "From (trigger field)"),
          el("th", {}),
          el("th", {}, "To (target field)"),
          el("th", {}),
        ),
      ),
      rows,
    ),
    el(
      "button",
      {
        type: "button",
        id: "add-row",
        class: "quiet",
        onclick: () => rows.append(mappingRow("", "")),
      },
      "Add row",
    ),
    el("h3", {}, "Retry policy"),
    el(
      "div",
      { class: "row" },
      field(
        "Attempts at most",
        el("input", {
          type: "number",
          name: "retry_max",
          min: "1",
          step: "1",
          value: String(retry.max ?? 5),
        }),
      ),
      field(
        "Backoff",
        choice("retry_backoff", { exponential: "" }, retry.backoff || "exponential"),
      ),
    ),
    el(
      "div",
      { class: "actions" },
      el("button", { type: "submit", id: "deploy" }, "Validate and deploy"),
    ),
    el("div", { id: "deploy-result" }),
    el("h3", {}, `${settings.main_module} as it will be deployed`),
    el("pre", { id: "adapter-json", class: "preview" }),
  );
  const update = () => showPreview(form);
  form.addEventListener("input", update);
  form.addEventListener("click", () => setTimeout(update));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    deployAdapter(tenant, settings, form);
  });
  update();
  return form;
}

function field(label, input) {
  return el("label", { class: "field" }, el("span", {}, label), input);
}

function choice(name, options, current) {
  const names = Object.keys(options);
  if (current && !names.includes(current)) names.push(current);
  return el(
    "select",
    { name },
    names.map((option) => el("option", { value: option, selected: option === current }, option)),
  );
}

function mappingRow(source, destination) {
  const row = el(
    "tr",
    { class: "mapping-row" },
    el(
      "td",
      {},
      el("input", { type: "text", class: "source", value: source, "aria-label": "from" }),
    ),
    el("td", { class: "arrow" }, "\u2192"),
    el(
      "td",
      {},
      el("input", { type: "text", class: "destination", value: destination, "aria-label": "to" }),
    ),
    el(
      "td",
      {},
      el(
        "button",
        { type: "button", class: "quiet remove", onclick: () => row.remove() },
        "Remove",
      ),
    ),
  );
  return row;
}

function settingsNote(settings) {
  const kept = [
    `vars: ${Object.keys(settings.vars).join(", ") || "none"}`,
    `secrets: ${settings.secrets.join(", ") || "none"}`,
    `egress: ${(settings.egress.allow || []).join(", ") || "none"}`,
    `limits: ${Object.keys(settings.limits).length} set`,
  ];
  const note = el(
    "div",
    { class: "note", id: "settings-note" },
    el("p", {}, `A deploy keeps the current settings (${kept.join("; ")}).`),
  );
  if (settings.source === "folder") {
    note.append(
      el(
        "p",
        {},
        `${settings.script} is served from the tenants folder. Deploying here stores a version through the API, which takes over from the folder.`,
        settings.secrets.length
          ? " Secret values are not copied: set them through the API after the deploy."
          : "",
      ),
    );
  }
  return note;
}

function readAdapter(form) {
  const mapping = {};
  for (const row of form.querySelectorAll(".mapping-row")) {
    mapping[row.querySelector(".source").value.trim()] = row
      .querySelector(".destination")
      .value.trim();
  }
  return {
    name: form.elements.name.value.trim(),
    trigger: form.elements.trigger.value,
    target: form.elements.target.value,
    mapping,
    retry_policy: {
      max: Number(form.elements.retry_max.value),
      backoff: form.elements.retry_backoff.value,
    },
  };
}

function showPreview(form) {
  const trigger = TRIGGERS[form.elements.trigger.value];
  const target = TARGETS[form.elements.target.value];
  const hint = form.querySelector("#mapping-hint");
  hint.textContent =
    trigger && target
      ? `Sources start with "${trigger}." (any path under "${trigger}.raw."), destinations are "${target}.<field>".`
      : "";
  form.querySelector("#adapter-json").textContent = JSON.stringify(readAdapter(form), null, 2);
}

// The basics, before a round trip: what the server checks in depth
// (known trigger fields, target prefixes) it explains itself.
function problemsOf(form) {
  const problems = [];
  const flag = (input, message) => {
    input.classList.add("invalid");
    input.setAttribute("aria-invalid", "true");
    problems.push(message);
  };
  form.querySelectorAll(".invalid").forEach((input) => {
    input.classList.remove("invalid");
    input.removeAttribute("aria-invalid");
  });
  if (!form.elements.name.value.trim()) flag(form.elements.name, "The adapter needs a name.");
  const max = Number(form.elements.retry_max.value);
  if (!Number.isInteger(max) || max < 1)
    flag(form.elements.retry_max, "Attempts at most must be a whole number, 1 or more.");
  const rows = [...form.querySelectorAll(".mapping-row")];
  if (!rows.length) problems.push("The mapping needs at least one row.");
  const seen = new Set();
  rows.forEach((row, index) => {
    const source = row.querySelector(".source");
    const destination = row.querySelector(".destination");
    const from = source.value.trim();
    if (!/^[A-Za-z0-9_]+(\.[^.\s]+)+$/.test(from))
      flag(source, `Row ${index + 1}: "from" must be a dotted path such as json.amount.`);
    else if (seen.has(from))
      flag(source, `Row ${index + 1}: ${from} is already mapped in an earlier row.`);
    seen.add(from);
    if (!/^[A-Za-z0-9_]+\.[^.\s]+$/.test(destination.value.trim())) {
      flag(destination, `Row ${index + 1}: "to" must be <target>.<field>, such as http.amount.`);
    }
  });
  return problems;
}

async function deployAdapter(tenant, settings, form) {
  const result = form.querySelector("#deploy-result");
  const say = (kind, ...lines) =>
    result.replaceChildren(
      el(
        "div",
        { class: `message ${kind}`, role: kind === "error" ? "alert" : "status" },
        lines.map((line) => el("p", {}, line)),
      ),
    );
  const problems = problemsOf(form);
  if (problems.length) {
    say("error", "Not deployed: fix these first.", ...problems);
    return;
  }

  const metadata = {
    main_module: settings.main_module,
    vars: settings.vars,
    secrets: settings.secrets,
    limits: settings.limits,
    tags: settings.tags,
    egress: settings.egress,
  };
  const file = new Blob([`${JSON.stringify(readAdapter(form), null, 2)}\n`], {
    type: "application/json",
  });
  const body = new FormData();
  body.append("metadata", JSON.stringify(metadata));
  body.append(settings.main_module, file, settings.main_module);

  const button = form.querySelector("#deploy");
  button.disabled = true;
  say("pending", "Deploying: the dispatcher trial-loads the adapter first...");
  try {
    const version = await api("PUT", scriptPath(tenant), { body });
    say(
      "ok",
      `Deployed as version ${version.number} (${version.sha256.slice(0, 12)}); its trial worker started in ${version.startup_time_ms} ms.`,
      "New requests use it from now on.",
    );
    const now = await api("GET", scriptPath(tenant, "/settings"));
    form.querySelector("#settings-note").replaceWith(settingsNote(now));
  } catch (error) {
    if (!error.handled)
      say("error", `The dispatcher refused this adapter (${error.code}):`, error.message);
  } finally {
    button.disabled = false;
  }
}
