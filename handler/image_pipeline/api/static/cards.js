// One image's card, shared by the upload page and the gallery: placeholder, preview, the variants'
// facts, the ready <picture> snippet with a copy button, or the rejection in words. A processed
// image shows its subject (the faces found, the focal point); a click on the picture sets the focal
// point by hand (PUT /images/{id}/focal) and the card's crops are shown again, made around it.
import { apiFetch, withToken } from "./auth.js";
import { isBlurhash, paint } from "./blurhash.js";

// Every error code of errors.py (and the table in docs/lifecycle.md), in words; tests/browser checks the list.
export const ERROR_WORDS = {
  empty_file: "empty file",
  unsupported_type: "not an image (or a type that is not accepted)",
  too_large: "too large",
  too_many_pixels: "too many pixels",
  too_many_frames: "too many animation frames",
  corrupt_image: "damaged or truncated image",
  invalid_key: "file name not accepted",
  name_conflict: "another upload already uses this name",
  storage_error: "storage failed; try again",
  storage_denied: "storage refused access (a permissions or bucket problem, not your image)",
  out_of_time: "ran out of time; try again",
  publish_error: "processed, but the completion event was not sent yet",
  busy: "the server is busy with other images; try again in a moment",
  moderated: "removed by a moderator",
  moderation_unavailable: "the content check could not run; held for a moderator",
};

const FORMAT_NAMES = { "image/avif": "AVIF", "image/webp": "WebP", "image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF" };
// A browser that shows a format of rank r shows every format of a lower rank too.
const FORMAT_RANK = { "image/avif": 3, "image/webp": 2, "image/jpeg": 1, "image/png": 1, "image/gif": 1 };

export const errorWords = (code) => ERROR_WORDS[code] || (code ? code.replaceAll("_", " ") : "rejected");

export function formatBytes(bytes) {
  if (bytes < 1000) return `${bytes} B`;
  if (bytes < 1000 * 1000) return `${(bytes / 1000).toFixed(bytes < 10000 ? 1 : 0)} kB`;
  return `${(bytes / 1e6).toFixed(bytes < 1e7 ? 2 : 1)} MB`;
}

export function saving(bytes, original) {
  if (!original) return "";
  const exact = (bytes / original - 1) * 100;
  // −99.9% rather than a rounded −100% (which would mean nothing is left).
  const change = exact > -99.5 ? Math.round(exact) : Math.max(-99.9, Math.round(exact * 10) / 10);
  return change < 0 ? `−${-change}%` : change > 0 ? `+${change}%` : "0%";
}

/** "IMG_2041-beach.jpg" → "IMG 2041 beach": alt text when nothing better is known. */
export function altFromName(name) {
  const stem = (name || "").replace(/\.[A-Za-z0-9]{1,5}$/, "").replace(/[-_.+]+/g, " ").trim();
  return stem || "uploaded image";
}

const formatName = (v) => FORMAT_NAMES[v.content_type] || (v.content_type || "").replace("image/", "").toUpperCase();
const rank = (v) => FORMAT_RANK[v.content_type] || 1;
const absolute = (url) => new URL(url, document.baseURI).href;
const escapeAttr = (text) =>
  String(text).replaceAll("&", "&amp;").replaceAll('"', "&quot;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");

/** Variants with the source's shape (a `cover` crop such as a square thumbnail cannot share a srcset). */
function sameShape(image) {
  const { width, height } = image.source || {};
  const variants = image.variants || [];
  const kept = width && height ? variants.filter((v) => Math.abs(v.height - (v.width * height) / width) <= 1) : [];
  if (kept.length) return kept;
  const largest = [...variants].sort((a, b) => b.width - a.width)[0];
  return largest ? [largest] : [];
}

/** For each width, the best variant a browser showing formats up to `maxRank` can use. */
function candidates(variants, maxRank) {
  const byWidth = new Map();
  for (const v of variants) {
    if (rank(v) > maxRank) continue;
    const best = byWidth.get(v.width);
    if (!best || rank(v) > rank(best) || (rank(v) === rank(best) && v.bytes < best.bytes)) byWidth.set(v.width, v);
  }
  return [...byWidth.values()].sort((a, b) => a.width - b.width);
}

/** The responsive image plan: <source>s for modern formats, then the fallback <img>. */
export function picturePlan(image) {
  const shaped = sameShape(image);
  const ranks = [...new Set(shaped.map(rank))].sort((a, b) => b - a);
  const base = ranks[ranks.length - 1] || 1;
  const sources = [];
  for (const r of ranks.filter((r) => r > base)) {
    const list = candidates(shaped, r);
    const type = Object.keys(FORMAT_RANK).find((t) => FORMAT_RANK[t] === r && shaped.some((v) => v.content_type === t));
    sources.push({ type, list });
  }
  const fallback = candidates(shaped, base);
  const largest = [...shaped].sort((a, b) => b.width - a.width)[0];
  return { sources, fallback, largest };
}

const srcset = (list, field = "url") => list.map((v) => `${absolute(v[field] || v.url)} ${v.width}w`).join(", ");

/** The width-URL ladder (sizes made on first request), when the API offers one: AVIF and WebP
 * <source>s and a JPEG/PNG fallback, every allowlisted width up to the image's own. With `ratio`
 * (`16x9`, one of `ratio_urls.ratios`): that ratio's ladder, the largest window of that shape
 * around the image's subject, every allowlisted width up to the window's own. */
export function ladderPlan(image, ratio = "") {
  const ladder = ratio ? image.ratio_urls : image.width_urls;
  let { width, height } = image.source || {};
  if (ratio) {
    if (!ladder?.ratios?.includes(ratio) || !ladder.windows?.[ratio]) return null;
    [width, height] = ladder.windows[ratio];
  }
  if (!ladder || !ladder.widths?.length || !width || !height) return null;
  const url = (w, ext) => ladder.template.replace("{width}", String(w)).replace("{ratio}", ratio).replace("{ext}", ext);
  const widths = ratio ? ladder.widths.filter((w) => w <= width) : ladder.widths;
  if (!widths.length) widths.push(ladder.widths[0]);
  const list = (ext) => widths.map((w) => ({ url: url(w, ext), width: w }));
  const top = widths[widths.length - 1];
  const largest = { width: top, height: Math.round((top * height) / width) };
  const fallback = list(ladder.fallback);
  const src = fallback.filter((v) => v.width <= 1200).pop() || fallback[0];
  return {
    sources: [{ type: "image/avif", list: list("avif") }, { type: "image/webp", list: list("webp") }],
    fallback,
    src,
    largest,
  };
}

/** A ready-to-paste <picture> element for `image` (null when it has no variants): the width-URL
 * ladder where the API offers one, otherwise the variants made on upload; with `ratio`, that
 * ratio's ladder (null when the API offers none). */
export function pictureSnippet(image, alt, ratio = "") {
  const plan = ratio ? ladderPlan(image, ratio) : ladderPlan(image) || picturePlan(image);
  if (!plan) return null;
  const { sources, fallback, largest } = plan;
  if (!largest) return null;
  const sizes = `(max-width: ${largest.width}px) 100vw, ${largest.width}px`;
  const colour = image.placeholder?.dominant_color;
  const lines = ["<picture>"];
  for (const s of sources) {
    lines.push(`  <source type="${s.type}" srcset="${escapeAttr(srcset(s.list))}" sizes="${sizes}">`);
  }
  const src = plan.src || fallback[fallback.length - 1];
  lines.push(
    `  <img src="${escapeAttr(absolute(src.url))}" srcset="${escapeAttr(srcset(fallback))}" sizes="${sizes}"` +
      ` width="${largest.width}" height="${largest.height}" alt="${escapeAttr(alt)}" loading="lazy" decoding="async"` +
      (colour ? ` style="background-color: ${escapeAttr(colour)}"` : "") + ">",
  );
  lines.push("</picture>");
  return lines.join("\n");
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role" || key === "for") node.setAttribute(key, value);
    else node[key] = value;
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = el("textarea", { value: text });
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    const done = document.execCommand("copy");
    area.remove();
    return done;
  }
}

let cardCount = 0;

/** A card for one image. `name` is the file name; returns an object with methods for each state. */
export function createCard(name, { headingLevel = "h2" } = {}) {
  const id = `card-${++cardCount}`;
  const alt = altFromName(name);
  const heading = el(headingLevel, { id: `${id}-name`, class: "card-name", text: name || "(no name)", title: name });
  const canvas = el("canvas", { class: "placeholder", "aria-hidden": "true" });
  const frame = el("div", { class: "frame" }, canvas);
  const progress = el("progress", { max: 100, value: 0, hidden: true, "aria-label": `Upload of ${name}` });
  const status = el("p", { class: "status", role: "status", text: "" });
  const details = el("div", { class: "details" });
  const node = el("li", { class: "card", id, "aria-labelledby": `${id}-name`, "data-state": "new" },
    frame, el("div", { class: "body" }, heading, progress, status, details));

  const setState = (state, message) => {
    node.dataset.state = state;
    if (message !== undefined) status.textContent = message;
  };

  const setShape = (width, height) => {
    if (width && height) frame.style.aspectRatio = `${width} / ${height}`;
  };

  const subject = subjectLayer(frame, (point) => card.setFocal(point));

  const card = {
    node,
    image: null,
    alt,
    setShape,
    progress(loaded, total) {
      progress.hidden = false;
      progress.value = total ? Math.round((loaded / total) * 100) : 0;
      progress.setAttribute("aria-valuetext", `${progress.value}% uploaded`);
    },
    queued() {
      setState("queued", "Waiting to upload…");
    },
    uploading() {
      setState("uploading", "Uploading…");
    },
    pending() {
      progress.value = 100;
      progress.hidden = true;
      setState("pending", "Uploaded; processing…");
    },
    slow() {
      setState("pending", "Still processing…");
    },
    /** Paint a BlurHash at the image's shape: the local file's (`from` "local") until the
     * manifest's arrives; a late local one never replaces the manifest's. */
    placeholder(hash, width, height, colour, from = "manifest") {
      if (from === "local") node.dataset.localBlurhash = hash;
      if (from === "local" && node.dataset.placeholderFrom === "manifest") return;
      setShape(width, height);
      if (colour) frame.style.backgroundColor = colour;
      if (isBlurhash(hash)) {
        paint(canvas, hash, width, height);
        node.dataset.blurhash = hash;
        node.dataset.placeholderFrom = from;
      }
    },
    /** Show a processed image: placeholder, preview, its subject, facts, crops and snippet.
     * `fresh`: the crops were made again (a new focal point): load them past the browser's cache. */
    processed(image, { fresh = false } = {}) {
      progress.hidden = true;
      const source = image.source || {};
      card.image = image;
      card.placeholder(image.placeholder?.blurhash, source.width, source.height, image.placeholder?.dominant_color);
      const { sources, fallback } = picturePlan(image);
      const best = sources.length ? sources[0].list : fallback;
      if (best.length && !frame.querySelector(".preview")) {
        // `src`, when given, is a direct URL for showing the image now; `url` is the stable one for the snippet.
        const last = best[best.length - 1];
        const img = el("img", { class: "preview", alt, decoding: "async", srcset: srcset(best, "src"), src: absolute(last.src || last.url),
          sizes: "(max-width: 700px) 100vw, 360px" });
        if (source.width && source.height) Object.assign(img, { width: source.width, height: source.height });
        img.addEventListener("load", () => { img.classList.add("loaded"); node.dataset.loaded = "true"; });
        frame.append(img);
      }
      subject.show(image);
      const ratio = details.querySelector(".ratio-select")?.value || "";
      details.replaceChildren(facts(image), subjectLine(image, card), crops(image, fresh), snippetBlock(image, alt, id, ratio, fresh));
      const count = (image.variants || []).length;
      setState("processed", `Ready: ${count} variant${count === 1 ? "" : "s"}`);
    },
    /** Set the focal point by hand (`point` {x, y}, 0–1) or forget it (null), then show the crops
     * made around it. Only the image's owner (or an admin) may: the API answers anyone else 404. */
    async setFocal(point) {
      const image = card.image;
      if (!image?.id) return;
      node.dataset.focal = "saving";
      status.textContent = point ? "Setting the focal point…" : "Back to the detected subject…";
      let response;
      try {
        response = await apiFetch(`images/${encodeURIComponent(image.id)}/focal`, {
          method: point ? "PUT" : "DELETE",
          headers: { accept: "application/json", ...(point ? { "content-type": "application/json" } : {}) },
          body: point ? JSON.stringify(point) : undefined,
        });
      } catch (error) {
        node.dataset.focal = "failed";
        status.textContent = `Focal point not set: ${error.message}`;
        return;
      }
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        node.dataset.focal = "failed";
        status.textContent = `Focal point not set: ${body.detail || response.status}`;
        return;
      }
      card.processed(body, { fresh: true });
      node.dataset.focal = body.focal_source || "";
      status.textContent = point ? "Focal point set: crops made around it" : "Crops back around the detected subject";
    },
    rejected(code, detail) {
      progress.hidden = true;
      node.dataset.error = code || "";
      frame.classList.add("failed");
      const words = errorWords(code);
      setState("failed", `Rejected: ${words}`);
      details.replaceChildren(el("p", { class: "error-detail" },
        code ? el("code", { text: code }) : null, detail ? ` ${detail}` : null));
    },
    failed(message) {
      progress.hidden = true;
      frame.classList.add("failed");
      setState("error", message);
    },
    /** Held by the content check (MODERATION): nothing is published until a moderator approves it. */
    held(code) {
      progress.hidden = true;
      frame.classList.add("held");
      node.dataset.error = code || "";
      setState("held", code ? `Held for review: ${errorWords(code)}` : "Held for review: a moderator looks at it before it is published");
    },
  };
  return card;
}

const clamp01 = (v) => Math.min(1, Math.max(0, v));
const round4 = (v) => Math.round(v * 10000) / 10000;
const percent = (v) => `${(v * 100).toFixed(2)}%`;

/** Over the preview: the faces found (boxes) and the focal point (a ring), placed on the picture
 * as it is shown (`cover` on the upload page, `contain` in the gallery). A click (or the arrow
 * keys, then Enter) on it sets the focal point. */
function subjectLayer(frame, onPick) {
  const layer = el("div", { class: "subject", role: "button", tabIndex: 0, hidden: true,
    "aria-label": "Focal point: click the picture where the subject is (or move it with the arrow keys, then press Enter)" });
  const marker = el("span", { class: "focal", "aria-hidden": "true" });
  frame.append(layer);
  let size = null;
  let pending = null;

  const place = () => {
    const preview = frame.querySelector(".preview");
    if (!size || !frame.clientWidth) return;
    const [w, h] = size;
    const fw = frame.clientWidth, fh = frame.clientHeight;
    const fit = preview ? getComputedStyle(preview).objectFit : "cover";
    const scale = fit === "contain" ? Math.min(fw / w, fh / h) : Math.max(fw / w, fh / h);
    Object.assign(layer.style, { width: `${w * scale}px`, height: `${h * scale}px`,
      left: `${(fw - w * scale) / 2}px`, top: `${(fh - h * scale) / 2}px` });
  };
  new ResizeObserver(place).observe(frame);

  const mark = (point) => Object.assign(marker.style, { left: percent(point.x), top: percent(point.y) });

  layer.addEventListener("click", (event) => {
    if (layer.dataset.editable !== "true") return;
    const box = layer.getBoundingClientRect();
    if (!box.width || !box.height) return;
    const point = { x: round4(clamp01((event.clientX - box.left) / box.width)), y: round4(clamp01((event.clientY - box.top) / box.height)) };
    mark(point);
    onPick(point);
  });
  layer.addEventListener("keydown", (event) => {
    const steps = { ArrowLeft: [-0.05, 0], ArrowRight: [0.05, 0], ArrowUp: [0, -0.05], ArrowDown: [0, 0.05] };
    if (steps[event.key] && pending) {
      event.preventDefault();
      pending = { x: round4(clamp01(pending.x + steps[event.key][0])), y: round4(clamp01(pending.y + steps[event.key][1])) };
      mark(pending);
    } else if ((event.key === "Enter" || event.key === " ") && pending && layer.dataset.editable === "true") {
      event.preventDefault();
      onPick(pending);
    }
  });

  return {
    show(image) {
      const { width, height } = image.source || {};
      if (!width || !height || !image.focal_point) return;
      size = [width, height];
      pending = { x: image.focal_point.x, y: image.focal_point.y };
      const faces = (image.faces || []).map((f) => el("span", { class: "face", "aria-hidden": "true",
        style: `left: ${percent(f.x)}; top: ${percent(f.y)}; width: ${percent(f.w)}; height: ${percent(f.h)}` }));
      marker.dataset.source = image.focal_source || "";
      layer.dataset.editable = image.id ? "true" : "false";  // an image uploaded through the API
      mark(pending);
      layer.replaceChildren(...faces, marker);
      layer.hidden = false;
      place();
    },
  };
}

/** What the subject is, in words, with a way back from a point set by hand. */
function subjectLine(image, card) {
  if (!image.focal_point) return null;
  const faces = (image.faces || []).length;
  const words = {
    manual: "Focal point set by hand",
    faces: `Focal point: the ${faces === 1 ? "face" : `${faces} faces`} found`,
    attention: "Focal point: the most salient part (no face found)",
  }[image.focal_source] || "Focal point";
  const line = el("p", { class: "subject-line" }, `${words}. Click the picture to move it.`);
  if (image.focal_source === "manual") {
    const reset = el("button", { type: "button", class: "reset-focal", text: "Use the detected subject" });
    reset.addEventListener("click", () => card.setFocal(null));
    line.append(" ", reset);
  }
  return line;
}

const sameOrigin = (url) => new URL(url, document.baseURI).origin === location.origin;

/** Show `url` in `img`. Fetched (and shown as a blob) when it is on this origin and either made
 * again at the same address (`fresh`: past the browser's caches, the API's redirect and the local
 * files alike; a presigned URL is new anyway) or needs the token (an <img> cannot send one). */
async function showCrop(img, url, fresh) {
  const token = "authorization" in withToken();
  if (sameOrigin(url) && (token || fresh)) {
    try {
      const response = await apiFetch(url, { cache: fresh ? "reload" : "default" });
      if (response.ok && (response.headers.get("content-type") || "").startsWith("image/")) {
        img.src = URL.createObjectURL(await response.blob());
        return;
      }
    } catch {
      /* shown from its address below */
    }
  }
  img.src = absolute(url);
}

/** The crops the card can show: every variant made on upload whose shape is not the image's (a
 * `cover` crop), each at its own size, kept by the focal point. */
function crops(image, fresh) {
  const { width, height } = image.source || {};
  const cut = (image.variants || []).filter((v) => width && height && Math.abs(v.height - (v.width * height) / width) > 1);
  if (!cut.length) return null;
  const figures = cut.map((v) => {
    const img = el("img", { alt: `${v.name} crop`, width: v.width, height: v.height, decoding: "async" });
    img.dataset.variant = v.name;
    showCrop(img, v.src || v.url, fresh);
    return el("figure", { class: "crop" }, img, el("figcaption", { text: `${v.name} ${v.width}×${v.height}` }));
  });
  return el("div", { class: "crops", "aria-label": "Crops" }, ...figures);
}

function facts(image) {
  const source = image.source || {};
  const rows = (image.variants || []).map((v) => el("tr", {},
    el("th", { scope: "row", text: v.name }),
    el("td", { text: `${v.width}×${v.height}` }),
    el("td", { text: formatBytes(v.bytes) }),
    el("td", { text: formatName(v) }),
    el("td", { text: saving(v.bytes, source.bytes) })));
  for (const lazy of image.lazy_variants || []) {  // `lazy` in VARIANTS: made when first asked for
    rows.push(el("tr", { class: "lazy" },
      el("th", { scope: "row", text: lazy.name }),
      el("td", { colSpan: 4, text: lazy.made ? "made on first request (stored)" : "made on first request" })));
  }
  const caption = source.bytes
    ? `Original: ${source.width}×${source.height}, ${formatBytes(source.bytes)}, ${(source.type || "").toUpperCase()}`
    : "Variants";
  return el("div", { class: "facts-wrap" }, el("table", { class: "facts" },
    el("caption", { text: caption }),
    el("thead", {}, el("tr", {}, ...["variant", "px", "bytes", "format", "vs orig."].map((t) => el("th", { scope: "col", text: t })))),
    el("tbody", {}, ...rows)));
}

function snippetBlock(image, alt, id, ratio = "", fresh = false) {
  let snippet = pictureSnippet(image, alt, ratio) || pictureSnippet(image, alt);
  if (!snippet) return null;
  const code = el("code", { id: `${id}-snippet`, class: "snippet", text: snippet });
  const said = el("span", { class: "copied", role: "status" });
  const button = el("button", { type: "button", class: "copy", text: "Copy HTML", "aria-describedby": `${id}-snippet-label` });
  button.addEventListener("click", async () => {
    const ok = await copyText(snippet);
    said.textContent = ok ? "Copied" : "Copy failed: select the text";
    setTimeout(() => { said.textContent = ""; }, 2500);
  });
  const bar = el("div", { class: "snippet-bar" }, button);
  const ratios = image.ratio_urls?.ratios || [];
  const preview = el("img", { class: "ratio-preview", alt: "", decoding: "async", hidden: true });
  if (ratios.length) {
    // Ask for a shape: the snippet then offers that ratio's srcset ladder, cut around the subject.
    const select = el("select", { id: `${id}-ratio`, class: "ratio-select" },
      el("option", { value: "", text: "image's own" }), ...ratios.map((r) => el("option", { value: r, text: r.replace("x", ":") })));
    select.value = ratios.includes(ratio) ? ratio : "";
    const show = (fresh) => {
      const chosen = select.value;
      snippet = pictureSnippet(image, alt, chosen) || pictureSnippet(image, alt);
      code.textContent = snippet;
      preview.hidden = !chosen;
      preview.alt = chosen ? `${chosen.replace("x", ":")} crop` : "";
      if (chosen) {
        const plan = ladderPlan(image, chosen);
        const small = plan.fallback.filter((v) => v.width <= 384).pop() || plan.fallback[0];
        preview.dataset.ratio = chosen;
        showCrop(preview, small.url, fresh);
      }
    };
    select.addEventListener("change", () => show(false));
    if (select.value) show(fresh);
    bar.append(el("label", { for: `${id}-ratio`, class: "ratio-label", text: "Ratio" }), select);
  }
  bar.append(said);
  return el("div", { class: "snippet-block" }, bar, preview,
    el("details", {}, el("summary", { id: `${id}-snippet-label`, text: "<picture> snippet" }), el("pre", {}, code)));
}
