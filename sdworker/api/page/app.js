// sdworker page: submits jobs to /v1/jobs and follows one job at a time over Server-Sent Events.
// The followed job's id lives in the URL (#job=<id>) so a reload reattaches to its stream; the
// service replays what was missed. Other jobs made from this page are polled (one EventSource each
// would use up the browser's six connections per host) and kept in sessionStorage for the strip.
"use strict";

const $ = (id) => document.getElementById(id);
const ACTIVE = new Set(["submitted", "queued", "running"]);
const STORE_KEY = "sdworker.jobs";

const state = {
  info: null,
  input: null, // {base64, width, height, dataUrl}
  jobs: [], // {id, prompt, mode, status, position, step, total, seed, width, height, message}
  focusedId: null,
  pinned: false, // the person chose a finished job to look at: do not jump to the running one
  stream: null,
  samples: [], // {step, t} for it/s
  lastSeed: null,
};

// ---------------------------------------------------------------- small helpers

function jobById(id) {
  return state.jobs.find((j) => j.id === id) || null;
}

function saveJobs() {
  try {
    sessionStorage.setItem(STORE_KEY, JSON.stringify(state.jobs.slice(-40)));
  } catch (_) {
    /* storage full or disabled: the page still works, it just forgets on reload */
  }
}

function loadJobs() {
  try {
    const raw = sessionStorage.getItem(STORE_KEY);
    state.jobs = raw ? JSON.parse(raw) : [];
  } catch (_) {
    state.jobs = [];
  }
}

function hashJobId() {
  const m = /(?:^|[#&])job=([^&]+)/.exec(location.hash);
  return m ? decodeURIComponent(m[1]) : null;
}

function mimeOf(format) {
  const f = String(format || "png").toLowerCase();
  return f === "jpg" ? "image/jpeg" : `image/${f}`;
}

/** Seeds are u64: JSON.parse would round those above 2^53, so read the digits from the raw text. */
function seedFromRaw(raw) {
  const m = /"seed"\s*:\s*"?(-?\d+)/.exec(raw || "");
  return m ? m[1] : null;
}

function setText(id, text) {
  $(id).textContent = text;
}

function setStatus(text, kind) {
  const el = $("job-status");
  el.textContent = text;
  el.className = "job-status" + (kind ? " " + kind : "");
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

// ---------------------------------------------------------------- server info and readiness

async function loadInfo() {
  try {
    const res = await fetch("/v1/info");
    if (!res.ok) throw new Error(String(res.status));
    state.info = await res.json();
    applyInfo(state.info);
    return true;
  } catch (_) {
    return false;
  }
}

function names(list) {
  return (Array.isArray(list) ? list : []).map((x) => (typeof x === "string" ? x : x && x.name)).filter(Boolean);
}

function applyInfo(info) {
  const sched = $("scheduler");
  const current = sched.value;
  const def = info.default_scheduler || "";
  sched.innerHTML = "";
  sched.append(new Option(def ? `Model default (${def})` : "Model default", ""));
  for (const name of names(info.schedulers)) sched.append(new Option(name, name));
  sched.value = current;

  const methods = names(info.preview_methods);
  if (methods.length) {
    const sel = $("preview-method");
    const keep = sel.value;
    sel.innerHTML = "";
    for (const m of ["auto", ...methods.filter((m) => m !== "auto")]) sel.append(new Option(m, m));
    if (!methods.includes("none")) sel.append(new Option("none", "none"));
    sel.value = keep;
  }

  const limits = info.limits || info;
  if (limits.max_steps) $("steps").max = limits.max_steps;
  const pd = info.preview_defaults || info.preview || {};
  if (pd.every !== undefined) $("preview-every").value = pd.every;
  if (pd.min_interval_ms !== undefined) $("preview-interval").value = pd.min_interval_ms;
  if (pd.max_size !== undefined) $("preview-max-size").value = pd.max_size;
  if (pd.format) $("preview-format").value = pd.format;
  if (pd.method) $("preview-method").value = pd.method;

  const model = info.model && typeof info.model === "object" ? info.model.name || info.model.id : info.model;
  const bits = [model && `model ${model}`, info.device, info.dtype].filter(Boolean);
  serverStatus(bits.length ? `Ready · ${bits.join(" · ")}` : "Ready", false);
}

function serverStatus(text, bad) {
  const el = $("server-status");
  el.textContent = text;
  el.classList.toggle("bad", !!bad);
}

async function watchReadiness() {
  let ready = false;
  try {
    const res = await fetch("/ready", { cache: "no-store" });
    ready = res.ok;
    if (!ready) {
      let reason = "";
      try {
        reason = (await res.json()).reason || "";
      } catch (_) {
        /* no JSON body */
      }
      serverStatus(`The worker is not ready yet${reason ? ": " + reason : ""}. Waiting…`, true);
    } else if (!state.info) {
      await loadInfo();
    } else {
      applyInfo(state.info);
    }
  } catch (_) {
    serverStatus("Cannot reach the worker. Is `sdworker serve` running? Retrying…", true);
  }
  setTimeout(watchReadiness, ready ? 10000 : 2000);
}

// ---------------------------------------------------------------- form: modes, input image, seed

function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

function applyMode() {
  const m = mode();
  const usesImage = m !== "txt2img";
  $("input-section").hidden = !usesImage;
  $("mask-editor").hidden = !state.input;
  $("mask-stage").classList.toggle("no-mask", m !== "inpaint");
  $("mask-tools").hidden = m !== "inpaint";
  $("mask-hint").hidden = m !== "inpaint";
  const sizeFromImage = usesImage && !!state.input;
  $("width").disabled = sizeFromImage;
  $("height").disabled = sizeFromImage;
  $("size-hint").hidden = !sizeFromImage;
}

/** The service wants sizes in multiples of 8: fit the image (floor to 8, under the pixel limit). */
function targetSize(w, h) {
  const limits = (state.info && (state.info.limits || state.info)) || {};
  const maxPixels = Number(limits.max_pixels) || 2048 * 2048;
  let scale = 1;
  if (w * h > maxPixels) scale = Math.sqrt(maxPixels / (w * h));
  const fit = (v) => Math.max(8, Math.floor((v * scale) / 8) * 8);
  return { width: fit(w), height: fit(h) };
}

function readAsDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error);
    r.readAsDataURL(blob);
  });
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("not an image"));
    img.src = src;
  });
}

async function setInputImage(blob) {
  clearFieldError("input_image");
  if (!blob || (blob.type && !blob.type.startsWith("image/"))) {
    showFieldError("input_image", "That file is not an image. Choose a PNG, JPEG or WebP picture.");
    return;
  }
  let dataUrl;
  let img;
  try {
    dataUrl = await readAsDataUrl(blob);
    img = await loadImage(dataUrl);
  } catch (_) {
    showFieldError("input_image", "This image could not be read. Choose a PNG, JPEG or WebP picture.");
    return;
  }
  const w = img.naturalWidth;
  const h = img.naturalHeight;
  const size = targetSize(w, h);
  const sendable = ["image/png", "image/jpeg", "image/webp"].includes(blob.type);
  if (size.width !== w || size.height !== h || !sendable) {
    // Resize here so the image, the mask and width/height sent all agree.
    const c = document.createElement("canvas");
    c.width = size.width;
    c.height = size.height;
    c.getContext("2d").drawImage(img, 0, 0, size.width, size.height);
    dataUrl = c.toDataURL("image/png");
  }
  state.input = { base64: dataUrl.split(",", 2)[1], width: size.width, height: size.height, dataUrl };
  $("input-preview").src = dataUrl;
  $("width").value = size.width;
  $("height").value = size.height;
  maskEditor.reset(size.width, size.height);
  const note = size.width !== w || size.height !== h ? ` (resized from ${w}×${h} to multiples of 8)` : "";
  $("input-preview").alt = `The input image, ${size.width}×${size.height}${note}`;
  if (note) showFieldNote("input_image", `Input ${size.width}×${size.height}${note}.`);
  applyMode();
}

function randomSeed() {
  const a = new Uint32Array(1);
  crypto.getRandomValues(a);
  return String(a[0]);
}

// ---------------------------------------------------------------- errors shown next to the form

const FIELD_LABELS = {
  prompt: "Prompt", negative_prompt: "Negative prompt", width: "Width", height: "Height", steps: "Steps",
  guidance_scale: "Guidance", seed: "Seed", scheduler: "Scheduler", strength: "Strength",
  input_image: "Input image", init_image: "Input image", mask_image: "Mask", preview: "Preview settings",
};
const FIELD_TARGET = { init_image: "input_image", n: null, operation: null };

/** "body.preview.every" or ["body", "width"] -> the form field it belongs to, if any. */
function fieldKey(field) {
  if (field === undefined || field === null) return null;
  const parts = (Array.isArray(field) ? field : String(field).split(".")).map(String).filter((p) => p !== "body");
  for (const p of parts) {
    const key = p in FIELD_TARGET ? FIELD_TARGET[p] : p;
    if (key && $(`${key}-error`)) return key;
  }
  return null;
}

function showFieldError(key, message) {
  const err = $(`${key}-error`);
  if (!err) return;
  err.textContent = message;
  err.hidden = false;
  err.classList.remove("hint");
  const input = $(key === "preview" ? "preview-every" : key === "input_image" ? "input-file" : key);
  if (input) {
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-describedby", err.id);
  }
  if (key === "preview") $("preview-settings").open = true;
}

function showFieldNote(key, message) {
  const err = $(`${key}-error`);
  err.textContent = message;
  err.hidden = false;
  err.classList.add("hint");
}

function clearFieldError(key) {
  const err = $(`${key}-error`);
  if (err) err.hidden = true;
  document.querySelectorAll("[aria-invalid]").forEach((el) => {
    if (!key || el.getAttribute("aria-describedby") === `${key}-error`) el.removeAttribute("aria-invalid");
  });
}

function clearErrors() {
  document.querySelectorAll(".field-error").forEach((el) => (el.hidden = true));
  document.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
  $("form-error").hidden = true;
}

function showFormError(title, detail) {
  const box = $("form-error");
  box.innerHTML = "";
  const strong = document.createElement("strong");
  strong.textContent = title;
  box.append(strong);
  if (detail) box.append(document.createTextNode(detail));
  box.hidden = false;
}

/** Turn a 4xx/5xx JSON body into plain words; accepts our {code, message, field} and FastAPI's {detail}. */
function describeError(body) {
  let message = "";
  let field = null;
  const detail = body && body.detail;
  if (body && typeof body.message === "string") {
    message = body.message;
    field = body.field;
  } else if (body && body.error && typeof body.error === "object") {
    message = body.error.message || "";
    field = body.error.field;
  } else if (typeof detail === "string") {
    message = detail;
  } else if (Array.isArray(detail) && detail.length) {
    message = detail.map((d) => d.msg).filter(Boolean).join("; ");
    field = detail[0].loc;
  }
  return { message, field };
}

async function reportHttpError(res) {
  let body = null;
  try {
    body = await res.json();
  } catch (_) {
    /* not JSON */
  }
  if (res.status === 429) {
    const wait = Number(res.headers.get("Retry-After"));
    const when = Number.isFinite(wait) && wait > 0 ? `in ${plural(wait, "second")}` : "in a moment";
    showFormError("The queue is full.", ` Retry ${when}; nothing was added.`);
    return;
  }
  const { message, field } = describeError(body);
  const key = fieldKey(field);
  const label = key ? FIELD_LABELS[key] || key : null;
  if (key) showFieldError(key, message || "This value was not accepted.");
  if (res.status === 413) {
    showFormError("Too large.", " " + (message || "The request is bigger than the worker accepts."));
  } else if (res.status >= 500) {
    showFormError("The worker could not take the job.", " " + (message || `It answered ${res.status}.`));
  } else {
    showFormError(label ? `${label}: not accepted.` : "The worker refused the job.", " " + (message || `(${res.status})`));
  }
}

// ---------------------------------------------------------------- submitting

function numberField(id) {
  const el = $(id);
  if (el.value.trim() === "") return undefined;
  const n = Number(el.value);
  return Number.isFinite(n) ? n : el.value;
}

/** The JSON body for POST /v1/jobs, or null after showing why it cannot be sent. */
function buildBody() {
  const m = mode();
  const body = {
    operation: { txt2img: "image_generation", img2img: "image_transform", inpaint: "image_inpaint" }[m],
    prompt: $("prompt").value,
  };
  if ($("negative_prompt").value.trim()) body.negative_prompt = $("negative_prompt").value;
  for (const id of ["width", "height", "steps", "guidance_scale"]) {
    const v = numberField(id);
    if (v !== undefined) body[id] = v;
  }
  if ($("scheduler").value) body.scheduler = $("scheduler").value;
  const preview = {
    every: numberField("preview-every"),
    min_interval_ms: numberField("preview-interval"),
    method: $("preview-method").value,
    max_size: numberField("preview-max-size"),
    format: $("preview-format").value,
  };
  for (const k of Object.keys(preview)) if (preview[k] === undefined) delete preview[k];
  body.preview = preview;
  if (m !== "txt2img") {
    if (!state.input) {
      showFieldError("input_image", "Choose an input image first (or drop one on the box).");
      showFormError("No input image.", " Image to image and inpaint start from a picture.");
      return null;
    }
    body.strength = Number($("strength").value);
    body.width = state.input.width;
    body.height = state.input.height;
    if (m === "img2img") body.input_image = state.input.base64;
    else {
      if (!maskEditor.painted) {
        showFieldError("mask_image", "Paint the part of the image to repaint first.");
        showFormError("The mask is empty.", " Paint over the image with the brush.");
        return null;
      }
      body.init_image = state.input.base64;
      body.mask_image = maskEditor.toBase64();
    }
  }
  return body;
}

/** JSON text with the seed's digits spliced in, so a 64-bit seed is sent exactly. */
function bodyText(body) {
  const seed = $("seed").value.trim();
  if (seed === "") return JSON.stringify(body);
  if (/^-?\d+$/.test(seed)) return JSON.stringify({ ...body, seed: "__SEED__" }).replace('"__SEED__"', seed);
  return JSON.stringify({ ...body, seed });
}

async function submit(event) {
  event.preventDefault();
  clearErrors();
  const body = buildBody();
  if (!body) return;
  const button = $("generate");
  button.disabled = true;
  let res;
  try {
    res = await fetch("/v1/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: bodyText(body),
    });
  } catch (_) {
    showFormError("Cannot reach the worker.", " Check that `sdworker serve` is still running, then try again.");
    button.disabled = false;
    return;
  }
  button.disabled = false;
  if (!res.ok) {
    await reportHttpError(res);
    return;
  }
  const { job_id: id } = await res.json();
  const job = {
    id, prompt: body.prompt, mode: mode(), status: "submitted", position: null, step: 0,
    total: body.steps || null, seed: null, width: body.width || 512, height: body.height || 512, message: "",
  };
  state.jobs.push(job);
  saveJobs();
  state.pinned = false;
  const focused = jobById(state.focusedId);
  if (!focused || !ACTIVE.has(focused.status)) focus(id);
  render();
}

// ---------------------------------------------------------------- following one job over SSE

function focus(id) {
  if (state.stream) state.stream.close();
  state.stream = null;
  state.focusedId = id;
  state.samples = [];
  if (hashJobId() !== id) history.replaceState(null, "", `#job=${encodeURIComponent(id)}`);
  let job = jobById(id);
  if (!job) {
    // Opened from a link or an older session: learn what we can from the stream itself.
    job = { id, prompt: "", mode: "", status: "submitted", position: null, step: 0, total: null, seed: null,
      width: null, height: null, message: "" };
    state.jobs.push(job);
    saveJobs();
  }
  resetStage(job);
  openStream(job);
  render();
}

function resetStage(job) {
  const img = $("result-image");
  img.hidden = true;
  img.removeAttribute("src");
  img.classList.remove("is-preview");
  if (job.width && job.height) {
    img.width = job.width;
    img.height = job.height;
  }
  setText("result-caption", "");
  $("result-actions").hidden = true;
  $("progress").value = 0;
  $("progress").max = 1;
  setText("progress-text", "");
  setStatus(`Job ${job.id.slice(0, 8)}: connecting…`, "waiting");
}

function openStream(job) {
  const es = new EventSource(`/v1/jobs/${encodeURIComponent(job.id)}/stream`);
  state.stream = es;
  const on = (name, fn) =>
    es.addEventListener(name, (e) => {
      if (state.stream !== es) return;
      let data = {};
      try {
        data = JSON.parse(e.data);
      } catch (_) {
        return;
      }
      fn(data, e.data);
    });
  es.addEventListener("open", () => {
    if (state.stream === es && ACTIVE.has(job.status)) describeActive(job);
  });
  on("queued", (d) => {
    job.status = "queued";
    job.position = d.position ?? null;
    describeActive(job);
    render();
  });
  on("started", (d) => {
    job.status = "running";
    if (d.total) job.total = d.total;
    describeActive(job);
    render();
  });
  on("progress", (d) => onStep(job, d));
  on("preview", (d) => {
    onStep(job, d);
    showPreview(job, d);
  });
  on("complete", (d, raw) => onComplete(job, d, raw));
  es.addEventListener("error", (e) => {
    if (state.stream !== es) return;
    if (typeof e.data === "string" && e.data) {
      let d = {};
      try {
        d = JSON.parse(e.data);
      } catch (_) {
        /* keep defaults */
      }
      onFailed(job, d);
    } else if (es.readyState === EventSource.CONNECTING) {
      setStatus(`Connection to the worker lost: reconnecting… (job ${job.id.slice(0, 8)})`, "waiting");
    } else {
      resolveClosed(job, es);
    }
  });
}

function onStep(job, d) {
  if (job.status !== "cancelling") job.status = "running";
  job.step = d.step || 0;
  job.total = d.total || job.total;
  const now = performance.now();
  const last = state.samples[state.samples.length - 1];
  // Replayed history arrives in one burst: restart the window so it does not count as speed.
  if (last && now - last.t < 4 && d.step - last.step <= 1) state.samples = [];
  state.samples.push({ step: job.step, t: now });
  while (state.samples.length > 2 && now - state.samples[0].t > 5000) state.samples.shift();
  const prog = $("progress");
  prog.max = job.total || 1;
  prog.value = job.step;
  setText("progress-text", stepText(job));
  describeActive(job);
}

function rate() {
  const s = state.samples;
  if (s.length < 2) return null;
  const dt = (s[s.length - 1].t - s[0].t) / 1000;
  const ds = s[s.length - 1].step - s[0].step;
  return dt > 0.05 && ds > 0 ? ds / dt : null;
}

function stepText(job) {
  const r = rate();
  let text = `step ${job.step} / ${job.total || "?"}`;
  if (r !== null) text += r >= 1 ? ` · ${r.toFixed(1)} it/s` : ` · ${(1 / r).toFixed(1)} s/it`;
  return text;
}

function describeActive(job) {
  const short = job.id.slice(0, 8);
  if (job.status === "queued" || job.status === "submitted") {
    const pos = job.position;
    const where = pos === null || pos === undefined ? "waiting for its turn" : pos <= 0 ? "next in line" : `position ${pos} in the queue`;
    setStatus(`Queued: ${where} (job ${short})`, "waiting");
  } else if (job.status === "running") {
    setStatus(`Generating… step ${job.step} of ${job.total || "?"} (job ${short})`, "");
  }
  $("cancel").disabled = !ACTIVE.has(job.status);
}

function showPreview(job, d) {
  if (!d.image) return;
  const img = $("result-image");
  if (!job.width && d.width) {
    img.width = d.width;
    img.height = d.height;
  }
  img.src = `data:${mimeOf(d.format)};base64,${d.image}`;
  img.alt = `Preview at step ${d.step} of ${d.total}`;
  img.classList.add("is-preview");
  img.hidden = false;
  const how = d.method ? ` (${d.method}${d.width ? `, ${d.width}×${d.height}` : ""})` : "";
  setText("result-caption", `Preview, step ${d.step} / ${d.total}${how}`);
}

function onComplete(job, d, raw) {
  job.status = "completed";
  job.seed = seedFromRaw(raw) ?? (d.seed !== undefined ? String(d.seed) : null);
  if (d.width) job.width = d.width;
  if (d.height) job.height = d.height;
  job.step = job.total || job.step;
  const src = d.image ? `data:${mimeOf(d.format)};base64,${d.image}` : imageUrl(job.id);
  showFinal(job, src);
  endStream(job);
}

function imageUrl(id) {
  return `/v1/jobs/${encodeURIComponent(id)}/image`;
}

function showFinal(job, src) {
  const img = $("result-image");
  if (job.width && job.height) {
    img.width = job.width;
    img.height = job.height;
  }
  img.src = src;
  img.alt = `Generated image: ${job.prompt || "final image"}`;
  img.classList.remove("is-preview");
  img.hidden = false;
  setText("result-caption", `Final image, ${job.width || "?"}×${job.height || "?"}`);
  $("progress").max = 1;
  $("progress").value = 1;
  const r = rate();
  setText("progress-text", `done${job.total ? `, ${job.total} steps` : ""}${r ? ` · ${r.toFixed(1)} it/s` : ""}`);
  setStatus(`Done (job ${job.id.slice(0, 8)})`, "done");
  const dl = $("download");
  dl.href = imageUrl(job.id);
  dl.download = `sdworker-${job.seed ?? job.id.slice(0, 8)}.png`;
  setText("seed-used", job.seed ?? "unknown");
  $("result-actions").hidden = false;
  if (job.seed !== null) {
    state.lastSeed = job.seed;
    $("seed-reuse").disabled = false;
    $("seed-reuse").title = `Use seed ${job.seed}`;
  }
}

function onFailed(job, d) {
  const cancelled = d.code === "cancelled" || job.status === "cancelling";
  job.status = cancelled ? "cancelled" : "failed";
  job.message = d.message || "";
  const at = job.step ? ` at step ${job.step} of ${job.total || "?"}` : "";
  if (cancelled) setStatus(`Cancelled${at}. (job ${job.id.slice(0, 8)})`, "cancelled");
  else setStatus(`Failed: ${job.message || "the worker could not finish this image."}`, "failed");
  setText("progress-text", cancelled ? "cancelled" : "failed");
  const img = $("result-image");
  if (!img.hidden) setText("result-caption", `Last preview before it was ${cancelled ? "cancelled" : "stopped"}`);
  endStream(job);
}

function endStream(job) {
  if (state.stream) state.stream.close();
  state.stream = null;
  $("cancel").disabled = true;
  saveJobs();
  render();
  if (!state.pinned) {
    const next = state.jobs.find((j) => ACTIVE.has(j.status) && j.id !== job.id);
    if (next) setTimeout(() => state.focusedId === job.id && !state.pinned && focus(next.id), 1500);
  }
}

/** The stream closed for good (204 after the end, 404 for a forgotten job): ask the job itself. */
async function resolveClosed(job, es) {
  let res;
  try {
    res = await fetch(`/v1/jobs/${encodeURIComponent(job.id)}`, { cache: "no-store" });
  } catch (_) {
    setStatus("Connection to the worker lost: reconnecting…", "waiting");
    setTimeout(() => state.stream === es && focus(job.id), 2000);
    return;
  }
  if (state.stream !== es) return;
  if (res.status === 404) {
    job.status = "gone";
    setStatus(`The worker no longer knows job ${job.id.slice(0, 8)} (finished jobs are kept for a while, then forgotten).`, "failed");
    endStream(job);
    return;
  }
  let body = {};
  try {
    body = await res.json();
  } catch (_) {
    /* keep empty */
  }
  const status = body.status;
  if (status === "completed") {
    const params = body.parameters || body.params || {};
    job.seed = job.seed ?? (body.seed ?? params.seed ?? null);
    if (job.seed !== null) job.seed = String(job.seed);
    job.width = job.width || params.width || null;
    job.height = job.height || params.height || null;
    job.status = "completed";
    showFinal(job, imageUrl(job.id));
    endStream(job);
  } else if (status === "failed" || status === "cancelled") {
    onFailed(job, { code: status === "cancelled" ? "cancelled" : body.error?.code, message: body.error?.message || body.error || "" });
  } else {
    setStatus("The stream ended early: reconnecting…", "waiting");
    setTimeout(() => state.stream === es && focus(job.id), 1000);
  }
}

async function cancelJob(id) {
  const job = jobById(id);
  if (job && ACTIVE.has(job.status)) job.status = job.status === "running" ? "cancelling" : job.status;
  if (id === state.focusedId) {
    $("cancel").disabled = true;
    setStatus("Cancelling…", "waiting");
  }
  let res;
  try {
    res = await fetch(`/v1/jobs/${encodeURIComponent(id)}`, { method: "DELETE" });
  } catch (_) {
    showFormError("Cannot reach the worker.", " The job may still be running.");
    return;
  }
  if (!res.ok && res.status !== 409) {
    const { message } = describeError(await res.json().catch(() => null));
    showFormError("Could not cancel.", " " + (message || `The worker answered ${res.status}.`));
  }
  if (id !== state.focusedId && job) {
    job.status = "cancelled";
    saveJobs();
    render();
  }
}

// ---------------------------------------------------------------- the other jobs: polled

async function pollOthers() {
  const others = state.jobs.filter((j) => ACTIVE.has(j.status) && j.id !== state.focusedId);
  for (const job of others) {
    try {
      const res = await fetch(`/v1/jobs/${encodeURIComponent(job.id)}`, { cache: "no-store" });
      if (res.status === 404) job.status = "gone";
      else if (res.ok) {
        const b = await res.json();
        job.status = b.status || job.status;
        job.position = b.position ?? b.queue_position ?? job.position;
        job.step = b.step ?? job.step;
        job.total = b.total ?? job.total;
        const params = b.parameters || b.params || {};
        if (b.seed ?? params.seed) job.seed = String(b.seed ?? params.seed);
      }
    } catch (_) {
      /* the focused stream reports lost connections */
    }
  }
  if (others.length) {
    saveJobs();
    render();
  }
  const focused = jobById(state.focusedId);
  if (!state.pinned && (!focused || !ACTIVE.has(focused.status))) {
    const next = state.jobs.find((j) => ACTIVE.has(j.status));
    if (next && !state.stream) focus(next.id);
  }
  setTimeout(pollOthers, 1500);
}

// ---------------------------------------------------------------- lists

function render() {
  const focused = jobById(state.focusedId);
  $("cancel").disabled = !(focused && ACTIVE.has(focused.status));

  const waiting = state.jobs.filter((j) => (ACTIVE.has(j.status) || j.status === "cancelling") && j.id !== state.focusedId);
  $("queue-section").hidden = waiting.length === 0;
  const list = $("queue-list");
  list.innerHTML = "";
  for (const job of waiting) {
    const li = document.createElement("li");
    const what = job.status === "running" ? `running ${job.step}/${job.total || "?"}` : job.position !== null && job.position !== undefined ? `queued, position ${job.position}` : "queued";
    const p = document.createElement("span");
    p.className = "q-prompt";
    p.textContent = job.prompt || job.id;
    const s = document.createElement("span");
    s.textContent = what;
    const watch = document.createElement("button");
    watch.type = "button";
    watch.className = "secondary";
    watch.textContent = "Watch";
    watch.addEventListener("click", () => focus(job.id));
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "danger";
    cancel.textContent = "Cancel";
    cancel.setAttribute("aria-label", `Cancel job ${job.prompt || job.id}`);
    cancel.addEventListener("click", () => cancelJob(job.id));
    li.append(p, s, watch, cancel);
    list.append(li);
  }

  const done = state.jobs.filter((j) => j.status === "completed").reverse();
  const strip = $("strip");
  strip.innerHTML = "";
  $("strip-empty").hidden = done.length > 0;
  for (const job of done) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.title = `${job.prompt || "image"} (seed ${job.seed ?? "?"})`;
    if (job.id === state.focusedId) b.setAttribute("aria-current", "true");
    const img = document.createElement("img");
    img.src = imageUrl(job.id);
    img.alt = `Result: ${job.prompt || job.id}`;
    img.loading = "lazy";
    img.addEventListener("error", () => li.remove());
    b.append(img);
    b.addEventListener("click", () => {
      state.pinned = true;
      focus(job.id);
    });
    li.append(b);
    strip.append(li);
  }
}

// ---------------------------------------------------------------- wiring

let maskEditor;

function init() {
  maskEditor = new MaskEditor($("mask-canvas"));
  maskEditor.onChange = () => maskEditor.painted && clearFieldError("mask_image");
  $("brush-size").addEventListener("input", (e) => {
    maskEditor.brushSize = Number(e.target.value);
    setText("brush-size-value", e.target.value);
  });
  maskEditor.brushSize = Number($("brush-size").value);
  document.querySelectorAll('input[name="mask-tool"]').forEach((r) =>
    r.addEventListener("change", () => (maskEditor.tool = r.value)),
  );
  $("mask-clear").addEventListener("click", () => maskEditor.clear());

  document.querySelectorAll('input[name="mode"]').forEach((r) => r.addEventListener("change", applyMode));
  $("strength").addEventListener("input", (e) => setText("strength-value", Number(e.target.value).toFixed(2)));
  $("input-file").addEventListener("change", (e) => e.target.files[0] && setInputImage(e.target.files[0]));
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) setInputImage(file);
  });

  $("seed-dice").addEventListener("click", () => ($("seed").value = randomSeed()));
  $("seed-reuse").addEventListener("click", () => state.lastSeed !== null && ($("seed").value = state.lastSeed));
  $("job-form").addEventListener("submit", submit);
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("job-form").requestSubmit();
  });
  $("cancel").addEventListener("click", () => state.focusedId && cancelJob(state.focusedId));
  $("use-as-input").addEventListener("click", useAsInput);
  window.addEventListener("hashchange", () => {
    const id = hashJobId();
    if (id && id !== state.focusedId) {
      state.pinned = true;
      focus(id);
    }
  });

  loadJobs();
  applyMode();
  render();
  watchReadiness();
  const id = hashJobId();
  if (id) focus(id);
  pollOthers();
}

async function useAsInput() {
  const job = jobById(state.focusedId);
  if (!job) return;
  let blob;
  try {
    const res = await fetch(imageUrl(job.id));
    if (!res.ok) throw new Error(String(res.status));
    blob = await res.blob();
  } catch (_) {
    blob = await (await fetch($("result-image").src)).blob();
  }
  document.querySelector('input[name="mode"][value="img2img"]').checked = true;
  await setInputImage(blob.type ? blob : new Blob([blob], { type: "image/png" }));
  if (job.seed !== null) state.lastSeed = job.seed;
  $("input-section").scrollIntoView({ behavior: "smooth", block: "start" });
}

document.addEventListener("DOMContentLoaded", init);
