// Small DOM helpers. Text always goes in through textContent: no HTML is ever parsed.

/** An element: `props` are attributes ("on…" ones are listeners), then the children. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key === "className" ? "class" : key, value === true ? "" : value);
  }
  const kept = children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false);
  el.append(...kept);
  return el;
}

const pad = (n) => String(n).padStart(2, "0");

/** Local date and time of a Unix timestamp, e.g. "2024-05-01 14:03:09". */
export function when(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const d = new Date(seconds * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `
    + `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** Hours and minutes of a Unix timestamp. */
export function clock(seconds) {
  const d = new Date(seconds * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** A duration in seconds for people: "42 s", "3 min", "5 h". */
export function age(seconds) {
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

/** Bytes for people. */
export function size(bytes) {
  return bytes < 1024 ? `${bytes} B` : `${(bytes / 1024).toFixed(1)} KiB`;
}

/** A state badge: delivered, failed, dead, pending, skipped, unmatched, enabled… */
export function badge(state, label = state) {
  return h("span", { className: `badge badge-${state}` }, label);
}

/** An error box showing the API's message. */
export function errorBox(err, what = "") {
  const code = err.code ? ` (${err.code})` : "";
  return h("div", { className: "error", role: "alert" }, `${what}${err.message}${code}`);
}

/** An empty-state paragraph; `parts` may mix text and elements (e.g. code). */
export function empty(...parts) {
  return h("p", { className: "empty" }, ...parts);
}

/** A modal confirmation; resolves true when confirmed. Escape or Cancel resolves false. */
export function confirmDialog(title, text, action) {
  return new Promise((resolve) => {
    const cancel = h("button", { type: "button", value: "cancel" }, "Cancel");
    const ok = h("button", { type: "button", value: "ok", className: "danger" }, action);
    const dialog = h("dialog", { className: "confirm", "aria-labelledby": "confirm-title" },
      h("h2", { id: "confirm-title" }, title), h("p", {}, text),
      h("div", { className: "actions" }, cancel, ok));
    const close = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    cancel.addEventListener("click", () => close(false));
    ok.addEventListener("click", () => close(true));
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      close(false);
    });
    document.body.append(dialog);
    dialog.showModal();
    cancel.focus();
  });
}

/** A status line for notices (announced to screen readers). */
export function notice() {
  const el = h("p", { className: "notice", role: "status", hidden: true });
  el.show = (text) => {
    el.textContent = text;
    el.hidden = !text;
  };
  return el;
}

/** `fn` delayed until `ms` have passed without another call. */
export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/** A labelled form field: a label above an input, select or textarea. */
export function field(label, control, hint = null) {
  return h("div", { className: "field" }, h("label", { for: control.id }, label), control,
    hint && h("p", { className: "hint" }, hint));
}

/** A "Load more" button that calls `load` and hides itself when there is nothing more. */
export function loadMore(load) {
  const button = h("button", { type: "button", className: "more", hidden: true }, "Load more");
  button.addEventListener("click", load);
  return button;
}

/** The query of one page of a newest-first listing: the non-empty `filters`, the cursor. */
export function pageQuery(filters, before, limit = 50) {
  const query = new URLSearchParams({ limit: String(limit) });
  for (const [name, value] of Object.entries(filters)) if (value) query.set(name, value);
  if (before !== null) query.set("cursor", String(before));
  return query;
}

/** Show a page of `rows` in `table` (appended unless `first`), the Load more button when
 * there is a `next` cursor, and `emptyState()` in `none` when nothing is shown. */
export function showPage({ table, more, none }, rows, next, first, emptyState) {
  const body = table.tBodies[0];
  if (first) body.replaceChildren();
  body.append(...rows);
  more.hidden = next === null;
  table.hidden = body.children.length === 0;
  none.replaceChildren(body.children.length ? "" : emptyState());
}
