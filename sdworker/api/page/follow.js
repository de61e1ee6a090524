// Following one job over Server-Sent Events: queue position, live previews in place, progress with
// it/s, then the final image, a cancellation or an error. EventSource reconnects by itself with
// Last-Event-ID after a lost connection; the service answers 204 once the stream is over.

import { signedUrl } from "./auth.js";
import { describeError, showFormError } from "./errors.js";
import { $, ACTIVE, hashJobId, hooks, imageUrl, jobById, mimeOf, saveJobs, seedFromRaw, setStatus, setText, state } from "./state.js";

export function focus(id) {
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
  hooks.render();
}

/** Give the result image the job's size, so a smaller preview is shown in the final image's box. */
function sizeStage(width, height) {
  const img = $("result-image");
  if (!width || !height) return;
  img.width = width;
  img.height = height;
  img.style.setProperty("--ar", String(width / height));
}

/** The line shown in the image box while there is no image (or under a cancelled one). */
function stageNote(text) {
  const note = $("stage-note");
  note.textContent = text;
  note.hidden = !text;
}

function resetStage(job) {
  const img = $("result-image");
  $("progress-row").hidden = false;
  stageNote("Waiting for the first image…");
  img.hidden = true;
  img.removeAttribute("src");
  img.classList.remove("is-preview");
  sizeStage(job.width, job.height);
  setText("result-caption", "");
  $("result-actions").hidden = true;
  $("progress").value = 0;
  $("progress").max = 1;
  setText("progress-text", "");
  setStatus(`Job ${job.id.slice(0, 8)}: connecting…`, "waiting");
}

function openStream(job) {
  const es = new EventSource(signedUrl(job.id, `/v1/jobs/${encodeURIComponent(job.id)}/stream`));
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
    hooks.render();
  });
  on("started", (d) => {
    job.status = "running";
    if (d.total) job.total = d.total;
    if (typeof d.at === "number") job.startedAt = d.at;
    describeActive(job);
    hooks.render();
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
    // The service counts from 1 = next to run.
    const where =
      pos === null || pos === undefined ? "waiting for its turn" : pos <= 1 ? "next in line" : `position ${pos} in the queue`;
    setStatus(`Queued: ${where} (job ${short})`, "waiting");
  } else if (job.status === "running") {
    setStatus(`Generating… step ${job.step} of ${job.total || "?"} (job ${short})`, "");
  }
  if ($("result-image").hidden) {
    stageNote(job.status === "running" ? "Waiting for the first image…" : "Waiting in the queue…");
  }
  $("cancel").disabled = !ACTIVE.has(job.status);
}

function showPreview(job, d) {
  if (!d.image) return;
  const img = $("result-image");
  if (!job.width && d.width) sizeStage(d.width, d.height);
  img.src = `data:${mimeOf(d.format)};base64,${d.image}`;
  img.alt = `Preview at step ${d.step} of ${d.total}`;
  img.classList.add("is-preview");
  img.hidden = false;
  stageNote("");
  const how = d.method ? ` (${d.method}${d.width ? `, ${d.width}×${d.height}` : ""})` : "";
  setText("result-caption", `Preview, step ${d.step} / ${d.total}${how}`);
}

function onComplete(job, d, raw) {
  job.status = "completed";
  if (typeof d.at === "number") job.finishedAt = d.at;
  job.seed = seedFromRaw(raw) ?? (d.seed !== undefined ? String(d.seed) : null);
  if (d.width) job.width = d.width;
  if (d.height) job.height = d.height;
  job.step = job.total || job.step;
  const src = d.image ? `data:${mimeOf(d.format)};base64,${d.image}` : imageUrl(job.id);
  showFinal(job, src);
  endStream(job);
}

function showFinal(job, src) {
  const img = $("result-image");
  sizeStage(job.width, job.height);
  img.src = src;
  img.alt = `Generated image: ${job.prompt || "final image"}`;
  img.classList.remove("is-preview");
  img.hidden = false;
  stageNote("");
  setText("result-caption", `Final image, ${job.width || "?"}×${job.height || "?"}`);
  $("progress").max = 1;
  $("progress").value = 1;
  // The service's own timestamps give the whole job's speed, also for a job too quick (or replayed too
  // fast) for the live samples to measure.
  const span = job.startedAt && job.finishedAt ? job.finishedAt - job.startedAt : 0;
  const r = span > 0 && job.total ? job.total / span : rate();
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
  if (!$("result-image").hidden) setText("result-caption", `Last preview before it was ${cancelled ? "cancelled" : "stopped"}`);
  else stageNote(cancelled ? "Cancelled before the first preview." : "No image: the job failed.");
  endStream(job);
}

function endStream(job) {
  if (state.stream) state.stream.close();
  state.stream = null;
  $("cancel").disabled = true;
  saveJobs();
  hooks.render();
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
    job.width = job.width || body.width || params.width || null;
    job.height = job.height || body.height || params.height || null;
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

export async function cancelJob(id) {
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
    hooks.render();
  }
}
