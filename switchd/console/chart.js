// Per-minute bar charts drawn as SVG (no library; styles come from style.css classes).

import { clock, h } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";
const WIDTH = 600;
const HEIGHT = 150;
const LEFT = 34;
const BOTTOM = 20;
const TOP = 8;

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, value);
  el.append(...children);
  return el;
}

/** A nice axis maximum at or above `value`: 1, 2, 5, 10, 20, 50… */
function ceiling(value) {
  let step = 1;
  while (step * 10 <= value) step *= 10;
  return [1, 2, 5, 10].map((m) => m * step).find((v) => v >= value) || 1;
}

/** A chart of `values` (one per `step` seconds from `start`) titled `title`. */
export function barChart({ name, title, values, start, step }) {
  const total = values.reduce((a, b) => a + b, 0);
  const top = ceiling(Math.max(...values, 1));
  const plotW = WIDTH - LEFT;
  const plotH = HEIGHT - BOTTOM - TOP;
  const slot = plotW / values.length;
  const y = (v) => TOP + plotH - (v / top) * plotH;
  const grid = [0, top / 2, top].map((v) => [
    svg("line", { x1: LEFT, x2: WIDTH, y1: y(v), y2: y(v), class: "grid" }),
    svg("text", { x: LEFT - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" },
      String(Number.isInteger(v) ? v : v.toFixed(1))),
  ]).flat();
  const bars = values.map((v, i) => {
    const at = start + i * step;
    const height = Math.max((v / top) * plotH, v > 0 ? 1.5 : 0);
    return svg("rect", {
      x: LEFT + i * slot + slot * 0.12, width: slot * 0.76, y: TOP + plotH - height, height,
      class: "bar",
    }, svg("title", {}, `${clock(at)}: ${v} ${title.toLowerCase()}`));
  });
  const ticks = [0, Math.floor(values.length / 2), values.length - 1].map((i) =>
    svg("text", {
      x: LEFT + i * slot + slot / 2, y: HEIGHT - 4, class: "axis",
      "text-anchor": i === 0 ? "start" : i === values.length - 1 ? "end" : "middle",
    }, i === values.length - 1 ? "now" : clock(start + i * step)));
  const last = values[values.length - 1];
  const label = `${title} per minute over the last ${values.length} minutes: `
    + `${total} in all, ${last} this minute, peak ${Math.max(...values)}.`;
  return h("figure", { className: `chart chart-${name}` },
    h("figcaption", {},
      h("span", { className: "chart-title" }, title),
      h("strong", { className: "chart-total", "data-total": String(total) }, String(total)),
      h("span", { className: "chart-sub" }, `last ${values.length} min · ${last} this minute`)),
    svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": label },
      ...grid, ...bars, ...ticks));
}
