// The web page of the text-to-video service: one job at a time, plain DOM, no build step.
"use strict";

const KEY_STORAGE = "wan-serve.api-key";
const POLL_MS = 500;
const NUMBER_FIELDS = ["num_frames", "num_inference_steps", "guidance_scale", "seed", "fps"];
const $ = (id) => document.getElementById(id);

let presets = {};
let watcher = null; // stops the current job's event stream or poll loop
let imageFile = null; // the chosen first frame (a File), sent as input_reference; null: text to video
// The file part's name: OpenAI's field, as the SDK sends it.
const IMAGE_FIELD = "input_reference";

// --- HTTP ---------------------------------------------------------------------------

function apiKey() {
  return $("api-key").value.trim();
}

function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

class ApiError extends Error {
  constructor(message, code, status, param = null) {
    super(message);
    this.code = code;
    this.status = status;
    this.param = param; // the request field the server named, if any
  }
}

// fetch with the key; a non-2xx answer throws with the JSON error's message.
async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: authHeaders(options.headers) });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    let code = "http_error";
    let param = null;
    try {
      const body = await response.json();
      if (body && body.error) {
        message = body.error.message || message;
        code = body.error.code || code;
        param = body.error.param || null;
      }
    } catch (_) {
      // not JSON (a proxy's error page): keep the status line
    }
    throw new ApiError(message, code, response.status, param);
  }
  return response.status === 204 ? null : response.json();
}

function contentUrl(id, variant) {
  return `/v1/videos/${encodeURIComponent(id)}/content` + (variant === "thumbnail" ? "?variant=thumbnail" : "");
}

// <video src> and <img src> cannot send a header either: with a key, fetch the bytes and hand
// the element a blob URL; without one, let the browser stream the file itself.
async function mediaSrc(id, variant) {
  if (!apiKey()) return contentUrl(id, variant);
  const response = await fetch(contentUrl(id, variant), { headers: authHeaders() });
  if (!response.ok) throw new ApiError(`${variant}: ${response.status} ${response.statusText}`, "http_error");
  return URL.createObjectURL(await response.blob());
}

// --- small helpers ------------------------------------------------------------------

function show(el, visible) {
  el.hidden = !visible;
}

function setError(el, message) {
  el.textContent = message || "";
  show(el, Boolean(message));
}

function formatEta(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
  if (seconds < 1) return "under a second left";
  if (seconds < 90) return `about ${Math.round(seconds)} s left`;
  return `about ${Math.round(seconds / 60)} min left`;
}

function joinParts(...parts) {
  return parts.filter(Boolean).join(" · ");
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${Math.round(n / 1024)} kB`;
  return `${(n / (1024 * 1024)).toFixed(1)} MB`;
}

// --- presets and the form -----------------------------------------------------------

async function loadPresets() {
  const select = $("preset");
  try {
    const body = await api("/v1/presets");
    presets = body.presets || {};
    select.replaceChildren();
    for (const [name, preset] of Object.entries(presets)) {
      const summary = `${preset.width}x${preset.height}, ${preset.num_frames} frames, ${preset.num_inference_steps} steps`;
      const option = new Option(`${name} (${summary})`, name);
      option.selected = name === body.default_preset;
      select.append(option);
    }
    applyLimits(body.limits || {});
    showPresetDefaults();
  } catch (err) {
    setError($("form-error"), `Could not load presets: ${err.message}`);
  }
}

function applyLimits(limits) {
  const bounds = {
    num_frames: [limits.min_frames, limits.max_frames],
    num_inference_steps: [limits.min_steps, limits.max_steps],
    guidance_scale: [limits.min_guidance, limits.max_guidance],
    fps: [limits.min_fps, limits.max_fps],
    seed: [0, limits.max_seed],
  };
  for (const [id, [min, max]] of Object.entries(bounds)) {
    if (min !== undefined) $(id).min = min;
    if (max !== undefined) $(id).max = max;
  }
}

function showPresetDefaults() {
  const preset = presets[$("preset").value];
  if (!preset) return;
  $("preset-description").textContent = preset.description || "";
  $("size").placeholder = `${preset.width}x${preset.height}`;
  $("num_frames").placeholder = preset.num_frames;
  $("num_inference_steps").placeholder = preset.num_inference_steps;
  $("guidance_scale").placeholder = preset.guidance_scale;
  $("fps").placeholder = preset.fps;
  $("negative_prompt").placeholder = preset.negative_prompt || "";
}

function requestBody() {
  const body = { prompt: $("prompt").value, preset: $("preset").value || undefined };
  const size = $("size").value.trim();
  if (size) body.size = size;
  for (const id of NUMBER_FIELDS) {
    const raw = $(id).value.trim();
    // Sent as typed: the server checks it and names the field when it is wrong.
    if (raw !== "") body[id] = Number(raw);
  }
  const negative = $("negative_prompt").value;
  if (negative.trim()) body.negative_prompt = negative;
  return body;
}

// With an image, multipart/form-data as the OpenAI SDK sends it: the fields as text, the
// picture as the file part input_reference (the browser sets the boundary's Content-Type).
function createRequest(body) {
  // respond-async: every generation is a job (202 at once), watched below.
  if (!imageFile) {
    return {
      method: "POST",
      headers: { "Content-Type": "application/json", Prefer: "respond-async" },
      body: JSON.stringify(body),
    };
  }
  const form = new FormData();
  for (const [name, value] of Object.entries(body)) {
    if (value !== undefined) form.append(name, String(value));
  }
  form.append(IMAGE_FIELD, imageFile, imageFile.name);
  return { method: "POST", headers: { Prefer: "respond-async" }, body: form };
}

async function submit(event) {
  event.preventDefault();
  setError($("form-error"), "");
  markImageInvalid(false);
  const button = $("submit");
  button.disabled = true;
  try {
    const video = await api("/v1/videos", createRequest(requestBody()));
    watchJob(video);
    refreshHistory();
  } catch (err) {
    setError($("form-error"), err.message);
    // input_reference, input_reference.image_url, ...: the picture is what the server refused.
    // A 413 for the whole body with a picture attached: the picture is what made it too large.
    const aboutImage = (err.param && err.param.startsWith(IMAGE_FIELD)) || (err.status === 413 && imageFile);
    if (aboutImage) markImageInvalid(true);
  } finally {
    button.disabled = false;
  }
}

// --- the first frame (image to video) -----------------------------------------------

// A picked or dropped file, or null to remove it. Checking it is the server's job (it names
// input_reference when it cannot use it); the page only shows what will be sent.
function setImage(file) {
  imageFile = file || null;
  markImageInvalid(false);
  const thumb = $("image-thumb");
  setMedia(thumb, "src", imageFile ? URL.createObjectURL(imageFile) : null);
  if (!imageFile) {
    $("image").value = ""; // picking the same file again must fire "change"
    $("image-caption").textContent = "";
    show($("image-preview"), false);
    return;
  }
  $("image-caption").textContent = joinParts(imageFile.name, formatBytes(imageFile.size));
  show($("image-preview"), true);
}

function describeThumbnail(loaded) {
  if (!imageFile) return;
  const thumb = $("image-thumb");
  const what = loaded ? `${thumb.naturalWidth}x${thumb.naturalHeight}` : "no preview: the browser cannot show this file";
  $("image-caption").textContent = joinParts(imageFile.name, what, formatBytes(imageFile.size));
}

function markImageInvalid(invalid) {
  $("image-drop").classList.toggle("invalid", invalid);
  if (invalid) $("image").setAttribute("aria-invalid", "true");
  else $("image").removeAttribute("aria-invalid");
}

function carriesFiles(event) {
  return Boolean(event.dataTransfer) && Array.from(event.dataTransfer.types || []).includes("Files");
}

function initImageInput() {
  const drop = $("image-drop");
  $("image").addEventListener("change", () => setImage($("image").files[0]));
  $("image-remove").addEventListener("click", () => {
    setImage(null);
    $("image").focus();
  });
  $("image-thumb").addEventListener("load", () => describeThumbnail(true));
  $("image-thumb").addEventListener("error", () => {
    if ($("image-thumb").getAttribute("src")) describeThumbnail(false);
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      if (!carriesFiles(event)) return;
      event.preventDefault(); // accept the drop
      event.dataTransfer.dropEffect = "copy";
      drop.classList.add("dragover");
    });
  }
  drop.addEventListener("dragleave", (event) => {
    if (!drop.contains(event.relatedTarget)) drop.classList.remove("dragover");
  });
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("dragover");
    const files = event.dataTransfer ? event.dataTransfer.files : [];
    if (files.length > 0) setImage(files[0]); // one first frame: of several files, the first
  });
  // A file dropped beside the zone would make the browser open it in place of the page,
  // losing the form: refuse such drops instead.
  window.addEventListener("dragover", (event) => {
    if (!carriesFiles(event) || drop.contains(event.target)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "none";
  });
  window.addEventListener("drop", (event) => {
    if (carriesFiles(event)) event.preventDefault();
  });
}

// --- the current job ----------------------------------------------------------------

function watchJob(video) {
  if (watcher) watcher();
  watcher = null;
  const id = video.id;
  $("job-id").textContent = id;
  $("job-prompt").textContent = video.prompt || "";
  setError($("job-error"), "");
  show($("result"), false);
  setMedia($("player"), "src", null);
  setMedia($("player"), "poster", null);
  $("player").load();
  setMedia($("thumbnail"), "src", null);
  showPreview(null);
  show($("job"), true);
  renderVideo(video);
  if (video.status === "completed" || video.status === "failed") {
    finish(video);
    return;
  }
  watcher = apiKey() ? pollJob(id) : streamJob(id);
}

// EventSource cannot send an Authorization header. With no key the page follows the SSE
// stream (one event per denoising step); with a key it polls GET /v1/videos/{id} every
// 500 ms instead, which carries the header but only knows the job's percent, so the step
// shown there is derived from it.
function streamJob(id) {
  const source = new EventSource(`/v1/videos/${encodeURIComponent(id)}/events`);
  let done = false;
  let fallback = null;
  // The service ends a stream after its maximum lifetime with a `reconnect` event. The
  // browser then reconnects by itself (after the event's `retry:`), sending Last-Event-ID,
  // so the stream resumes after the last event shown; that one error is expected.
  let reconnecting = false;
  const stop = () => {
    done = true;
    source.close();
    if (fallback) fallback();
  };
  source.addEventListener("queued", (e) => renderQueued(JSON.parse(e.data)));
  source.addEventListener("progress", (e) => renderStep(JSON.parse(e.data)));
  source.addEventListener("reconnect", () => {
    reconnecting = true;
  });
  source.onopen = () => {
    reconnecting = false;
  };
  for (const type of ["completed", "failed"]) {
    source.addEventListener(type, (e) => {
      done = true;
      source.close();
      finish(JSON.parse(e.data).video);
    });
  }
  source.onerror = () => {
    if (done) return;
    if (reconnecting && source.readyState === EventSource.CONNECTING) {
      reconnecting = false; // a second error (the reconnection refused) falls back below
      return;
    }
    // A dropped stream (proxy timeout, restart) or a refused one (429 too_many_streams):
    // keep following the job by polling.
    source.close();
    fallback = pollJob(id);
  };
  return stop;
}

function pollJob(id) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    if (stopped) return;
    try {
      const video = await api(`/v1/videos/${encodeURIComponent(id)}`);
      if (stopped) return;
      if (video.status === "completed" || video.status === "failed") {
        finish(video);
        return;
      }
      setError($("job-error"), "");
      renderVideo(video);
    } catch (err) {
      if (stopped) return;
      setError($("job-error"), err.message);
      if (err.status === 404 || err.status === 401 || err.status === 403) return;
    }
    timer = setTimeout(tick, POLL_MS);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function setStatus(status, label) {
  const el = $("status");
  el.dataset.status = status;
  el.textContent = label;
  // Keep the current job's row in the history in step with it until the next refresh.
  const row = document.querySelector(`#history li[data-id="${CSS.escape($("job-id").textContent)}"] .badge`);
  if (row) {
    row.dataset.status = status;
    row.textContent = label.toLowerCase();
  }
}

function setProgress(percent, text) {
  const bar = $("progress");
  bar.value = percent;
  bar.setAttribute("aria-valuetext", text);
  $("progress-text").textContent = text;
}

function renderQueued(event) {
  setStatus("queued", "Queued");
  show($("cancel"), true);
  const ahead = event.queue_position; // jobs ahead of this one
  const where = ahead ? `${ahead} job${ahead === 1 ? "" : "s"} ahead` : "next in line";
  setProgress(0, joinParts(`Queued, ${where}`, formatEta(event.eta_s)));
}

function renderStep(event) {
  setStatus("in_progress", "In progress");
  show($("cancel"), true);
  const { step, total_steps: total } = event;
  const what = step >= total ? `Step ${step} of ${total}, decoding video` : `Step ${step} of ${total}`;
  const percent = event.progress ?? Math.floor((100 * step) / total);
  setProgress(percent, joinParts(what, step < total ? formatEta(event.eta_s) : ""));
  if (event.preview) showPreview(event.preview, `Preview at step ${step} of ${total}`);
}

// A data URL from a progress event (a few kB of JPEG), or null to clear and hide it.
function showPreview(src, caption = "") {
  const img = $("preview");
  if (src) img.src = src;
  else img.removeAttribute("src");
  $("preview-caption").textContent = caption;
  show($("preview-box"), Boolean(src));
}

// A video object (from the POST or a poll) while it is not finished.
function renderVideo(video) {
  if (video.status === "queued") {
    renderQueued(video);
  } else if (video.status === "in_progress") {
    const total = video.num_inference_steps;
    const step = Math.round((video.progress * total) / 100);
    renderStep({ step, total_steps: total, progress: video.progress, eta_s: video.eta_s });
  }
}

function setMedia(el, attribute, src) {
  const old = el.getAttribute(attribute);
  if (old && old.startsWith("blob:") && old !== src) URL.revokeObjectURL(old);
  if (src) el.setAttribute(attribute, src);
  else el.removeAttribute(attribute);
}

async function finish(video) {
  watcher = null;
  show($("cancel"), false);
  if (video.status === "completed") {
    setStatus("completed", "Completed");
    const took = video.timings && video.timings.total_s;
    const what = `${video.size}, ${video.num_frames} frames, seed ${video.seed}`;
    setProgress(100, joinParts("Done", took ? `took ${took.toFixed(1)} s` : "", what));
    try {
      const [src, thumb] = await Promise.all([mediaSrc(video.id, "video"), mediaSrc(video.id, "thumbnail")]);
      if ($("job-id").textContent !== video.id) return; // another job was opened meanwhile
      setMedia($("player"), "src", src);
      setMedia($("player"), "poster", thumb);
      setMedia($("thumbnail"), "src", thumb);
      $("download").href = src;
      $("download").setAttribute("download", `${video.id}.mp4`);
      showPreview(null); // the player replaces it
      show($("result"), true);
    } catch (err) {
      setError($("job-error"), err.message);
    }
  } else {
    const error = video.error || { code: "failed", message: "the job failed" };
    const cancelled = error.code === "cancelled";
    setStatus(cancelled ? "cancelled" : "failed", cancelled ? "Cancelled" : "Failed");
    setProgress($("progress").value, cancelled ? "Cancelled" : "Failed");
    setError($("job-error"), `${error.message} (${error.code})`);
  }
  refreshHistory();
}

async function cancelJob() {
  const id = $("job-id").textContent;
  if (!id) return;
  $("cancel").disabled = true;
  try {
    // The stream (or poll) then reports the job as failed with code "cancelled".
    await api(`/v1/videos/${encodeURIComponent(id)}/cancel`, { method: "POST" });
  } catch (err) {
    setError($("job-error"), err.message);
  } finally {
    $("cancel").disabled = false;
  }
}

// --- history ------------------------------------------------------------------------

async function refreshHistory() {
  try {
    const page = await api("/v1/videos?limit=10");
    setError($("history-error"), "");
    const list = $("history");
    list.replaceChildren(...page.data.map(historyItem));
    show($("history-empty"), page.data.length === 0);
  } catch (err) {
    setError($("history-error"), `Could not load recent jobs: ${err.message}`);
  }
}

function historyItem(video) {
  const item = document.createElement("li");
  item.dataset.id = video.id;
  item.dataset.status = video.status;

  const badge = document.createElement("span");
  const cancelled = video.status === "failed" && video.error && video.error.code === "cancelled";
  badge.className = "badge";
  badge.dataset.status = cancelled ? "cancelled" : video.status;
  badge.textContent = cancelled ? "cancelled" : video.status.replace("_", " ");

  const prompt = document.createElement("span");
  prompt.className = "prompt";
  prompt.textContent = video.prompt;
  prompt.title = video.prompt;

  const meta = document.createElement("span");
  meta.className = "meta";
  const created = new Date(video.created_at * 1000).toLocaleTimeString();
  const fromImage = video.input_reference_sha256 ? "from an image" : "";
  meta.textContent = joinParts(
    created,
    fromImage,
    video.size,
    `${video.num_frames} frames`,
    `${video.num_inference_steps} steps`,
  );

  const links = document.createElement("span");
  links.className = "links";
  const open = document.createElement("button");
  open.type = "button";
  open.className = "link";
  open.textContent = "show";
  open.addEventListener("click", () => watchJob(video));
  links.append(open);
  const addLink = (text, href) => {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    links.append(a);
  };
  if (video.status === "completed") {
    addLink("mp4", contentUrl(video.id, "video"));
    addLink("thumbnail", contentUrl(video.id, "thumbnail"));
  }
  addLink("json", `/v1/videos/${encodeURIComponent(video.id)}`);

  item.append(badge, prompt, meta, links);
  return item;
}

// --- start --------------------------------------------------------------------------

function init() {
  const key = $("api-key");
  key.value = localStorage.getItem(KEY_STORAGE) || "";
  key.addEventListener("change", () => {
    const value = key.value.trim();
    if (value) localStorage.setItem(KEY_STORAGE, value);
    else localStorage.removeItem(KEY_STORAGE);
    loadPresets();
    refreshHistory();
  });
  $("preset").addEventListener("change", showPresetDefaults);
  $("create-form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancelJob);
  $("refresh-history").addEventListener("click", refreshHistory);
  initImageInput();
  loadPresets();
  refreshHistory();
}

document.addEventListener("DOMContentLoaded", init);
