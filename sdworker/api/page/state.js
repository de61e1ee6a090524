// Shared state of the page and the small helpers every part uses.

import { signedUrl } from "./auth.js";

export const $ = (id) => document.getElementById(id);
export const ACTIVE = new Set(["submitted", "queued", "running"]);
const STORE_KEY = "sdworker.jobs";

export const state = {
  info: null,
  input: null, // {base64, width, height, dataUrl}
  jobs: [], // {id, prompt, mode, status, position, step, total, seed, width, height, message}
  focusedId: null,
  pinned: false, // the person chose a finished job to look at: do not jump to the running one
  stream: null,
  samples: [], // {step, t} for it/s
  lastSeed: null,
  previewDefaultsApplied: false,
  modelDefaultsApplied: false, // the model's and the device's starting values (app.js)
};

/** Set by app.js: redraws the queue list and the strip after a job changes. */
export const hooks = { render: () => {} };

// ---------------------------------------------------------------- small helpers

export function jobById(id) {
  return state.jobs.find((j) => j.id === id) || null;
}

export function saveJobs() {
  try {
    sessionStorage.setItem(STORE_KEY, JSON.stringify(state.jobs.slice(-40)));
  } catch (_) {
    /* storage full or disabled: the page still works, it just forgets on reload */
  }
}

export function loadJobs() {
  try {
    const raw = sessionStorage.getItem(STORE_KEY);
    state.jobs = raw ? JSON.parse(raw) : [];
  } catch (_) {
    state.jobs = [];
  }
}

export function hashJobId() {
  const m = /(?:^|[#&])job=([^&]+)/.exec(location.hash);
  return m ? decodeURIComponent(m[1]) : null;
}

export function mimeOf(format) {
  const f = String(format || "png").toLowerCase();
  return f === "jpg" ? "image/jpeg" : `image/${f}`;
}

/** Seeds are u64: JSON.parse would round those above 2^53, so read the digits from the raw text. */
export function seedFromRaw(raw) {
  const m = /"seed"\s*:\s*"?(-?\d+)/.exec(raw || "");
  return m ? m[1] : null;
}

export function setText(id, text) {
  $(id).textContent = text;
}

export function setStatus(text, kind) {
  const el = $("job-status");
  el.textContent = text;
  el.className = "job-status" + (kind ? " " + kind : "");
}

export function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

export function imageUrl(id) {
  return signedUrl(id, `/v1/jobs/${encodeURIComponent(id)}/image`);
}
