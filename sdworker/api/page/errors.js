// Errors shown to the person in plain words, next to the field the service named.

import { $, plural } from "./state.js";

const FIELD_LABELS = {
  prompt: "Prompt", negative_prompt: "Negative prompt", width: "Width", height: "Height", steps: "Steps",
  guidance_scale: "Guidance", seed: "Seed", scheduler: "Scheduler", strength: "Strength",
  input_image: "Input image", init_image: "Input image", mask_image: "Mask", preview: "Preview settings",
  controlnet: "ControlNet", ip_adapter: "IP-Adapter", hires: "Hires fix", reference_images: "Images to edit",
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

export function showFieldError(key, message) {
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
  const section = { controlnet: "controlnet-section", ip_adapter: "ip-adapter-section", hires: "hires-section" }[key];
  if (section) $(section).open = true;
}

export function showFieldNote(key, message) {
  const err = $(`${key}-error`);
  err.textContent = message;
  err.hidden = false;
  err.classList.add("hint");
}

export function clearFieldError(key) {
  const err = $(`${key}-error`);
  if (err) err.hidden = true;
  document.querySelectorAll("[aria-invalid]").forEach((el) => {
    if (!key || el.getAttribute("aria-describedby") === `${key}-error`) el.removeAttribute("aria-invalid");
  });
}

export function clearErrors() {
  stopCountdown();
  document.querySelectorAll(".field-error").forEach((el) => (el.hidden = true));
  document.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
  $("form-error").hidden = true;
}

let countdown = null;

/** 429: say so, and count the service's Retry-After down so the message does not go stale. */
function queueFull(seconds) {
  let left = Number.isFinite(seconds) && seconds > 0 ? Math.ceil(seconds) : 0;
  const show = () =>
    showFormError(
      "The queue is full.",
      left > 0 ? ` Retry in ${plural(left, "second")}; nothing was added.` : " Nothing was added; you can try again now.",
    );
  show();
  countdown = setInterval(() => {
    left -= 1;
    if (left >= 0) show();
    if (left <= 0) stopCountdown();
  }, 1000);
}

function stopCountdown() {
  if (countdown !== null) clearInterval(countdown);
  countdown = null;
}

export function showFormError(title, detail) {
  if (title !== "The queue is full.") stopCountdown();
  const box = $("form-error");
  box.innerHTML = "";
  const strong = document.createElement("strong");
  strong.textContent = title;
  box.append(strong);
  if (detail) box.append(document.createTextNode(detail));
  box.hidden = false;
}

/** Turn a 4xx/5xx JSON body into plain words; accepts our {code, message, field} and FastAPI's {detail}. */
export function describeError(body) {
  let message = "";
  let field = null;
  const detail = body && body.detail;
  if (body && typeof body.message === "string") {
    message = body.message;
    field = body.field ?? (body.error && body.error.field);
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

export async function reportHttpError(res) {
  let body = null;
  try {
    body = await res.json();
  } catch (_) {
    /* not JSON */
  }
  if (res.status === 429) {
    queueFull(Number(res.headers.get("Retry-After")));
    return;
  }
  const { message, field } = describeError(body);
  const key = fieldKey(field);
  const label = key ? FIELD_LABELS[key] || key : null;
  // Next to the field its name is implied: "width: must be ..." reads "must be ...".
  const local = message.replace(/^[\w.]+: /, "");
  if (key) showFieldError(key, local || "This value was not accepted.");
  if (res.status === 413) {
    showFormError("Too large.", " " + (message || "The request is bigger than the worker accepts."));
  } else if (res.status >= 500) {
    showFormError("The worker could not take the job.", " " + (message || `It answered ${res.status}.`));
  } else {
    showFormError(label ? `${label}: not accepted.` : "The worker refused the job.", " " + (message || `(${res.status})`));
  }
}
