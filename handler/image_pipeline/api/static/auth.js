// The bearer token the pages send, when one is given: `?token=` in the address (taken out of it at
// once, so it stays out of history, bookmarks and screenshots) or the access-token field. Kept in
// sessionStorage: this tab only, gone when it closes. On an open API there is no token and the
// field stays hidden until an answer says one is needed (401).
const KEY = "image-pipeline-token";

const section = document.getElementById("access");
const form = document.getElementById("token-form");
const field = document.getElementById("token");
const forget = document.getElementById("token-forget");
const message = document.getElementById("access-message");

let changed = () => {};

function readStored() {
  try {
    return sessionStorage.getItem(KEY) || "";
  } catch {
    return ""; // storage switched off: the token lives as long as the page
  }
}

let token = readStored();

function store(value) {
  token = value.trim();
  try {
    if (token) sessionStorage.setItem(KEY, token);
    else sessionStorage.removeItem(KEY);
  } catch {
    /* kept in memory only */
  }
}

function render(...parts) {
  if (parts.length) message.replaceChildren(...parts);
  section.hidden = !token && !message.textContent;
  section.dataset.state = token ? "token" : "none";
  forget.hidden = !token;
  field.placeholder = token ? "a token is in use; paste another to replace it" : "paste a bearer token (JWT)";
}

/** Headers with `Authorization: Bearer …` added when there is a token. */
export function withToken(headers = {}) {
  return token ? { ...headers, authorization: `Bearer ${token}` } : headers;
}

/** `fetch` with the token; a 401 opens the token field with a message saying what to do. */
export async function apiFetch(url, options = {}) {
  const response = await fetch(url, { ...options, headers: withToken(options.headers) });
  if (response.status === 401) askForToken(response);
  return response;
}

export function askForToken() {
  const code = document.createElement("code");
  code.textContent = "?token=…";
  if (token) render("The API did not accept this token (expired, or not for this API): paste a new one.");
  else render("This API needs an access token: paste one below, or open this page with ", code, " in its address.");
  if (document.activeElement === document.body) field.focus();
}

/** Wire the token field; `onChange` runs after a token is given or forgotten. */
export function initAccess(onChange = () => {}) {
  changed = onChange;
  const address = new URL(location.href);
  if (address.searchParams.has("token")) {
    store(address.searchParams.get("token") || "");
    address.searchParams.delete("token");
    history.replaceState(history.state, "", address.pathname + address.search + address.hash);
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!field.value.trim()) return;
    store(field.value);
    field.value = "";
    render("Token saved for this tab.");
    changed();
  });
  forget.addEventListener("click", () => {
    store("");
    render("Token forgotten.");
    changed();
  });
  render();
}
