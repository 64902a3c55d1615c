// Events: the delivery log, newest first, each event expandable to its attempts.

import { api } from "./api.js";
import {
  badge, empty, errorBox, field, h, loadMore, pageQuery, showPage, size, when,
} from "./dom.js";

const STATUSES = ["delivered", "failed", "pending", "dead", "unmatched", "skipped"];

function attemptsTable(attempts) {
  if (!attempts.length) return empty("No attempt yet: the delivery is waiting in the queue.");
  return h("table", { className: "attempts" },
    h("thead", {}, h("tr", {}, ...["#", "Time", "HTTP status", "Outcome", "Duration", "Error",
      "Next retry"].map((name) => h("th", { scope: "col" }, name)))),
    h("tbody", {}, attempts.map((a) => h("tr", {},
      h("td", {}, String(a.attempt)),
      h("td", {}, when(a.at)),
      h("td", {}, a.status === null ? "—" : String(a.status)),
      h("td", {}, badge(a.outcome)),
      h("td", {}, `${a.duration_ms.toFixed(1)} ms`),
      h("td", { className: "wrap" }, a.error || ""),
      h("td", {}, a.next_retry_at ? when(a.next_retry_at) : "—")))));
}

function detail(event, names) {
  const parts = event.subscribers.map((s) => h("section", { className: "fate" },
    h("h3", {}, badge(s.state), " ", names.get(s.subscriber_id) || `${s.subscriber_id} (deleted)`),
    h("p", { className: "sub" }, `subscriber ${s.subscriber_id}`,
      s.next_retry_at ? ` · next retry ${when(s.next_retry_at)}` : "",
      s.dead_letter_id ? ` · dead letter #${s.dead_letter_id} (see Dead letters)` : ""),
    attemptsTable(s.attempts)));
  if (!parts.length) parts.push(empty("It matched no subscriber, so nothing was delivered."));
  if (event.payload) {
    parts.push(h("details", {}, h("summary", {}, "Payload"),
      h("pre", { className: "code" }, JSON.stringify(event.payload, null, 2))));
  }
  return h("div", { className: "detail" }, ...parts);
}

/** Render the Events view into `main`. */
export function eventsView(main) {
  const topic = h("input", { id: "ev-topic", autocomplete: "off" });
  const status = h("select", { id: "ev-status" }, h("option", { value: "" }, "any"),
    STATUSES.map((name) => h("option", { value: name }, name)));
  const filters = h("form", { className: "toolbar" }, field("Topic", topic),
    field("Status", status), h("button", { type: "submit" }, "Apply"));
  const problem = h("div", {});
  const table = h("table", { className: "events", hidden: true },
    h("thead", {}, h("tr", {}, ...["Received", "Topic", "Author", "Status", "Subscribers", "Size",
      ""].map((name) => h("th", { scope: "col" }, name)))), h("tbody", {}));
  const none = h("div", {});
  const more = loadMore(() => load(cursor));
  let cursor = null;
  let names = new Map();
  main.append(h("h1", { tabindex: "-1" }, "Events"), filters, problem, none, table, more);

  async function expand(event, button, row) {
    const open = button.getAttribute("aria-expanded") === "true";
    const id = `ev-${event.id}`;
    if (open) {
      document.getElementById(id)?.remove();
      button.setAttribute("aria-expanded", "false");
      button.textContent = "Attempts";
      return;
    }
    const cell = h("td", { colspan: "7" }, "Loading…");
    row.after(h("tr", { id, className: "expanded" }, cell));
    button.setAttribute("aria-expanded", "true");
    button.setAttribute("aria-controls", id);
    button.textContent = "Hide";
    try {
      cell.replaceChildren(detail(await api("GET", `/events/${encodeURIComponent(event.id)}`),
        names));
    } catch (err) {
      cell.replaceChildren(errorBox(err));
    }
  }

  function row(event) {
    const button = h("button", { type: "button", "aria-expanded": "false" }, "Attempts");
    const tr = h("tr", { "data-id": event.id },
      h("td", {}, when(event.received_at)),
      h("td", {}, event.topic, event.test && h("span", { className: "sub" }, "test delivery")),
      h("td", {}, event.author),
      h("td", {}, badge(event.status)),
      h("td", {}, String(event.matched.length)),
      h("td", {}, size(event.payload_size)),
      h("td", { className: "row-actions" }, button));
    button.addEventListener("click", () => expand(event, button, tr));
    return tr;
  }

  async function load(before = null) {
    const where = { topic: topic.value, status: status.value };
    try {
      if (before === null) {
        const subscribers = (await api("GET", "/subscribers")).subscribers;
        names = new Map(subscribers.map((s) => [s.id, `${s.topic} → ${s.target_url}`]));
      }
      const page = await api("GET", `/events?${pageQuery(where, before)}`);
      problem.replaceChildren();
      cursor = page.next_cursor;
      showPage({ table, more, none }, page.events.map(row), cursor, before === null, () =>
        (where.topic || where.status) ? empty("No events match these filters.")
          : empty("No events yet — publish one with ",
            h("code", {}, "switchd publish orders --body '{\"id\": 1}'"),
            " or POST /publish with a publisher token."));
    } catch (err) {
      problem.replaceChildren(errorBox(err, "Could not load events: "));
    }
  }

  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  load();
}
