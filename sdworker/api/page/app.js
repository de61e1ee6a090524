// sdworker page (entry module): submits jobs to /v1/jobs and follows one job at a time over Server-Sent Events.
// The followed job's id lives in the URL (#job=<id>) so a reload reattaches to its stream; the
// service replays what was missed. Other jobs made from this page are polled (one EventSource each
// would use up the browser's six connections per host) and kept in sessionStorage for the strip.

import { rememberSignedUrl } from "./auth.js";
import { clearErrors, clearFieldError, reportHttpError, showFormError } from "./errors.js";
import { cancelJob, focus } from "./follow.js";
import {
  addLoraRow, applyMode, applyModelDefaults, bodyText, buildBody, maskEditor, mode, randomSeed, restoreForm, saveForm,
  setInputImage,
} from "./form.js";
import { applyGuidance, initGuidance } from "./guide.js";
import { $, ACTIVE, hashJobId, hooks, imageUrl, jobById, loadJobs, saveJobs, setText, state } from "./state.js";

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

/** /v1/info: {model: {model, family, device, dtype, schedulers, default_scheduler, preview_methods},
 * limits: {max_steps, max_pixels, ...}, preview_defaults: {...}}; flat fields are read too. */
function applyInfo(info) {
  const engine = info.model && typeof info.model === "object" ? info.model : {};
  const pick = (key) => info[key] ?? engine[key];

  const sched = $("scheduler");
  const current = sched.value;
  const def = pick("default_scheduler") || "";
  sched.innerHTML = "";
  sched.append(new Option(def ? `Model default (${def})` : "Model default", ""));
  for (const name of names(pick("schedulers"))) sched.append(new Option(name, name));
  sched.value = current;

  const methods = names(pick("preview_methods"));
  if (methods.length) {
    const sel = $("preview-method");
    const keep = sel.value || "auto";
    sel.innerHTML = "";
    for (const m of ["auto", ...methods.filter((m) => m !== "auto" && m !== "none"), "none"]) sel.append(new Option(m, m));
    sel.value = keep;
  }

  // The model library (GET /v1/models' entries): the picker keeps what the person chose.
  // A model whose files cannot be used (its `error` says why) is not offered: GET /v1/models shows it.
  const library = (Array.isArray(info.library) ? info.library : []).filter((m) => !m.error);
  if (library.length) {
    const picker = $("model");
    const chosen = picker.value || sessionModel();
    picker.innerHTML = "";
    picker.append(new Option("Default model", ""));
    for (const m of library) {
      const tag = [m.architecture, m.native_size && `${m.native_size} px`, m.default && "default"].filter(Boolean);
      picker.append(new Option(`${m.id} (${tag.join(", ")})`, m.id));
    }
    picker.value = library.some((m) => m.id === chosen) ? chosen : "";
    // Picking a model shows its own defaults (its family's steps and guidance, its native size).
    picker.onchange = () => applyModelDefaults(library.find((m) => m.id === picker.value) || library.find((m) => m.default));
  }
  if (!state.modelDefaultsApplied) {
    // Once, unless a reload kept the form: the picked (or the server's) model's defaults, and the device's
    // (the worker's, or the first of the fleet's when this node runs none).
    state.modelDefaultsApplied = true;
    const entry = library.find((m) => m.id === $("model").value) || library.find((m) => m.default);
    applyModelDefaults(entry, pick("device") || ((info.workers || [])[0] || {}).device || "");
  }

  applyGuidance(info);

  const limits = info.limits || info;
  if (limits.max_steps) $("steps").max = limits.max_steps;
  if (!state.previewDefaultsApplied) {
    // Only once: later readiness checks must not undo what the person chose.
    state.previewDefaultsApplied = true;
    const pd = info.preview_defaults || {};
    if (pd.every !== undefined) $("preview-every").value = pd.every;
    if (pd.min_interval_ms !== undefined) $("preview-interval").value = pd.min_interval_ms;
    if (pd.max_size !== undefined) $("preview-max-size").value = pd.max_size;
    if (pd.format) $("preview-format").value = pd.format;
    if (pd.method) $("preview-method").value = pd.method;
  }

  const model = typeof info.model === "string" ? info.model : engine.model;
  const bits = [model && `model ${model}`, engine.family, pick("device"), pick("dtype")].filter(Boolean);
  serverStatus(bits.length ? `Ready · ${bits.join(" · ")}` : "Ready", false);
}

/** The model kept by saveForm across a reload (its options only exist once /v1/info answered). */
function sessionModel() {
  try {
    return (JSON.parse(sessionStorage.getItem("sdworker.form") || "{}") || {}).model || "";
  } catch (_) {
    return "";
  }
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
      // After the info: a key it needed is known by now, so this asks for none a second time.
      if (historyNext === HISTORY_FIRST) loadHistory();
    } else {
      applyInfo(state.info);
    }
  } catch (_) {
    serverStatus("Cannot reach the worker. Is `sdworker serve` running? Retrying…", true);
  }
  setTimeout(watchReadiness, ready ? 10000 : 2000);
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
  const { job_id: id, sse_url: sseUrl } = await res.json();
  rememberSignedUrl(id, sseUrl || "");
  const job = {
    id, prompt: body.prompt, mode: mode(), status: "submitted", position: null, step: 0,
    total: body.steps || null, seed: null, width: body.width || 512, height: body.height || 512, message: "",
  };
  state.jobs.push(job);
  saveJobs();
  state.pinned = false;
  const focused = jobById(state.focusedId);
  if (!focused || !ACTIVE.has(focused.status)) {
    focus(id);
    // One column (narrow screens): the result is below the form, so bring it into view.
    if (window.matchMedia("(max-width: 880px)").matches) $("job-status").scrollIntoView({ block: "start" });
  }
  render();
}

// ---------------------------------------------------------------- the other jobs: polled

async function pollOthers() {
  const unfinished = (j) => ACTIVE.has(j.status) || j.status === "cancelling";
  const others = state.jobs.filter((j) => unfinished(j) && j.id !== state.focusedId);
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

let stripKey = null;

function render() {
  const focused = jobById(state.focusedId);
  $("cancel").disabled = !(focused && ACTIVE.has(focused.status));

  const waiting = state.jobs.filter((j) => (ACTIVE.has(j.status) || j.status === "cancelling") && j.id !== state.focusedId);
  $("queue-section").hidden = waiting.length === 0;
  const list = $("queue-list");
  list.innerHTML = "";
  for (const job of waiting) {
    const li = document.createElement("li");
    let what = "queued";
    if (job.status === "cancelling") what = "cancelling…";
    else if (job.status === "running") what = `running ${job.step}/${job.total || "?"}`;
    else if (job.position !== null && job.position !== undefined) what = `queued, position ${job.position}`;
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
  // Rebuild the strip only when it changes: render runs on every queue event and poll.
  const key = done.map((j) => (j.id === state.focusedId ? `*${j.id}` : j.id)).join(",");
  if (key === stripKey) return;
  stripKey = key;
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

// ---------------------------------------------------------------- history: the store's finished jobs

// The server keeps finished jobs (SQLite: across restarts), so the strip starts with them, newest
// first, a page at a time; "Older images" asks for the next page.
const HISTORY_FIRST = "/v1/jobs?limit=24";
let historyNext = HISTORY_FIRST;

async function loadHistory() {
  if (!historyNext) return;
  let res;
  try {
    res = await fetch(historyNext, { cache: "no-store" });
  } catch (_) {
    return;
  }
  if (!res.ok) return;
  const body = await res.json();
  historyNext = body.next || null;
  $("history-more").hidden = !historyNext;
  const older = [];
  for (const j of body.jobs || []) {
    if (j.status !== "completed" || jobById(j.job_id)) continue;
    rememberSignedUrl(j.job_id, j.sse_url || "");
    older.push({
      id: j.job_id, prompt: "", mode: "", status: "completed", position: null, step: j.step, total: j.total,
      seed: null, width: null, height: null, message: "",
    });
  }
  if (!older.length) return;
  state.jobs.unshift(...older.reverse()); // state.jobs is oldest first
  render();
}

// ---------------------------------------------------------------- wiring

function init() {
  hooks.render = render;
  initGuidance();
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

  const setSeed = (value) => {
    $("seed").value = value;
    saveForm();
  };
  $("seed-dice").addEventListener("click", () => setSeed(randomSeed()));
  $("lora-add").addEventListener("click", () => addLoraRow());
  $("seed-reuse").addEventListener("click", () => state.lastSeed !== null && setSeed(state.lastSeed));
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
  if (restoreForm()) state.previewDefaultsApplied = state.modelDefaultsApplied = true;
  const lastDone = [...state.jobs].reverse().find((j) => j.status === "completed" && j.seed !== null);
  if (lastDone) {
    state.lastSeed = lastDone.seed;
    $("seed-reuse").disabled = false;
  }
  $("job-form").addEventListener("input", saveForm);
  $("job-form").addEventListener("change", saveForm);
  $("preview-settings").addEventListener("toggle", saveForm);
  setText("strength-value", Number($("strength").value).toFixed(2));
  setText("brush-size-value", $("brush-size").value);
  maskEditor.brushSize = Number($("brush-size").value);
  maskEditor.tool = document.querySelector('input[name="mask-tool"]:checked').value;
  applyMode();
  render();
  watchReadiness();
  const id = hashJobId();
  if (id) focus(id);
  pollOthers();
  $("history-more").addEventListener("click", loadHistory);
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
  saveForm();
  await setInputImage(blob.type ? blob : new Blob([blob], { type: "image/png" }));
  if (job.seed !== null) state.lastSeed = job.seed;
  $("input-section").scrollIntoView({ behavior: "smooth", block: "start" });
}

// A module script runs once the document is parsed.
init();
