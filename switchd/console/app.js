// The switchd console: sign-in, hash routing between the views, sign-out.

import { ApiError, authMessage, onAuthLost, request, token } from "./api.js";
import { deadView } from "./dead.js";
import { errorBox, field, h } from "./dom.js";
import { eventsView } from "./events.js";
import { overviewView } from "./overview.js";
import { subscribersView } from "./subscribers.js";

const VIEWS = {
  overview: overviewView,
  subscribers: subscribersView,
  events: eventsView,
  dead: deadView,
};
const main = document.getElementById("main");
let stopView = null;

function leaveView() {
  if (stopView) stopView();
  stopView = null;
  document.querySelectorAll("dialog").forEach((dialog) => dialog.remove());
}

function signIn(message = "") {
  leaveView();
  document.body.classList.add("signed-out");
  const input = h("input", { id: "token", type: "password", autocomplete: "off",
    spellcheck: "false", required: true, "aria-describedby": "token-hint" });
  const problem = h("div", {}, message && h("div", { className: "error", role: "alert" }, message));
  const button = h("button", { type: "submit", className: "primary" }, "Sign in");
  const form = h("form", { className: "signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title", tabindex: "-1" }, "Sign in to switchd"),
    field("Admin token", input),
    h("p", { className: "hint", id: "token-hint" }, "Mint one on the server with ",
      h("code", {}, "switchd token --admin --author <your name>"),
      " (it signs with the server's SWITCH_ADMIN_JWT_SECRET; publisher tokens never sign "
      + "in). The token stays in this tab's session storage until you sign out or close "
      + "the tab."),
    problem,
    button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const candidate = input.value.trim();
    try {
      await request("GET", "/subscribers", undefined, candidate);
    } catch (err) {
      const text = err instanceof ApiError && (err.status === 401 || err.status === 403)
        ? authMessage(err) : null;
      problem.replaceChildren(text ? h("div", { className: "error", role: "alert" }, text)
        : errorBox(err, "Cannot sign in: "));
      input.focus();
      return;
    }
    token.set(candidate);
    if (!location.hash || location.hash === "#/") location.hash = "#/overview";
    route();
  });
  main.replaceChildren(form);
  input.focus();
  showIfAdminIsOff(problem, input, button);
}

/** Say so on the sign-in form, and disable it, when the server accepts no admin token. */
async function showIfAdminIsOff(problem, input, button) {
  let auth;
  try {
    auth = await request("GET", "/auth", undefined, "");
  } catch {
    return; // unreachable or older server: signing in will say what is wrong
  }
  if (auth.admin_configured) return;
  problem.replaceChildren(h("div", { className: "error", role: "alert" },
    `Admin access is not configured: ${auth.message}.`));
  input.disabled = true;
  button.disabled = true;
}

/** A URI-decoded part of the hash, or the part itself when it is not valid %-encoding. */
function decoded(part) {
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}

/** Show the view the hash names: #/<view>[/<argument>…] (e.g. #/events/<id>). */
function route() {
  if (!token.get()) {
    signIn();
    return;
  }
  leaveView();
  document.body.classList.remove("signed-out");
  const [name, ...rest] = location.hash.replace(/^#\/?/, "").split("?")[0].split("/");
  const view = VIEWS[name] ? name : "overview";
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${document.querySelector(`#nav a[data-view=${view}]`).textContent} · switchd`;
  main.replaceChildren();
  stopView = VIEWS[view](main, rest.filter(Boolean).map(decoded)) || null;
  main.querySelector("h1")?.focus();
}

onAuthLost((message) => {
  token.clear();
  signIn(`Signed out: ${message}`);
});
document.getElementById("sign-out").addEventListener("click", () => {
  token.clear();
  signIn("Signed out. The token was removed from this tab.");
});
window.addEventListener("hashchange", route);
route();
