// Dead letters: inspect, replay one, selected or all matching, purge.

import { api } from "./api.js";
import {
  confirmDialog, empty, errorBox, field, h, loadMore, notice, pageQuery, showPage, when,
} from "./dom.js";
import { eventHref } from "./events.js";

function inspect(record) {
  const rows = [
    ["Event", h("a", { href: eventHref(record.event_id) }, h("code", {}, record.event_id))],
    ["Subscriber", record.subscriber_id || "—"],
    ["Target URL", record.target_url], ["Filter", record.filter_expression],
    ["Author", record.author], ["First attempt", when(record.first_attempt_at)],
    ["Last attempt", when(record.last_attempt_at)], ["Replayed", when(record.replayed_at)],
  ];
  return h("div", { className: "detail" },
    h("dl", {}, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    h("h3", {}, "Payload"),
    h("pre", { className: "code" }, JSON.stringify(record.payload, null, 2)));
}

/** Render the Dead letters view into `main`. */
export function deadView(main) {
  const subscriber = h("input", { id: "dl-subscriber", autocomplete: "off" });
  const topic = h("input", { id: "dl-topic", autocomplete: "off" });
  const filters = h("form", { className: "toolbar" }, field("Subscriber id", subscriber),
    field("Topic", topic), h("button", { type: "submit" }, "Apply"));
  const replaySelected = h("button", { type: "button", disabled: true }, "Replay selected");
  const purgeSelected = h("button", { type: "button", className: "danger", disabled: true },
    "Purge selected");
  const replayAll = h("button", { type: "button", disabled: true,
    title: "Give a subscriber id or a topic first" }, "Replay all matching");
  const status = notice();
  const problem = h("div", {});
  const body = h("tbody", {});
  const table = h("table", { className: "dead", hidden: true },
    h("thead", {}, h("tr", {}, ...["", "Died", "Topic", "Subscriber", "Attempts", "Last status",
      "Last error", "Replayed", "Actions"].map((name) => h("th", { scope: "col" }, name)))), body);
  const none = h("div", {});
  const more = loadMore(() => load(cursor));
  let cursor = null;
  main.append(h("h1", { tabindex: "-1" }, "Dead letters"), filters,
    h("div", { className: "toolbar" }, replaySelected, purgeSelected, replayAll),
    status, problem, none, table, more);

  const selected = () => [...body.querySelectorAll("input[type=checkbox]:checked")]
    .map((box) => Number(box.value));
  const refreshButtons = () => {
    const some = selected().length === 0;
    replaySelected.disabled = some;
    purgeSelected.disabled = some;
    replayAll.disabled = !(subscriber.value || topic.value);
  };

  async function act(what, work) {
    try {
      status.show(await work());
      problem.replaceChildren();
    } catch (err) {
      problem.replaceChildren(errorBox(err, `${what} failed: `));
    }
    await load();
  }

  const replay = (ids) => act("Replay", async () => {
    for (const id of ids) await api("POST", `/dead/${id}/replay`);
    return `Replayed ${ids.length} dead letter${ids.length === 1 ? "" : "s"}: fresh deliveries `
      + "are queued. Follow them in Events.";
  });

  async function purge(ids) {
    const sure = await confirmDialog(`Purge ${ids.length} dead letter${ids.length === 1 ? "" : "s"}?`,
      "They are deleted for good and can no longer be replayed.", "Purge");
    if (!sure) return;
    await act("Purge", async () => {
      for (const id of ids) await api("DELETE", `/dead/${id}`);
      return `Purged ${ids.length} dead letter${ids.length === 1 ? "" : "s"}.`;
    });
  }

  async function toggleInspect(record, button, tr) {
    const id = `dl-${record.id}`;
    if (button.getAttribute("aria-expanded") === "true") {
      document.getElementById(id)?.remove();
      button.setAttribute("aria-expanded", "false");
      return;
    }
    const cell = h("td", { colspan: "9" }, "Loading…");
    tr.after(h("tr", { id, className: "expanded" }, cell));
    button.setAttribute("aria-expanded", "true");
    button.setAttribute("aria-controls", id);
    try {
      cell.replaceChildren(inspect(await api("GET", `/dead/${record.id}`)));
    } catch (err) {
      cell.replaceChildren(errorBox(err));
    }
  }

  function row(d) {
    const inspectButton = h("button", { type: "button", "aria-expanded": "false" }, "Inspect");
    const tr = h("tr", { "data-id": String(d.id) },
      h("td", {}, h("input", { type: "checkbox", value: String(d.id),
        "aria-label": `Select dead letter ${d.id}`, onchange: refreshButtons })),
      h("td", {}, when(d.dead_at)),
      h("td", {}, d.topic),
      h("td", {}, h("code", {}, d.subscriber_id || "—")),
      h("td", {}, String(d.attempts)),
      h("td", {}, d.last_status === null ? "—" : String(d.last_status)),
      h("td", { className: "wrap" }, d.last_error || ""),
      h("td", {}, d.replayed_at ? when(d.replayed_at) : "no"),
      h("td", { className: "row-actions" }, inspectButton,
        h("button", { type: "button", onclick: () => replay([d.id]) }, "Replay"),
        h("button", { type: "button", className: "danger", onclick: () => purge([d.id]) },
          "Purge")));
    inspectButton.addEventListener("click", () => toggleInspect(d, inspectButton, tr));
    return tr;
  }

  async function load(before = null) {
    const where = { subscriber_id: subscriber.value, topic: topic.value };
    try {
      const page = await api("GET", `/dead?${pageQuery(where, before)}`);
      cursor = page.next_cursor;
      showPage({ table, more, none }, page.dead_letters.map(row), cursor, before === null, () =>
        (where.subscriber_id || where.topic) ? empty("No dead letters match these filters.")
          : empty("No dead letters: every delivery so far succeeded or is still being retried."));
    } catch (err) {
      problem.replaceChildren(errorBox(err, "Could not load dead letters: "));
    }
    refreshButtons();
  }

  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  subscriber.addEventListener("input", refreshButtons);
  topic.addEventListener("input", refreshButtons);
  replaySelected.addEventListener("click", () => replay(selected()));
  purgeSelected.addEventListener("click", () => purge(selected()));
  replayAll.addEventListener("click", () => act("Replay", async () => {
    const where = {};
    if (subscriber.value) where.subscriber_id = subscriber.value;
    if (topic.value) where.topic = topic.value;
    const answer = await api("POST", "/dead/replay", where);
    return `Replayed ${answer.replayed} dead letter(s) not replayed before.`;
  }));
  load();
}
