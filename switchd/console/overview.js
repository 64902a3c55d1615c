// Overview: published, delivered, failed and dead per minute, the queue's state, and the
// endpoints' (limits, circuit breakers, jobs set aside).

import { api } from "./api.js";
import { barChart } from "./chart.js";
import { age, errorBox, h } from "./dom.js";
import { endpointsTable } from "./endpoints.js";

const MINUTES = 60;
const REFRESH_MS = 5000;
const SERIES = [
  ["published", "Published"],
  ["delivered", "Delivered"],
  ["failed", "Failed attempts"],
  ["dead", "Dead letters"],
];

function card(label, value, detail = "", state = "") {
  return h("div", { className: `card ${state}` },
    h("span", { className: "card-label" }, label),
    h("strong", { className: "card-value" }, value),
    detail && h("span", { className: "card-detail" }, detail));
}

function queueCards(data) {
  const queue = data.queue;
  const oldest = queue.oldest_age_seconds;
  const cards = [
    card("Readiness", data.ready ? "Ready" : "Not ready",
      data.ready ? "database and queue answer" : data.reasons.join("; "),
      data.ready ? "good" : "bad"),
    card("Queue", queue.backend === "faktory" ? "Faktory" : "Local (SQLite)",
      queue.backend === "faktory" ? queue.address : "embedded queue"),
    card(queue.backend === "faktory" ? "Spilled to local queue" : "Queue depth",
      String(queue.depth), "jobs waiting or in flight"),
    card("Oldest waiting job", oldest === null ? "none" : age(oldest),
      oldest === null ? "the queue is empty" : "since its event arrived",
      oldest !== null && oldest > 300 ? "warn" : ""),
  ];
  if (queue.backend === "faktory") {
    const up = queue.faktory === "up";
    cards.splice(2, 0, card("Faktory", up ? "Up" : "Down",
      up ? `worker ${queue.worker_state}` : queue.last_error || "unreachable",
      up ? "good" : "bad"));
  }
  return cards;
}

function endpointCard(isolation) {
  const open = isolation.endpoints.filter((e) => e.circuit !== "closed").length;
  const detail = `${isolation.set_aside} job(s) set aside (at most ${isolation.set_aside_max})`;
  return card("Open circuits", String(open), detail, open ? "bad" : "good");
}

/** Render the Overview into `main`; returns the function that stops its refresh. */
export function overviewView(main) {
  const cards = h("section", { className: "cards", "aria-label": "Queue state" });
  const charts = h("section", { className: "charts", "aria-label": "Activity per minute" });
  const endpoints = h("div", {});
  const problem = h("div", {});
  const updated = h("p", { className: "hint" }, "Loading…");
  main.append(h("h1", { tabindex: "-1" }, "Overview"), problem, cards, charts,
    h("section", { className: "endpoints-section", "aria-labelledby": "endpoints-title" },
      h("h2", { id: "endpoints-title" }, "Endpoints"), endpoints), updated);

  async function refresh() {
    try {
      const [data, isolation] = await Promise.all([
        api("GET", `/overview?minutes=${MINUTES}`), api("GET", "/endpoints")]);
      problem.replaceChildren();
      cards.replaceChildren(...queueCards(data), endpointCard(isolation));
      endpoints.replaceChildren(endpointsTable(isolation.endpoints, data.now));
      charts.replaceChildren(...SERIES.map(([name, title]) => barChart({
        name, title, values: data.series[name], start: data.start, step: data.bucket_seconds,
      })));
      updated.textContent = `Updated ${new Date().toLocaleTimeString()}; refreshes every `
        + `${REFRESH_MS / 1000} s. Counts come from the delivery log.`;
    } catch (err) {
      problem.replaceChildren(errorBox(err, "Could not load the overview: "));
    }
  }
  refresh();
  const timer = setInterval(refresh, REFRESH_MS);
  return () => clearInterval(timer);
}
