// Endpoint isolation's state (GET /endpoints), for the Overview and Subscribers views.

import { age, badge, empty, h, when } from "./dom.js";

const CIRCUIT_LABELS = { closed: "closed", open: "open", half_open: "probing" };
const DEFAULT_PORTS = { "http:": "80", "https:": "443" };

/** The origin switchd files a target URL under: "scheme://host:port" (port always given). */
export function originOf(url) {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.hostname}:${u.port || DEFAULT_PORTS[u.protocol]}`;
  } catch {
    return null;
  }
}

/** The circuit's badge: closed, open or probing (half-open). */
export function circuitBadge(endpoint) {
  return badge(`circuit-${endpoint.circuit}`, CIRCUIT_LABELS[endpoint.circuit]);
}

/** A short line on an endpoint's load: "limit 3/10 · 2 in flight · 5 set aside". */
export function loadLine(endpoint) {
  const parts = [`limit ${endpoint.limit}/${endpoint.ceiling}`];
  if (endpoint.in_flight) parts.push(`${endpoint.in_flight} in flight`);
  if (endpoint.set_aside) parts.push(`${endpoint.set_aside} set aside`);
  if (endpoint.paused_until) parts.push(`paused until ${when(endpoint.paused_until)}`);
  return parts.join(" · ");
}

/** The table of endpoints, the worst first (as the API orders them). */
export function endpointsTable(endpoints, now) {
  if (!endpoints.length) {
    return empty("No endpoint was delivered to lately (endpoints idle and healthy for 10 "
      + "minutes are forgotten).");
  }
  const rows = endpoints.map((e) => h("tr", { "data-origin": e.origin },
    h("td", {}, h("span", { className: "url" }, e.origin)),
    h("td", {}, circuitBadge(e), h("span", { className: "sub" },
      e.circuit === "closed" ? "" : `since ${age(Math.max(0, now - e.circuit_since))}`
        + (e.next_probe_at ? `; probe at ${when(e.next_probe_at)}` : ""))),
    h("td", {}, `${e.limit}/${e.ceiling}`),
    h("td", {}, String(e.in_flight)),
    h("td", {}, String(e.set_aside)),
    h("td", { className: "wrap" }, e.last_error || "—",
      e.last_error_at && h("span", { className: "sub" }, when(e.last_error_at)))));
  return h("table", { className: "endpoints" },
    h("caption", { className: "sr-only" }, "Endpoints"),
    h("thead", {}, h("tr", {}, ...["Origin", "Circuit", "Limit", "In flight", "Set aside",
      "Last error"].map((name) => h("th", { scope: "col" }, name)))),
    h("tbody", {}, rows));
}
