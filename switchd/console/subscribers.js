// Subscribers: list, search, add, edit, enable/disable, delete, and a live filter editor.

import { api } from "./api.js";
import { badge, confirmDialog, debounce, empty, errorBox, field, h, notice } from "./dom.js";
import { circuitBadge, loadLine, originOf } from "./endpoints.js";

const SAMPLE = { body: { order_id: 42, status: "paid" }, headers: { "X-Region": "eu" } };
const CHECK_DELAY_MS = 300;

/** The live verdict of `expression` on the sample, shown in `output` as you type. */
function filterChecker(expression, sample, output) {
  let latest = 0;
  const show = (state, text) => {
    output.className = `verdict verdict-${state}`;
    output.textContent = text;
  };
  async function check() {
    const mine = ++latest;
    let data;
    try {
      data = JSON.parse(sample.value || "{}");
    } catch (err) {
      show("invalid", `The sample event is not valid JSON: ${err.message}`);
      return;
    }
    try {
      const verdict = await api("POST", "/filters/check", { expression: expression.value, data });
      if (mine !== latest) return;
      if (!verdict.valid) show("invalid", `Invalid filter: ${verdict.error}`);
      else if (verdict.error) show("nomatch", `No match: evaluating it failed (${verdict.error})`);
      else if (verdict.matches) show("match", "Matches the sample event");
      else show("nomatch", "Does not match the sample event");
    } catch (err) {
      if (mine === latest) show("invalid", `Cannot check: ${err.message}`);
    }
  }
  const later = debounce(check, CHECK_DELAY_MS);
  expression.addEventListener("input", later);
  sample.addEventListener("input", later);
  check();
}

/** The add/edit form; `subscriber` null for a new one. Calls `done(saved)` after saving. */
function editor(subscriber, done, cancel) {
  const isNew = subscriber === null;
  const s = subscriber || { topic: "", target_url: "", description: "", enabled: true,
    filter_expression: "True" };
  const topic = h("input", { id: "sub-topic", required: true, value: s.topic,
    autocomplete: "off" });
  const target = h("input", { id: "sub-url", type: "url", required: true, value: s.target_url,
    placeholder: "https://example.com/hooks/:id", autocomplete: "off" });
  const description = h("input", { id: "sub-description", value: s.description });
  const enabled = h("input", { id: "sub-enabled", type: "checkbox", checked: s.enabled });
  const secret = h("input", { id: "sub-secret", type: "checkbox", checked: isNew });
  const expression = h("textarea", { id: "sub-filter", rows: "3", spellcheck: "false",
    className: "code" }, s.filter_expression);
  const sample = h("textarea", { id: "sub-sample", rows: "5", spellcheck: "false",
    className: "code" }, JSON.stringify(SAMPLE, null, 2));
  const verdict = h("output", { id: "filter-verdict", for: "sub-filter sub-sample",
    "aria-live": "polite", className: "verdict" }, "Checking…");
  const problem = h("div", {});
  const form = h("form", { className: "editor", "aria-labelledby": "editor-title" },
    h("h2", { id: "editor-title" }, isNew ? "Add a subscriber" : `Edit subscriber ${s.id}`),
    h("div", { className: "grid2" },
      field("Topic", topic),
      field("Target URL", target, "Absolute http(s) URL; :name segments come from path_params."),
      field("Description", description),
      h("div", { className: "checks" },
        h("label", {}, enabled, " Enabled"),
        h("label", {}, secret, isNew ? " Generate a signing secret" : " Rotate the signing secret"))),
    h("div", { className: "grid2" },
      field("Filter expression", expression,
        "Python-like, over data, e.g. data[\"body\"][\"status\"] == \"paid\". True matches all."),
      field("Sample event (payload JSON)", sample, "Only for trying the filter; not saved.")),
    verdict, problem,
    h("div", { className: "actions" },
      h("button", { type: "submit", className: "primary" }, isNew ? "Create subscriber" : "Save"),
      h("button", { type: "button", onclick: cancel }, "Cancel")));
  filterChecker(expression, sample, verdict);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const fields = { topic: topic.value, target_url: target.value,
      description: description.value, enabled: enabled.checked,
      filter_expression: expression.value };
    if (secret.checked) fields.secret = true;
    try {
      const saved = isNew
        ? await api("POST", "/subscribers", fields)
        : await api("PATCH", `/subscribers/${encodeURIComponent(s.id)}`, fields);
      done(saved);
    } catch (err) {
      problem.replaceChildren(errorBox(err, "Not saved: "));
    }
  });
  return form;
}

function secretBox(saved) {
  return h("div", { className: "secret", role: "status" },
    h("strong", {}, "Signing secret of ", h("code", {}, saved.id), ": shown only this once."),
    h("code", { className: "secret-value", id: "new-secret" }, saved.secret),
    h("p", { className: "hint" }, "Give it to the subscriber to verify the webhook-signature "
      + "header (Standard Webhooks)."));
}

/** Render the Subscribers view into `main`. */
export function subscribersView(main) {
  const search = h("input", { id: "sub-search", type: "search", placeholder: "topic, URL, id…",
    autocomplete: "off" });
  const add = h("button", { type: "button", className: "primary" }, "Add subscriber");
  const status = notice();
  const slot = h("div", {});
  const list = h("div", {});
  let subscribers = [];
  let endpoints = new Map(); // origin → state (GET /endpoints)
  main.append(h("h1", { tabindex: "-1" }, "Subscribers"),
    h("div", { className: "toolbar" }, field("Search", search), add), status, slot, list);

  function open(subscriber) {
    const form = editor(subscriber, async (saved) => {
      slot.replaceChildren(saved.secret ? secretBox(saved) : "");
      status.show(subscriber ? `Saved ${saved.id}.` : `Created ${saved.id}.`);
      await load();
    }, () => slot.replaceChildren());
    slot.replaceChildren(form);
    form.querySelector("input").focus();
  }

  async function toggle(s) {
    try {
      await api("PATCH", `/subscribers/${encodeURIComponent(s.id)}`, { enabled: !s.enabled });
      status.show(`${s.enabled ? "Disabled" : "Enabled"} ${s.id}.`);
      await load();
    } catch (err) {
      list.prepend(errorBox(err));
    }
  }

  async function remove(s) {
    const sure = await confirmDialog("Delete this subscriber?",
      `${s.topic} → ${s.target_url} (${s.id}) stops receiving events at once. `
      + "Its dead letters stay until purged.", "Delete");
    if (!sure) return;
    try {
      await api("DELETE", `/subscribers/${encodeURIComponent(s.id)}`);
      status.show(`Deleted ${s.id}.`);
      await load();
    } catch (err) {
      list.prepend(errorBox(err));
    }
  }

  function endpointCell(s) {
    const endpoint = endpoints.get(originOf(s.target_url));
    const cell = (...parts) => h("td", { className: "endpoint" }, ...parts);
    if (!endpoint) return cell(h("span", { className: "sub" }, "idle"));
    return cell(circuitBadge(endpoint),
      h("span", { className: "sub" }, loadLine(endpoint)),
      endpoint.last_error && h("span", { className: "sub" }, endpoint.last_error));
  }

  function row(s) {
    const state = s.enabled ? badge("enabled", "enabled") : badge("disabled", "disabled");
    return h("tr", { "data-id": s.id },
      h("td", {}, s.topic),
      h("td", {}, h("span", { className: "url" }, s.target_url),
        s.description && h("span", { className: "sub" }, s.description)),
      h("td", {}, h("code", {}, s.filter_expression)),
      h("td", {}, state, s.disabled_reason && h("span", { className: "sub" }, s.disabled_reason)),
      endpointCell(s),
      h("td", { className: "row-actions" },
        h("button", { type: "button", onclick: () => open(s) }, "Edit"),
        h("button", { type: "button", onclick: () => toggle(s) }, s.enabled ? "Disable" : "Enable"),
        h("button", { type: "button", className: "danger", onclick: () => remove(s) }, "Delete")));
  }

  function draw() {
    const words = search.value.trim().toLowerCase();
    const shown = subscribers.filter((s) => !words || [s.id, s.topic, s.target_url,
      s.description, s.filter_expression].join(" ").toLowerCase().includes(words));
    if (!subscribers.length) {
      list.replaceChildren(empty("No subscribers yet. Add one here, or with ",
        h("code", {}, "switchd subscribers add"), "."));
    } else if (!shown.length) {
      list.replaceChildren(empty(`No subscriber matches “${search.value}”.`));
    } else {
      list.replaceChildren(h("table", {},
        h("caption", { className: "sr-only" }, "Subscribers"),
        h("thead", {}, h("tr", {}, ...["Topic", "Target", "Filter", "State", "Endpoint", "Actions"]
          .map((name) => h("th", { scope: "col" }, name)))),
        h("tbody", {}, shown.map(row))));
    }
  }

  async function load() {
    try {
      const [listed, isolation] = await Promise.all([
        api("GET", "/subscribers"), api("GET", "/endpoints")]);
      subscribers = listed.subscribers
        .sort((a, b) => a.topic.localeCompare(b.topic) || a.created_at - b.created_at);
      endpoints = new Map(isolation.endpoints.map((e) => [e.origin, e]));
      draw();
    } catch (err) {
      list.replaceChildren(errorBox(err, "Could not load subscribers: "));
    }
  }

  search.addEventListener("input", draw);
  add.addEventListener("click", () => open(null));
  load();
}
