// delf_serve's page: plain JavaScript, no libraries. Every text from the server is set with
// textContent (labels and ids are never parsed as HTML).
"use strict";

const TOKEN = document.querySelector('meta[name="delf-token"]').content;
const $ = (id) => document.getElementById(id);
const state = { file: null, databaseId: null, box: null, busy: false, photos: [] };

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function photoUrl(id, size) {
  return `/photo/${encodeURIComponent(id)}?size=${size}`;
}

function showError(message) {
  const error = $("error");
  error.textContent = message || "";
  error.hidden = !message;
}

async function readJson(response) {
  try {
    return await response.json();
  } catch (ignored) {
    return { error: `the server answered ${response.status} ${response.statusText}` };
  }
}

async function post(url, form) {
  const response = await fetch(url, { method: "POST", body: form, headers: { "X-Delf-Token": TOKEN } });
  const body = await readJson(response);
  if (!response.ok) throw new Error(body.error || `request failed (${response.status})`);
  return body;
}

// Polls a job until it is done; onProgress(job) on each poll; resolves with the job.
async function waitForJob(jobId, onProgress) {
  for (;;) {
    const response = await fetch(`/api/jobs/${jobId}`);
    const job = await readJson(response);
    if (!response.ok) throw new Error(job.error || "the job was lost");
    if (onProgress) onProgress(job);
    if (job.state === "done") return job;
    if (job.state === "failed") throw new Error(job.error);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

// ---- Query photo and box ---------------------------------------------------------------

function setQuery(source, name, file, databaseId) {
  state.file = file;
  state.databaseId = databaseId;
  clearBox();
  const preview = $("preview");
  $("preview-image").src = source;
  preview.classList.remove("empty");
  $("query-name").textContent = name;
  $("search").disabled = false;
  showError("");
}

function clearBox() {
  state.box = null;
  $("box").hidden = true;
  $("clear-box").disabled = true;
}

function drawBox(box) {
  const image = $("preview-image");
  const preview = $("preview").getBoundingClientRect();
  const rect = image.getBoundingClientRect();
  const node = $("box");
  node.style.left = `${rect.left - preview.left + box.x1 * rect.width}px`;
  node.style.top = `${rect.top - preview.top + box.y1 * rect.height}px`;
  node.style.width = `${(box.x2 - box.x1) * rect.width}px`;
  node.style.height = `${(box.y2 - box.y1) * rect.height}px`;
  node.hidden = false;
}

function setUpBoxDrawing() {
  const image = $("preview-image");
  let start = null;
  const fraction = (event) => {
    const rect = image.getBoundingClientRect();
    const clamp = (value) => Math.min(1, Math.max(0, value));
    return { x: clamp((event.clientX - rect.left) / rect.width), y: clamp((event.clientY - rect.top) / rect.height) };
  };
  const current = (event) => {
    const point = fraction(event);
    return {
      x1: Math.min(start.x, point.x), y1: Math.min(start.y, point.y),
      x2: Math.max(start.x, point.x), y2: Math.max(start.y, point.y),
    };
  };
  $("preview").addEventListener("pointerdown", (event) => {
    if ($("preview").classList.contains("empty")) return;
    start = fraction(event);
    $("preview").setPointerCapture(event.pointerId);
  });
  $("preview").addEventListener("pointermove", (event) => {
    if (start) drawBox(current(event));
  });
  $("preview").addEventListener("pointerup", (event) => {
    if (!start) return;
    const box = current(event);
    start = null;
    if (box.x2 - box.x1 < 0.02 || box.y2 - box.y1 < 0.02) {
      clearBox();
      return;
    }
    state.box = box;
    drawBox(box);
    $("clear-box").disabled = false;
  });
  $("clear-box").addEventListener("click", clearBox);
  window.addEventListener("resize", () => state.box && drawBox(state.box));
}

// ---- Search ----------------------------------------------------------------------------

function showProgress(job) {
  $("progress").hidden = false;
  $("progress-bar").value = job ? job.done : 0;
  $("progress-text").textContent = job ? `${job.stage} (${job.seconds.toFixed(1)} s)` : "sending…";
}

async function search() {
  if (state.busy || (!state.file && !state.databaseId)) return;
  state.busy = true;
  $("search").disabled = true;
  showError("");
  showProgress(null);
  const form = new FormData();
  if (state.databaseId) form.append("database_id", state.databaseId);
  else form.append("photo", state.file, state.file.name);
  if (state.box) {
    const b = state.box;
    form.append("box", [b.x1, b.y1, b.x2, b.y2].map((v) => v.toFixed(4)).join(","));
  }
  try {
    const { job } = await post("/api/query", form);
    const done = await waitForJob(job, showProgress);
    showResults(job, done.result);
  } catch (error) {
    showError(error.message);
  } finally {
    state.busy = false;
    $("search").disabled = false;
    $("progress").hidden = true;
  }
}

function showResults(jobId, result) {
  const recognition = $("recognition");
  recognition.replaceChildren();
  recognition.hidden = false;
  const answer = result.recognition;
  recognition.classList.toggle("unknown", !answer.label);
  recognition.append(
    element("span", "", "Recognised: "),
    element("strong", "", answer.label || "unknown"),
    element("span", "hint", answer.label
      ? ` (${answer.score} inliers from the top verified results)`
      : " (no label has enough verified inliers)"),
  );
  const seconds = result.seconds;
  $("results-summary").textContent =
    `${result.num_features} query features; ${result.results.length} results shown; ` +
    `verified = at least ${result.min_inliers} RANSAC inliers; ` +
    `${(seconds.total || 0).toFixed(2)} s (extraction ${(seconds.extraction || 0).toFixed(2)} s). ` +
    "Click a result to see its matches.";
  const list = $("results");
  list.replaceChildren();
  for (const entry of result.results) {
    const card = element("li", "card clickable result-card");
    card.dataset.id = entry.id;
    card.dataset.rank = entry.rank;
    if (entry.verified) card.classList.add("verified");
    const image = element("img");
    image.src = photoUrl(entry.id, "thumb");
    image.alt = entry.id;
    image.loading = "lazy";
    const meta = element("div", "meta");
    meta.append(
      element("div", "id", `${entry.rank}. ${entry.id}`),
      element("div", "label", entry.label || "no label"),
      element("div", "", `score ${entry.score} · inliers ${entry.inliers === null ? "–" : entry.inliers} `),
    );
    meta.append(element("span", entry.verified ? "badge yes" : "badge", entry.verified ? "verified" : "not verified"));
    card.append(image, meta);
    card.addEventListener("click", () => openMatch(jobId, entry));
    list.append(card);
  }
}

function openMatch(jobId, entry) {
  const dialog = $("match-dialog");
  $("match-title").textContent = `Match: query – ${entry.id}`;
  $("match-caption").textContent =
    `rank ${entry.rank}, score ${entry.score}, ${entry.inliers === null ? "not verified" : entry.inliers + " RANSAC inliers"}` +
    (entry.label ? `, label ${entry.label}` : "");
  const image = $("match-image");
  image.hidden = true;
  $("match-loading").hidden = false;
  $("match-loading").textContent = "drawing the matches…";
  image.onload = () => { $("match-loading").hidden = true; image.hidden = false; };
  image.onerror = () => { $("match-loading").textContent = "the match picture could not be drawn"; };
  image.src = `/api/jobs/${jobId}/match/${encodeURIComponent(entry.id)}.png`;
  dialog.hidden = false;
  $("match-close").focus();
}

function closeMatch() {
  $("match-dialog").hidden = true;
}

// ---- Gallery ---------------------------------------------------------------------------

async function loadPhotos() {
  const response = await fetch("/api/photos");
  const body = await readJson(response);
  state.photos = body.photos || [];
  $("collection-count").textContent = `${state.photos.length} photos indexed`;
  renderPhotos();
}

function renderPhotos() {
  const filter = $("gallery-filter").value.trim().toLowerCase();
  const list = $("photos");
  list.replaceChildren();
  const shown = state.photos.filter(
    (p) => !filter || p.id.toLowerCase().includes(filter) || (p.label || "").toLowerCase().includes(filter),
  );
  for (const photo of shown.slice(0, 300)) {
    const card = element("li", "card photo-card");
    card.dataset.id = photo.id;
    const image = element("img");
    image.loading = "lazy";
    image.alt = photo.id;
    if (photo.has_image) image.src = photoUrl(photo.id, "thumb");
    const meta = element("div", "meta");
    meta.append(element("div", "id", photo.id), element("div", "label", photo.label || "no label"));
    const actions = element("div", "actions");
    const use = element("button", "small secondary query-button", "Query");
    use.type = "button";
    use.disabled = !photo.has_image;
    use.addEventListener("click", () => {
      setQuery(photoUrl(photo.id, "view"), `indexed photo ${photo.id} (left out of its results)`, null, photo.id);
      window.scrollTo({ top: 0, behavior: "smooth" });
    });
    const remove = element("button", "small danger remove-button", "Remove");
    remove.type = "button";
    remove.addEventListener("click", () => removePhoto(photo.id, remove));
    actions.append(use, remove);
    card.append(image, meta, actions);
    list.append(card);
  }
  if (shown.length > 300) list.append(element("li", "hint", `${shown.length - 300} more: filter to find them`));
}

function galleryStatus(text, isError) {
  const status = $("gallery-status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(isError));
}

async function addPhoto(event) {
  event.preventDefault();
  const file = $("gallery-file").files[0];
  if (!file) {
    galleryStatus("choose a photo to add", true);
    return;
  }
  const form = new FormData();
  form.append("photo", file, file.name);
  form.append("label", $("gallery-label").value);
  $("gallery-add").disabled = true;
  galleryStatus(`adding ${file.name}…`);
  try {
    const { job } = await post("/api/gallery/add", form);
    const done = await waitForJob(job, (j) => galleryStatus(`adding ${file.name}: ${j.stage}`));
    galleryStatus(`added ${done.result.added}`);
    $("gallery-form").reset();
    $("gallery-file-name").textContent = "no photo chosen";
    await loadPhotos();
  } catch (error) {
    galleryStatus(error.message, true);
  } finally {
    $("gallery-add").disabled = false;
  }
}

async function removePhoto(id, button) {
  button.disabled = true;
  galleryStatus(`removing ${id}…`);
  const form = new FormData();
  form.append("image_id", id);
  try {
    const { job } = await post("/api/gallery/remove", form);
    await waitForJob(job);
    galleryStatus(`removed ${id}`);
    await loadPhotos();
  } catch (error) {
    galleryStatus(error.message, true);
    button.disabled = false;
  }
}

// ---- Wiring ----------------------------------------------------------------------------

$("query-file").addEventListener("change", () => {
  const file = $("query-file").files[0];
  if (file) setQuery(URL.createObjectURL(file), `uploaded ${file.name}`, file, null);
  $("query-file").value = "";
});
$("gallery-file").addEventListener("change", () => {
  const file = $("gallery-file").files[0];
  $("gallery-file-name").textContent = file ? file.name : "no photo chosen";
});
$("search").addEventListener("click", search);
$("gallery-form").addEventListener("submit", addPhoto);
$("gallery-filter").addEventListener("input", renderPhotos);
$("match-close").addEventListener("click", closeMatch);
$("match-dialog").addEventListener("click", (event) => { if (event.target === $("match-dialog")) closeMatch(); });
document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeMatch(); });
setUpBoxDrawing();
loadPhotos().catch((error) => galleryStatus(error.message, true));
