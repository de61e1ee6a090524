// Jobs guided by images: ControlNet units (with a preview of each unit's control map), a reference
// image for the IP-Adapter, reference images for an edit model, and the hires fix. The lists come from
// /v1/info (controlnets, preprocessors, ip_adapters, hires_upscalers, library[].edit_references); the
// body fields are the native API's (controlnet[], ip_adapter, reference_images, hires).

import { clearFieldError, showFieldError, showFormError } from "./errors.js";
import { $, state } from "./state.js";

const MAX_UNITS = 4; // the service's bound (domain/controlnet.py)
const units = new WeakMap(); // unit row -> {image: base64 | null, map: "idle" | "busy" | "ready" | "failed"}
let ipImage = null; // base64 of the IP-Adapter's reference image
let editImages = []; // base64 of the edit model's reference images
let editLimit = 0; // the picked model's reference images at most; 0 = not an edit model

function readAsDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error);
    r.readAsDataURL(blob);
  });
}

/** A picked file as base64 (no data: prefix), or null after saying why under ``errorKey``. */
async function fileBase64(file, errorKey) {
  if (!file || (file.type && !file.type.startsWith("image/"))) {
    showFieldError(errorKey, "That file is not an image. Choose a PNG, JPEG or WebP picture.");
    return null;
  }
  clearFieldError(errorKey);
  const url = await readAsDataUrl(file);
  return String(url).split(",", 2)[1];
}

/** What saveForm kept for a picker whose options only exist once /v1/info answered. */
function savedValue(id) {
  try {
    return (JSON.parse(sessionStorage.getItem("sdworker.form") || "{}") || {})[id] || "";
  } catch (_) {
    return "";
  }
}

function fillSelect(select, names, first) {
  const keep = select.value || (select.id ? savedValue(select.id) : "");
  select.innerHTML = "";
  if (first) select.append(new Option(first, ""));
  for (const name of names) select.append(new Option(name, name));
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
}

// ---------------------------------------------------------------- ControlNet units

function number(className, label, attrs) {
  const wrap = document.createElement("label");
  wrap.className = "field";
  wrap.textContent = label;
  const input = document.createElement("input");
  input.type = "number";
  input.className = className;
  Object.assign(input, attrs);
  wrap.append(input);
  return wrap;
}

/** Ask the service for the unit's control map (POST /v1/controlnets/preprocess) and show it. */
async function refreshMap(row) {
  const unit = units.get(row);
  const map = row.querySelector(".cn-map");
  const note = row.querySelector(".cn-note");
  if (!unit || !unit.image) return;
  unit.map = "busy";
  note.textContent = "Making the control map…";
  const body = { image: unit.image, preprocessor: row.querySelector(".cn-preprocessor").value };
  let res;
  try {
    res = await fetch("/v1/controlnets/preprocess", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
  } catch (_) {
    unit.map = "failed";
    note.textContent = "Cannot reach the worker for the control map.";
    return;
  }
  if (!res.ok) {
    let message = `The worker answered ${res.status}.`;
    try {
      const err = await res.json();
      message = (err.error && err.error.message) || message;
    } catch (_) {
      /* not JSON */
    }
    unit.map = "failed";
    map.hidden = true;
    note.textContent = message;
    return;
  }
  const { image, preprocessor } = await res.json();
  map.src = `data:image/png;base64,${image}`;
  map.alt = `Control map (${preprocessor})`;
  map.hidden = false;
  unit.map = "ready";
  note.textContent = `Control map: ${preprocessor}. The job resizes it to the image size.`;
}

/** One unit: a ControlNet of GET /v1/controlnets, its control image, preprocessor, weight, start, end. */
export function addControlUnit() {
  const list = $("controlnet-units");
  if (list.children.length >= MAX_UNITS) return null;
  const row = document.createElement("div");
  row.className = "cn-unit";
  units.set(row, { image: null, map: "idle" });

  const head = document.createElement("div");
  head.className = "seed-row";
  const model = document.createElement("select");
  model.className = "cn-model";
  model.setAttribute("aria-label", "ControlNet model");
  fillSelect(model, (state.info && state.info.controlnets) || [], "Choose a ControlNet");
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "secondary";
  remove.textContent = "Remove";
  remove.addEventListener("click", () => row.remove());
  head.append(model, remove);

  const file = document.createElement("input");
  file.type = "file";
  file.className = "cn-file";
  file.accept = "image/png,image/jpeg,image/webp";
  file.setAttribute("aria-label", "Control image");

  const grid = document.createElement("div");
  grid.className = "grid2";
  const pre = document.createElement("label");
  pre.className = "field";
  pre.textContent = "Preprocessor";
  const preprocessor = document.createElement("select");
  preprocessor.className = "cn-preprocessor";
  fillSelect(preprocessor, (state.info && state.info.preprocessors) || ["none", "canny", "invert", "threshold"]);
  pre.append(preprocessor);
  grid.append(
    pre,
    number("cn-weight", "Weight", { min: 0, max: 2, step: 0.05, value: "1" }),
    number("cn-start", "Start (fraction of steps)", { min: 0, max: 1, step: 0.05, value: "0" }),
    number("cn-end", "End", { min: 0, max: 1, step: 0.05, value: "1" }),
  );

  const maps = document.createElement("div");
  maps.className = "cn-maps";
  const source = document.createElement("img");
  source.className = "cn-image";
  source.alt = "Control image";
  source.hidden = true;
  const map = document.createElement("img");
  map.className = "cn-map";
  map.hidden = true;
  maps.append(source, map);
  const note = document.createElement("p");
  note.className = "hint cn-note";
  note.setAttribute("aria-live", "polite");

  file.addEventListener("change", async () => {
    const image = await fileBase64(file.files[0], "controlnet");
    if (image === null) return;
    units.get(row).image = image;
    source.src = `data:${file.files[0].type || "image/png"};base64,${image}`;
    source.hidden = false;
    refreshMap(row);
  });
  preprocessor.addEventListener("change", () => refreshMap(row));

  row.append(head, file, grid, maps, note);
  list.append(row);
  return row;
}

function controlUnits() {
  const out = [];
  for (const [index, row] of [...document.querySelectorAll("#controlnet-units .cn-unit")].entries()) {
    const unit = units.get(row);
    const model = row.querySelector(".cn-model").value;
    if (!model && !unit.image) continue; // an untouched row
    if (!model || !unit.image) {
      showFieldError("controlnet", `Unit ${index + 1}: choose a ControlNet and a control image.`);
      return null;
    }
    out.push({
      model, image: unit.image, preprocessor: row.querySelector(".cn-preprocessor").value,
      weight: Number(row.querySelector(".cn-weight").value), start: Number(row.querySelector(".cn-start").value),
      end: Number(row.querySelector(".cn-end").value),
    });
  }
  return out;
}

// ---------------------------------------------------------------- what the worker has

/** Called with /v1/info: fill the pickers, show the IP-Adapter only where the worker has one. */
export function applyGuidance(info) {
  const controlnets = info.controlnets || [];
  $("controlnet-none").hidden = controlnets.length > 0;
  $("controlnet-add").disabled = controlnets.length === 0;
  for (const select of document.querySelectorAll("#controlnet-units .cn-model")) {
    fillSelect(select, controlnets, "Choose a ControlNet");
  }
  const adapters = info.ip_adapters || [];
  $("ip-adapter-section").hidden = adapters.length === 0;
  fillSelect($("ip-adapter-model"), adapters, "None");
  const upscalers = info.hires_upscalers || [];
  if (upscalers.length) fillSelect($("hires-upscaler"), upscalers);
  applyModelKind();
}

/** The picked model (or the default one) decides whether the job is an edit with reference images. */
export function applyModelKind() {
  const library = (state.info && state.info.library) || [];
  const picked = $("model").value;
  const entry = library.find((m) => m.id === picked) || (!picked && library.find((m) => m.default));
  editLimit = (entry && entry.edit_references) || 0;
  $("edit-section").hidden = editLimit === 0;
  $("edit-limit").textContent = String(editLimit);
  $("modes").disabled = editLimit > 0;
  // The mode's own handler (form.js: applyMode) shows or hides the input image for the new kind.
  document.querySelector('input[name="mode"]:checked').dispatchEvent(new Event("change", { bubbles: true }));
}

/** True when the job is an edit (the model is an edit model): the mode buttons do not apply. */
export function isEdit() {
  return editLimit > 0;
}

// ---------------------------------------------------------------- the body

/** Add the guidance fields to a job body; false after showing why it cannot be sent. */
export function addGuidance(body, mode) {
  if (editLimit > 0) {
    if (!editImages.length) {
      showFieldError("reference_images", "Choose the image(s) to edit first.");
      showFormError("No image to edit.", " An edit model changes the reference images as the prompt says.");
      return false;
    }
    body.operation = "image_edit";
    body.reference_images = editImages.slice(0, editLimit);
  }
  const made = controlUnits();
  if (made === null) return false;
  if (made.length) body.controlnet = made;
  const adapter = $("ip-adapter-model").value;
  if (adapter && !$("ip-adapter-section").hidden) {
    if (!ipImage) {
      showFieldError("ip_adapter", "Choose a reference image for the IP-Adapter (or pick None).");
      return false;
    }
    body.ip_adapter = { model: adapter, images: [ipImage], scale: Number($("ip-adapter-scale").value) };
  }
  if ($("hires-enable").checked) {
    if (mode !== "txt2img" || editLimit > 0) {
      showFieldError("hires", "The hires fix runs on text to image jobs only.");
      return false;
    }
    const steps = Number($("hires-steps").value);
    body.hires = {
      scale: Number($("hires-scale").value), upscaler: $("hires-upscaler").value,
      strength: Number($("hires-strength").value),
    };
    if (steps > 0) body.hires.steps = steps;
  }
  return true;
}

// ---------------------------------------------------------------- wiring

export function initGuidance() {
  $("controlnet-add").addEventListener("click", () => addControlUnit());
  $("ip-adapter-file").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    ipImage = await fileBase64(file, "ip_adapter");
    $("ip-adapter-preview").hidden = ipImage === null;
    if (ipImage !== null) $("ip-adapter-preview").src = `data:${file.type || "image/png"};base64,${ipImage}`;
  });
  $("edit-files").addEventListener("change", async (e) => {
    const files = [...e.target.files];
    const list = $("edit-previews");
    list.innerHTML = "";
    editImages = [];
    for (const file of files.slice(0, editLimit || files.length)) {
      const image = await fileBase64(file, "reference_images");
      if (image === null) return;
      editImages.push(image);
      const img = document.createElement("img");
      img.src = `data:${file.type || "image/png"};base64,${image}`;
      img.alt = `Reference image ${editImages.length}`;
      list.append(img);
    }
    if (files.length > editLimit) {
      showFieldError("reference_images", `This model takes at most ${editLimit}; the first ${editLimit} are used.`);
    }
  });
  const hiresFields = () => {
    const on = $("hires-enable").checked;
    $("hires-fields").hidden = !on;
  };
  $("hires-enable").addEventListener("change", hiresFields);
  hiresFields();
  $("model").addEventListener("change", applyModelKind);
}
