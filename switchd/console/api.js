// Calls to the switchd API with the admin token kept in this tab's sessionStorage.

const TOKEN_KEY = "switchd.admin-token";

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

/** An API answer that is not 2xx, with switchd's JSON error code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let authLost = () => {};

/** Run `handler(message)` when the API refuses the stored token (401 or 403). */
export function onAuthLost(handler) {
  authLost = handler;
}

/** The API URL of `path` ("/events"), relative to the console so that a proxy prefix works. */
function url(path) {
  return new URL(".." + path, document.baseURI).href;
}

/** One request with `bearer` (none if empty); resolves to the JSON answer, or throws an
 * ApiError. */
export async function request(method, path, body, bearer = token.get()) {
  const headers = { Accept: "application/json" };
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url(path), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch (err) {
    throw new ApiError(0, "unreachable", `switchd did not answer (${err.message}).`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = data && data.error ? data.error : {};
    throw new ApiError(response.status, error.code || "http_error",
      error.message || `HTTP ${response.status}`);
  }
  return data;
}

/** `request` with the stored token; a 401/403 also signs out (see onAuthLost). */
export async function api(method, path, body) {
  try {
    return await request(method, path, body);
  } catch (err) {
    if (err.status === 401 || err.status === 403) authLost(authMessage(err));
    throw err;
  }
}

/** What to tell a person whose token switchd refused. */
export function authMessage(err) {
  if (err.code === "admin_not_configured") return `Admin access is not configured: ${err.message}.`;
  if (err.status === 403) {
    return `Not an admin token: ${err.message}. Mint one with switchd token --admin.`;
  }
  return `switchd refused the token: ${err.message}.`;
}
