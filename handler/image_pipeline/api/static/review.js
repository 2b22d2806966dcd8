// The review queue (images:admin): held cards with a short-lived preview, the check's labels and
// scores, and Approve / Reject (POST /images/{id}/review).
import { apiFetch, initAccess } from "./auth.js";

const list = document.getElementById("cards");
const more = document.getElementById("more");
const summary = document.getElementById("summary");
let cursor = null;
let shown = 0;

const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.filter(Boolean));
  return node;
};

const REASONS = { flagged: "flagged by the content check", moderation_unavailable: "the content check could not run" };

export function describeScores(labels, scores) {
  const entries = Object.entries(scores || {}).sort((a, b) => b[1] - a[1]);
  return entries.map(([name, score]) => `${name} ${(score * 100).toFixed(1)}%${(labels || []).includes(name) ? " (flagged)" : ""}`).join(", ");
}

function heldCard(image) {
  const id = `held-${image.id}`;
  const status = el("p", { class: "status", role: "status", text: `Held: ${REASONS[image.reason] || image.reason}` });
  const preview = el("img", { class: "preview loaded", src: image.preview_url, alt: `Held upload ${image.name}`, decoding: "async" });
  const approve = el("button", { type: "button", class: "approve", text: "Approve" });
  const reject = el("button", { type: "button", class: "reject", text: "Reject" });
  const node = el("li", { class: "card", id, "data-state": "held", "data-image-id": image.id, "aria-labelledby": `${id}-name` },
    el("div", { class: "frame held" }, preview),
    el("div", { class: "body" },
      el("h2", { id: `${id}-name`, class: "card-name", text: image.name, title: image.name }),
      status,
      el("p", { class: "scores", text: describeScores(image.labels, image.scores) || "no scores" }),
      el("div", { class: "actions" }, approve, reject)));

  const decide = async (decision) => {
    approve.disabled = reject.disabled = true;
    status.textContent = decision === "approve" ? "Approving…" : "Rejecting…";
    let response;
    try {
      response = await apiFetch(new URL(image.review_url, document.baseURI), {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json" },
        body: JSON.stringify({ decision }),
      });
    } catch (error) {
      response = { ok: false, status: 0, json: async () => ({ detail: error.message }) };
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      status.textContent = `Could not ${decision}: ${body.detail || `HTTP ${response.status}`}`;
      approve.disabled = reject.disabled = false;
      return;
    }
    node.dataset.state = body.status;
    status.textContent = body.status === "processed" ? "Approved: published" : "Rejected: the upload is deleted";
    preview.remove();
  };
  approve.addEventListener("click", () => decide("approve"));
  reject.addEventListener("click", () => decide("reject"));
  return node;
}

async function load() {
  more.disabled = true;
  summary.textContent = "Loading…";
  const url = new URL("images", document.baseURI);
  url.searchParams.set("status", "held");
  if (cursor) url.searchParams.set("cursor", cursor);
  const limit = new URLSearchParams(location.search).get("limit");
  if (limit) url.searchParams.set("limit", limit);
  let page;
  try {
    const response = await apiFetch(url, { headers: { accept: "application/json" } });
    if (response.status === 401) throw new Error("an access token is needed (see above)");
    if (response.status === 403) throw new Error("reviewing needs the images:admin scope");
    if (!response.ok) throw new Error((await response.json().catch(() => ({}))).detail || `HTTP ${response.status}`);
    page = await response.json();
  } catch (error) {
    summary.textContent = `Could not load the review queue: ${error.message}`;
    more.disabled = false;
    return;
  }
  for (const image of page.items) list.append(heldCard(image));
  shown += page.items.length;
  cursor = page.next_cursor || null;
  more.hidden = !cursor;
  more.disabled = false;
  summary.textContent = shown
    ? `${shown} held image${shown === 1 ? "" : "s"}${cursor ? "; more available" : ""}`
    : "Nothing is waiting for review.";
}

more.addEventListener("click", load);
initAccess(() => {
  list.replaceChildren();
  cursor = null;
  shown = 0;
  load();
});
load();
