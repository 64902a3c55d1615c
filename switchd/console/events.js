// Events: the delivery log, newest first, each event expandable to its attempts; one event
// looked up by its id (what POST /publish answered), also as a link: #/events/<id>.

import { api } from "./api.js";
import {
  badge, empty, errorBox, field, h, loadMore, pageQuery, showPage, size, when,
} from "./dom.js";

const STATUSES = ["delivered", "failed", "pending", "dead", "unmatched", "skipped"];

/** The console link to one event (shareable: the token is never in it). */
export function eventHref(id) {
  return `#/events/${encodeURIComponent(id)}`;
}

/** An event id in full (selectable with one click), shortened by CSS, whole in the title. */
function eventId(id) {
  return h("code", { className: "event-id", title: id }, id);
}

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

/** One event's fate: its id and link, then each matched subscriber's state and attempts. */
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
  return h("div", { className: "detail" },
    h("p", { className: "sub share" }, "Event ", h("code", {}, event.id), " · ",
      h("a", { href: eventHref(event.id) }, "Link to this event")),
    ...parts);
}

/** Render the Events view into `main`; `[id]` from a link #/events/<id> looks that one up. */
export function eventsView(main, [linked] = []) {
  const lookupId = h("input", { id: "ev-lookup", autocomplete: "off", spellcheck: "false",
    required: true, className: "code", placeholder: "the event_id that POST /publish answered" });
  const lookupForm = h("form", { className: "toolbar lookup", role: "search",
    "aria-label": "Event by id" }, field("Event id", lookupId),
    h("button", { type: "submit" }, "Look up"));
  const found = h("div", {});
  const topic = h("input", { id: "ev-topic", autocomplete: "off" });
  const author = h("input", { id: "ev-author", autocomplete: "off" });
  const status = h("select", { id: "ev-status" }, h("option", { value: "" }, "any"),
    STATUSES.map((name) => h("option", { value: name }, name)));
  const filters = h("form", { className: "toolbar" }, field("Topic", topic),
    field("Author", author), field("Status", status), h("button", { type: "submit" }, "Apply"));
  const problem = h("div", {});
  const table = h("table", { className: "events", hidden: true },
    h("thead", {}, h("tr", {}, ...["Received", "Event id", "Topic", "Author", "Status",
      "Subscribers", "Size", ""].map((name) => h("th", { scope: "col" }, name)))),
    h("tbody", {}));
  const none = h("div", {});
  const more = loadMore(() => load(cursor));
  let cursor = null;
  let names = null; // a promise of the subscribers' names by id
  let latest = 0; // the newest lookup: an older one's answer is dropped
  main.append(h("h1", { tabindex: "-1" }, "Events"), lookupForm, found, filters, problem, none,
    table, more);

  /** Subscriber id → "topic → target URL"; fetched again when `fresh`. */
  function subscriberNames(fresh = false) {
    if (fresh || !names) {
      names = api("GET", "/subscribers").then(({ subscribers }) =>
        new Map(subscribers.map((s) => [s.id, `${s.topic} → ${s.target_url}`])));
      const mine = names;
      mine.catch(() => {
        if (names === mine) names = null; // asked again next time
      });
    }
    return names;
  }

  /** The event `id` with its subscribers' names: the expansion of a row or a lookup. */
  async function fate(id) {
    const [event, known] = await Promise.all([
      api("GET", `/events/${encodeURIComponent(id)}`), subscriberNames()]);
    return { event, shown: detail(event, known) };
  }

  async function expand(event, button, row) {
    const open = button.getAttribute("aria-expanded") === "true";
    const id = `ev-${event.id}`;
    if (open) {
      document.getElementById(id)?.remove();
      button.setAttribute("aria-expanded", "false");
      button.textContent = "Attempts";
      return;
    }
    const cell = h("td", { colspan: "8" }, "Loading…");
    row.after(h("tr", { id, className: "expanded" }, cell));
    button.setAttribute("aria-expanded", "true");
    button.setAttribute("aria-controls", id);
    button.textContent = "Hide";
    try {
      cell.replaceChildren((await fate(event.id)).shown);
    } catch (err) {
      cell.replaceChildren(errorBox(err));
    }
  }

  function closeLookup() {
    latest += 1;
    found.replaceChildren();
    history.replaceState(null, "", "#/events");
    lookupId.focus();
  }

  /** Show the event `id` above the listing, expanded, and focus its heading. */
  async function lookup(id) {
    const mine = ++latest;
    found.replaceChildren(h("p", { className: "sub", role: "status" }, "Looking up…"));
    let result;
    try {
      const { event, shown } = await fate(id);
      const close = h("button", { type: "button", onclick: closeLookup }, "Close");
      result = h("section", { className: "found", "aria-labelledby": "found-title" },
        h("div", { className: "found-head" },
          h("h2", { id: "found-title", tabindex: "-1" }, badge(event.status), " ",
            `${event.topic}, published by ${event.author}`), close),
        h("p", { className: "sub" }, `Received ${when(event.received_at)} · `
          + `${size(event.payload_size)} · matched ${event.matched.length} subscriber`
          + `${event.matched.length === 1 ? "" : "s"}`,
          event.test ? " · test delivery" : ""),
        shown);
    } catch (err) {
      result = err.status === 404
        ? h("div", { className: "error", role: "alert" }, `No event with id “${id}”. Check the `
          + "id (POST /publish answers it as event_id); events older than the log's retention "
          + "(SWITCH_LOG_RETENTION, 7 days by default) are purged.")
        : errorBox(err, "Could not look up the event: ");
    }
    if (mine !== latest) return;
    found.replaceChildren(result);
    found.querySelector("h2")?.focus();
  }

  function row(event) {
    const button = h("button", { type: "button", "aria-expanded": "false" }, "Attempts");
    const tr = h("tr", { "data-id": event.id },
      h("td", {}, when(event.received_at)),
      h("td", {}, eventId(event.id)),
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
    const where = { topic: topic.value, author: author.value, status: status.value };
    try {
      if (before === null) await subscriberNames(true);
      const page = await api("GET", `/events?${pageQuery(where, before)}`);
      problem.replaceChildren();
      cursor = page.next_cursor;
      showPage({ table, more, none }, page.events.map(row), cursor, before === null, () =>
        Object.values(where).some(Boolean) ? empty("No events match these filters.")
          : empty("No events yet — publish one with ",
            h("code", {}, "switchd publish orders --body '{\"id\": 1}'"),
            " or POST /publish with a publisher token."));
    } catch (err) {
      problem.replaceChildren(errorBox(err, "Could not load events: "));
    }
  }

  lookupForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const id = lookupId.value.trim();
    if (!id) {
      lookupId.value = "";
      lookupId.reportValidity();
      return;
    }
    if (location.hash !== eventHref(id)) history.pushState(null, "", eventHref(id));
    lookup(id);
  });
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  load();
  if (linked) {
    lookupId.value = linked;
    lookup(linked);
  }
}
