// The gallery: a contact sheet of every processed image, newest first, a page at a time.
import { apiFetch, initAccess } from "./auth.js";
import { createCard } from "./cards.js";

const list = document.getElementById("cards");
const more = document.getElementById("more");
const summary = document.getElementById("summary");

let cursor = null;
let shown = 0;

const leaf = (key) => (key || "").split("/").pop();

async function load() {
  more.disabled = true;
  summary.textContent = "Loading…";
  const url = new URL("api/gallery", document.baseURI);
  if (cursor) url.searchParams.set("cursor", cursor);
  const limit = new URLSearchParams(location.search).get("limit");
  if (limit) url.searchParams.set("limit", limit);
  let page;
  try {
    const response = await apiFetch(url, { headers: { accept: "application/json" } });
    if (response.status === 401) throw new Error("an access token is needed (see above)");
    if (!response.ok) throw new Error((await response.json().catch(() => ({}))).detail || `HTTP ${response.status}`);
    page = await response.json();
  } catch (error) {
    summary.textContent = `Could not load the gallery: ${error.message}`;
    more.disabled = false;
    return;
  }
  const firstNew = list.children.length;
  for (const image of page.items) {
    const card = createCard(image.name || leaf(image.source?.key) || image.id, { headingLevel: "h2" });
    card.node.dataset.imageId = image.id || image.key;
    card.node.tabIndex = -1;
    list.append(card.node);
    if (image.status === "failed") card.rejected(image.error_code);
    else card.processed(image);
  }
  shown += page.items.length;
  cursor = page.next_cursor || null;
  more.hidden = !cursor;
  more.disabled = false;
  summary.textContent = shown
    ? `${shown} image${shown === 1 ? "" : "s"} shown${cursor ? "; more available" : ""}`
    : "Nothing processed yet: upload some images first.";
  // Keyboard users who asked for more land on the first new card, not back at the top.
  if (firstNew > 0 && list.children[firstNew]) list.children[firstNew].focus();
}

more.addEventListener("click", load);
// A token given or forgotten: start the list again, as that caller.
initAccess(() => {
  list.replaceChildren();
  cursor = null;
  shown = 0;
  load();
});
load();
