// The upload page: each picked or dropped file goes straight to storage through a presigned POST
// (POST /uploads), with real progress, then its status is polled until processed or rejected.
import { apiFetch, initAccess } from "./auth.js";
import { encode } from "./blurhash.js";
import { createCard } from "./cards.js";

const input = document.getElementById("files");
const drop = document.getElementById("drop");
const list = document.getElementById("cards");
const summary = document.getElementById("summary");

const MAX_PARALLEL = 3;
const TYPES = { heic: "image/heic", heif: "image/heif", avif: "image/avif", webp: "image/webp", tif: "image/tiff",
  tiff: "image/tiff", bmp: "image/bmp", jpg: "image/jpeg", jpeg: "image/jpeg", png: "image/png", gif: "image/gif" };
const STATUS_CODES = { 413: "too_large", 415: "unsupported_type" };
const NEEDS_TOKEN = "Sign-in needed: give an access token above, then pick the file again";

let running = 0;
const queue = [];

function contentType(file) {
  if (file.type) return file.type;
  const ext = file.name.split(".").pop().toLowerCase();
  return TYPES[ext] || "application/octet-stream";
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function problem(response) {
  try {
    return await response.json();
  } catch {
    return {};
  }
}

/** While the file uploads and is processed, its card shows the file's own BlurHash at its shape
 * (decoded here, shrunk to ≤ 32 px, encoded as the pipeline does; nothing extra is sent). */
async function localPlaceholder(file, card) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file); // EXIF orientation applied, as the pipeline does
  } catch {
    return; // not decodable here (HEIC, or not an image): the server will say what it is
  }
  const { width, height } = bitmap;
  const scale = 32 / Math.max(width, height);
  const w = Math.max(1, Math.round(width * scale));
  const h = Math.max(1, Math.round(height * scale));
  const canvas = document.createElement("canvas");
  Object.assign(canvas, { width: w, height: h });
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0, w, h);
  bitmap.close();
  card.placeholder(encode(context.getImageData(0, 0, w, h).data, w, h), width, height, null, "local");
}

/** multipart POST of the signed fields and the file (last, as S3 requires), with progress. */
function postForm(url, fields, file, onProgress) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    for (const [name, value] of Object.entries(fields)) form.append(name, value);
    form.append("file", file);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.upload.onprogress = (event) => onProgress(event.loaded, event.lengthComputable ? event.total : file.size);
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve();
      else {
        const code = /<Code>([^<]+)<\/Code>/.exec(xhr.responseText || "")?.[1];
        reject(Object.assign(new Error(`storage refused the upload (${code || xhr.status})`), { code, status: xhr.status }));
      }
    };
    xhr.onerror = () => reject(new Error("the upload did not reach storage (network or CORS)"));
    xhr.send(form);
  });
}

async function poll(statusUrl, card) {
  let delay = 400;
  const started = Date.now();
  let notFound = 0;
  for (;;) {
    await sleep(delay);
    delay = Math.min(delay * 1.5, 3000);
    let response;
    try {
      response = await apiFetch(statusUrl, { headers: { accept: "application/json" } });
    } catch {
      continue; // the API restarted or the network blinked: the state lives in storage, ask again
    }
    if (response.status === 401) return card.failed(NEEDS_TOKEN);
    if (response.status === 404 && ++notFound < 10) continue;
    if (!response.ok) {
      const body = await problem(response);
      card.failed(`Status unavailable: ${body.detail || response.status}`);
      return;
    }
    const image = await response.json();
    if (image.placeholder?.blurhash && image.source?.width) {
      card.placeholder(image.placeholder.blurhash, image.source.width, image.source.height, image.placeholder.dominant_color);
    }
    if (image.status === "processed") return card.processed(image);
    if (image.status === "failed") return card.rejected(image.error_code);
    if (image.status === "held") return card.held(image.error_code);
    if (Date.now() - started > 60000) card.slow();
  }
}

async function upload({ file, card }) {
  card.uploading();
  card.progress(0, file.size);
  try {
    const response = await apiFetch("uploads", {
      method: "POST",
      headers: { "content-type": "application/json", accept: "application/json" },
      body: JSON.stringify({ filename: file.name, content_type: contentType(file), size: file.size }),
    });
    if (response.status === 401) {
      card.failed(NEEDS_TOKEN);
      return;
    }
    if (!response.ok) {
      const body = await problem(response);
      const code = body.code || body.error_code || body.extra?.code || STATUS_CODES[response.status];
      if (code) card.rejected(code, body.detail);
      else card.failed(`Upload refused: ${body.detail || body.title || response.status}`);
      return;
    }
    const grant = await response.json();
    card.node.dataset.imageId = grant.id;
    await postForm(grant.upload.url, grant.upload.fields, file, (loaded, total) => card.progress(loaded, total));
    card.pending();
    await poll(grant.status_url, card);
  } catch (error) {
    if (error.code === "EntityTooLarge") card.rejected("too_large", error.message);
    else card.failed(`Upload failed: ${error.message}`);
  }
}

function pump() {
  while (running < MAX_PARALLEL && queue.length) {
    running++;
    upload(queue.shift()).finally(() => {
      running--;
      pump();
      announce();
    });
  }
  announce();
}

function announce() {
  const cards = list.querySelectorAll(".card");
  const count = (state) => list.querySelectorAll(`.card[data-state="${state}"]`).length;
  summary.textContent = cards.length
    ? `${cards.length} upload${cards.length === 1 ? "" : "s"}: ${count("processed")} ready, ${count("failed") + count("error")} rejected`
    : "";
}

function add(files) {
  // Every file gets its card at once, in the order picked, above earlier batches.
  const batch = files.map((file) => ({ file, card: createCard(file.name) }));
  list.prepend(...batch.map(({ card }) => card.node));
  for (const { file, card } of batch) {
    card.queued();
    localPlaceholder(file, card);
  }
  queue.push(...batch);
  pump();
}

initAccess();

input.addEventListener("change", () => {
  add([...input.files]);
  input.value = "";
});

for (const type of ["dragenter", "dragover"]) {
  document.addEventListener(type, (event) => {
    if (![...(event.dataTransfer?.types || [])].includes("Files")) return;
    event.preventDefault();
    drop.classList.add("dragging");
  });
}
document.addEventListener("dragleave", (event) => {
  if (event.relatedTarget === null) drop.classList.remove("dragging");
});
document.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("dragging");
  add([...(event.dataTransfer?.files || [])]);
});
