// The bearer token the pages send, when one is given: `?token=` in the address (taken out of it at
// once, so it stays out of history, bookmarks and screenshots) or the access-token field. Kept in
// sessionStorage: this tab only, gone when it closes. On an open API there is no token and the
// field stays hidden until an answer says one is needed (401).
const KEY = "image-pipeline-token";

// The token field, the same on every page: put under the page's heading by `initAccess`.
const section = document.createElement("section");
section.id = "access";
section.className = "access";
section.hidden = true;
section.setAttribute("aria-labelledby", "access-title");
section.innerHTML = `
  <h2 id="access-title" class="visually-hidden">Access token</h2>
  <p id="access-message" class="access-message" role="alert"></p>
  <form id="token-form" class="token-form">
    <label for="token">Access token</label>
    <input id="token" name="token" type="password" autocomplete="off" spellcheck="false">
    <button type="submit">Use token</button>
    <button type="button" id="token-forget" hidden>Forget token</button>
  </form>`;
const form = section.querySelector("#token-form");
const field = section.querySelector("#token");
const forget = section.querySelector("#token-forget");
const message = section.querySelector("#access-message");

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

/** Put the token field after the page's <h1> and wire it; `onChange` runs after a token is given
 * or forgotten. */
export function initAccess(onChange = () => {}) {
  changed = onChange;
  const heading = document.querySelector("main h1");
  const lead = heading.nextElementSibling?.classList.contains("lead") ? heading.nextElementSibling : heading;
  lead.after(section);
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
