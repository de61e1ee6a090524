// The form: modes, the input image (upload or drop) and its mask, the seed, and the request body.

import { showFieldError, showFieldNote, clearFieldError, showFormError } from "./errors.js";
import { addGuidance, isEdit } from "./guide.js";
import { MaskEditor } from "./mask.js";
import { $, state } from "./state.js";

export const maskEditor = new MaskEditor($("mask-canvas"));

export function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

export function applyMode() {
  const m = mode();
  const usesImage = m !== "txt2img" && !isEdit(); // an edit model takes its own images (guide.js)
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

export async function setInputImage(blob) {
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
  // PNG and WebP go as they are. A JPEG is redrawn: the browser shows it turned by its EXIF
  // orientation, the server would not, and the mask must match what the person painted on.
  const asIs = ["image/png", "image/webp"].includes(blob.type);
  if (size.width !== w || size.height !== h || !asIs) {
    // Redrawn at the size sent, so the image, the mask and width/height all agree.
    const c = document.createElement("canvas");
    c.width = size.width;
    c.height = size.height;
    c.getContext("2d").drawImage(img, 0, 0, size.width, size.height);
    dataUrl = blob.type === "image/jpeg" ? c.toDataURL("image/jpeg", 0.95) : c.toDataURL("image/png");
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

export function randomSeed() {
  const a = new Uint32Array(1);
  crypto.getRandomValues(a);
  return String(a[0]);
}

function numberField(id) {
  const el = $(id);
  if (el.value.trim() === "") return undefined;
  const n = Number(el.value);
  return Number.isFinite(n) ? n : el.value;
}

/** The JSON body for POST /v1/jobs, or null after showing why it cannot be sent. */
export function buildBody() {
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
  if ($("model").value) body.model = $("model").value;
  const loras = [...document.querySelectorAll("#lora-rows .lora-row")]
    .map((row) => ({ path: row.querySelector(".lora-name").value, strength: Number(row.querySelector(".lora-weight").value) }))
    .filter((lora) => lora.path);
  if (loras.length) body.loras = loras;
  const preview = {
    every: numberField("preview-every"),
    min_interval_ms: numberField("preview-interval"),
    method: $("preview-method").value,
    max_size: numberField("preview-max-size"),
    format: $("preview-format").value,
  };
  for (const k of Object.keys(preview)) if (preview[k] === undefined) delete preview[k];
  body.preview = preview;
  if (m !== "txt2img" && !isEdit()) {
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
  return addGuidance(body, m) ? body : null;
}

/** JSON text with the seed's digits spliced in, so a 64-bit seed is sent exactly. */
export function bodyText(body) {
  const seed = $("seed").value.trim();
  if (seed === "") return JSON.stringify(body);
  if (/^-?\d+$/.test(seed)) return JSON.stringify({ ...body, seed: "__SEED__" }).replace('"__SEED__"', seed);
  return JSON.stringify({ ...body, seed });
}

// ---------------------------------------------------------------- keeping the form across reloads

const FORM_KEY = "sdworker.form";

/** Remember what the person typed (not the images) for this tab, so a reload keeps the form. */
export function saveForm() {
  const values = { previewOpen: $("preview-settings").open };
  // What the page itself filled in (applyModelDefaults), so a field still counts as unedited after a reload.
  for (const id of DEFAULT_FIELDS) if ($(id).dataset.auto !== undefined) values[`auto:${id}`] = $(id).dataset.auto;
  for (const el of $("job-form").elements) {
    if (el.type === "file" || el.type === "submit" || el.type === "button" || !el.name) continue;
    if (el.type === "radio") {
      if (el.checked) values[`radio:${el.name}`] = el.value;
    } else if (el.id) values[el.id] = el.value;
  }
  try {
    sessionStorage.setItem(FORM_KEY, JSON.stringify(values));
  } catch (_) {
    /* storage unavailable: nothing to keep */
  }
}

/** Put back what saveForm kept; true when there was something (the server's defaults then stay out). */
export function restoreForm() {
  let values;
  try {
    values = JSON.parse(sessionStorage.getItem(FORM_KEY) || "null");
  } catch (_) {
    values = null;
  }
  if (!values) return false;
  for (const el of $("job-form").elements) {
    if (el.type === "radio") {
      const chosen = values[`radio:${el.name}`];
      if (chosen !== undefined) el.checked = el.value === chosen;
    } else if (el.id && el.type !== "file" && values[el.id] !== undefined) {
      el.value = values[el.id];
    }
  }
  for (const id of DEFAULT_FIELDS) if (values[`auto:${id}`] !== undefined) $(id).dataset.auto = values[`auto:${id}`];
  $("preview-settings").open = !!values.previewOpen;
  return true;
}

// ---------------------------------------------------------------- the model's defaults

const DEFAULT_FIELDS = ["width", "height", "steps", "guidance_scale"];
// Steps are slow on a CPU (512 px at 20 steps took minutes even on the demo model), so on a CPU device the
// page starts at min(the model's default, this) steps: a newcomer's first image comes in seconds. Only the
// start is capped: picking a model in the list shows that model's own defaults, as its authors recommend.
const CPU_START_STEPS = 8;

/** Fill width, height, steps and guidance with a library entry's defaults (GET /v1/models), except where
 * the person edited a field: a value other than the one the page last put there (or the HTML's own).
 * ``device`` is given for the page's starting values only, for the CPU cap above. */
export function applyModelDefaults(entry, device = "") {
  const d = (entry && entry.defaults) || {};
  const values = { width: d.width, height: d.height, steps: d.steps, guidance_scale: d.guidance_scale };
  if (String(device).startsWith("cpu")) {
    values.steps = Math.min(Number(values.steps ?? $("steps").value) || CPU_START_STEPS, CPU_START_STEPS);
  }
  for (const id of DEFAULT_FIELDS) {
    const el = $(id);
    if (values[id] === undefined || values[id] === null || el.value !== (el.dataset.auto ?? el.defaultValue)) continue;
    el.value = el.dataset.auto = String(values[id]);
  }
  if (entry && entry.size_multiple) for (const id of ["width", "height"]) $(id).step = entry.size_multiple;
}

// ---------------------------------------------------------------- LoRA rows

/** One LoRA row: a LoRA of GET /v1/loras (from /v1/info), its weight, and a remove button. */
export function addLoraRow(name = "", weight = 1) {
  const row = document.createElement("div");
  row.className = "lora-row seed-row";
  const select = document.createElement("select");
  select.className = "lora-name";
  select.setAttribute("aria-label", "LoRA");
  select.append(new Option("Choose a LoRA", ""));
  for (const lora of (state.info && state.info.loras) || []) {
    const family = lora.family ? ` (${lora.family})` : "";
    select.append(new Option(`${lora.name}${family}`, lora.name));
  }
  select.value = name;
  const input = document.createElement("input");
  input.type = "number";
  input.className = "lora-weight";
  input.setAttribute("aria-label", "LoRA weight");
  Object.assign(input, { min: -10, max: 10, step: 0.05, value: String(weight) });
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "secondary lora-remove";
  remove.textContent = "Remove";
  remove.addEventListener("click", () => row.remove());
  row.append(select, input, remove);
  $("lora-rows").append(row);
  return row;
}
