// The request form, built from the chosen model's schema: its fields, the reference image,
// the checks before sending, and the marks a mistake leaves on the fields.

import { $, codePoints, el, formatBytes } from "./dom.js";
import { renderAlert } from "./errors.js";
import { checkValue, fieldHelp, fieldsOf, sizeLabel } from "./schema.js";
import { emit, state } from "./state.js";

const changed = () => emit("form-changed");

export function markInvalid(input, invalid) {
  if (!input) return;
  if (invalid === false) input.removeAttribute("aria-invalid");
  else input.setAttribute("aria-invalid", "true");
}

export function setFieldError(field, message) {
  const box = $(`field-${field.name}`);
  const error = $(`error-${field.name}`);
  if (!box || !error) return;
  box.classList.toggle("invalid", Boolean(message));
  error.textContent = message || "";
  error.hidden = !message;
  for (const input of box.querySelectorAll("input, select, textarea")) {
    if (input.type === "radio") continue;
    markInvalid(input, message ? null : false);
  }
}

function focusField(field) {
  if (field.advanced) $("advanced").open = true;
  const box = $(`field-${field.name}`);
  const input = box && box.querySelector("textarea, select, input:not([type=radio])");
  if (input) input.focus();
}

export function clearErrors() {
  $("form-error").hidden = true;
  $("form-error").replaceChildren();
  markInvalid($("api-key"), false);
  for (const field of state.fields) setFieldError(field, null);
}

// The summary of a form mistake goes once every field it named is fixed.
export function refreshFormAlert() {
  const alert = $("form-error");
  if (alert.hidden || !["client", "400"].includes(alert.dataset.status)) return;
  if (!document.querySelector("#gen-form .field.invalid")) alert.hidden = true;
}

// The server's 400 names the field in `param`: its message goes under that field as written.
export function showFormError(info) {
  renderAlert($("form-error"), info);
  if (info.field === "api-key") markInvalid($("api-key"), null);
  else if (info.field) {
    const field = state.fields.find((f) => f.name === info.field);
    if (field) {
      setFieldError(field, info.message);
      focusField(field);
    }
  }
  if (info.retryAfter) startRetryCountdown(info.retryAfter);
}

export function showProblems(problems) {
  for (const { field, message } of problems) setFieldError(field, message);
  if (problems.some((p) => p.field.advanced)) $("advanced").open = true;
  renderAlert($("form-error"), {
    title: "Check the form",
    message: problems.map((p) => `${p.field.title}: ${p.message}`).join("; "),
    status: "client",
  });
  focusField(problems[0].field);
}

let retryTimer = null;

// After a 429: the Generate button waits out the Retry-After, counting down.
export function startRetryCountdown(seconds) {
  clearInterval(retryTimer);
  state.retryUntil = Date.now() + seconds * 1000;
  const button = $("generate");
  const tick = () => {
    const left = Math.ceil((state.retryUntil - Date.now()) / 1000);
    for (const node of document.querySelectorAll(".countdown")) node.textContent = String(Math.max(0, left));
    if (left <= 0) {
      clearInterval(retryTimer);
      button.disabled = false;
      $("retry-countdown").textContent = "";
      return;
    }
    button.disabled = true;
    $("retry-countdown").textContent = `Rate limited: you can submit again in ${left} s.`;
  };
  tick();
  retryTimer = setInterval(tick, 250);
}

// --- building the fields ---------------------------------------------------------------------
function buildField(field) {
  const id = `param-${field.name}`;
  const helpId = `help-${field.name}`;
  const errorId = `error-${field.name}`;
  const box = el("div", { class: "field", id: `field-${field.name}`, "data-param": field.name });
  const describedBy = `${helpId} ${errorId}`;
  const help = el("p", { class: "help", id: helpId, text: fieldHelp(field) });
  const error = el("p", { class: "field-error", id: errorId, hidden: true, role: "alert" });
  const saved = state.values[field.name];

  if (field.kind === "reference") {
    box.classList.add("full");
    box.append(buildReference(field, describedBy), help, error);
    return box;
  }
  const input = buildInput(field, id, describedBy, saved);
  const label = el("label", { for: id }, field.title, field.required ? el("span", { class: "req", "aria-hidden": "true", text: "*" }) : null);
  box.append(label, input);
  if (field.kind === "textarea") box.classList.add("full");
  if (field.kind === "textarea" && field.maxLength) {
    const counter = el("span", { class: "counter", id: `counter-${field.name}`, "aria-live": "off" });
    box.append(counter);
    const update = () => {
      const n = codePoints(input.value);
      counter.textContent = `${n} / ${field.maxLength}`;
      counter.classList.toggle("over", n > field.maxLength);
    };
    input.addEventListener("input", update);
    update();
  }
  box.append(help, error);
  return box;
}

function buildInput(field, id, describedBy, saved) {
  const common = { id, name: field.name, "aria-describedby": describedBy };
  const required = field.required ? "true" : null;
  const text = saved !== undefined ? saved : typeof field.default === "string" ? field.default : "";
  if (field.kind === "select") {
    const input = el("select", { ...common, required: field.required });
    if (!field.required && (field.default === null || field.default === undefined)) {
      input.append(el("option", { value: "", text: "(model default)" }));
    }
    for (const value of field.options) {
      const label = field.name === "size" ? sizeLabel(value) : field.name === "duration" ? `${value} s` : String(value);
      input.append(el("option", { value: String(value), text: label }));
    }
    const initial = saved !== undefined ? saved : field.default;
    if (initial !== undefined && initial !== null && field.options.some((o) => String(o) === String(initial))) {
      input.value = String(initial);
    }
    return input;
  }
  if (field.kind === "textarea") {
    const placeholder = field.name === "prompt" ? "A red fox trotting through fresh snow at dawn, cinematic" : null;
    const input = el("textarea", { ...common, rows: field.name === "prompt" ? 4 : 2, "aria-required": required, placeholder });
    input.value = text;
    return input;
  }
  if (field.kind === "checkbox") {
    const input = el("input", { ...common, type: "checkbox" });
    input.checked = saved !== undefined ? Boolean(saved) : Boolean(field.default);
    return input;
  }
  if (field.kind === "number") {
    const input = el("input", {
      ...common,
      type: "number",
      inputmode: field.type === "integer" ? "numeric" : "decimal",
      step: field.type === "integer" ? "1" : "any",
      min: field.minimum,
      max: field.maximum,
      placeholder: field.default === null || field.default === undefined ? "default" : String(field.default),
      "aria-required": required,
    });
    if (saved !== undefined) input.value = saved;
    return input;
  }
  const input = el("input", { ...common, type: "text", "aria-required": required });
  input.value = text;
  return input;
}

function buildReference(field, describedBy) {
  const mode = state.values.input_reference_mode || "none";
  const group = el("fieldset", { class: "ref-modes", id: "param-input_reference", "aria-describedby": describedBy });
  group.append(el("legend", { text: field.title }));
  for (const [value, text] of [
    ["none", "None"],
    ["file", "Upload an image"],
    ["url", "Image URL"],
  ]) {
    const radio = el("input", { type: "radio", name: "input_reference_mode", value, id: `ref-mode-${value}` });
    radio.checked = value === mode;
    radio.addEventListener("change", () => {
      state.values.input_reference_mode = value;
      setFieldError(field, null);
      refreshFormAlert();
      syncReference();
      changed();
    });
    group.append(el("label", { for: `ref-mode-${value}` }, radio, text));
  }
  const file = el("input", {
    type: "file",
    id: "ref-file",
    accept: "image/png,image/jpeg,image/webp,image/gif,image/*",
    "aria-label": "Reference image file",
  });
  file.addEventListener("change", () => readReference(file.files && file.files[0]));
  const url = el("input", {
    type: "url",
    id: "ref-url",
    inputmode: "url",
    placeholder: "https://example.com/first-frame.png",
    "aria-label": "Reference image URL",
  });
  url.value = state.values.input_reference_url || "";
  url.addEventListener("input", () => {
    state.values.input_reference_url = url.value;
    changed();
  });
  const preview = el("img", { id: "ref-preview", class: "ref-preview", alt: "Preview of the reference image", hidden: true });
  const info = el("span", { id: "ref-info", class: "help", "aria-live": "polite" });
  preview.addEventListener("load", () => {
    if (state.reference) info.textContent = `${preview.naturalWidth} × ${preview.naturalHeight} px, ${formatBytes(state.reference.size)}`;
  });
  const wrap = el(
    "div",
    { class: "ref-inputs" },
    el("div", { id: "ref-file-row" }, file, info, el("div", { class: "ref-preview-wrap" }, preview)),
    el("div", { id: "ref-url-row" }, url),
  );
  return el("div", {}, group, wrap);
}

function syncReference() {
  const mode = state.values.input_reference_mode || "none";
  const fileRow = $("ref-file-row");
  if (!fileRow) return;
  fileRow.hidden = mode !== "file";
  $("ref-url-row").hidden = mode !== "url";
  const preview = $("ref-preview");
  if (state.reference && mode === "file") {
    if (preview.getAttribute("src") !== state.reference.dataUri) preview.src = state.reference.dataUri;
    preview.hidden = false;
    if (!$("ref-file").files.length) $("ref-info").textContent = `${state.reference.name}, ${formatBytes(state.reference.size)}`;
  } else {
    preview.hidden = true;
    $("ref-info").textContent = "";
  }
}

function readReference(file) {
  const field = state.fields.find((f) => f.name === "input_reference");
  if (!file) {
    state.reference = null;
    syncReference();
    changed();
    return;
  }
  if (!file.type.startsWith("image/")) {
    state.reference = null;
    if (field) setFieldError(field, `${file.name} is not an image`);
    return;
  }
  const reader = new FileReader();
  reader.addEventListener("load", () => {
    state.reference = { dataUri: String(reader.result), name: file.name, type: file.type, size: file.size };
    if (field) setFieldError(field, null);
    refreshFormAlert();
    syncReference();
    changed();
  });
  reader.addEventListener("error", () => {
    if (field) setFieldError(field, `could not read ${file.name}`);
  });
  reader.readAsDataURL(file);
}

function rememberValues() {
  for (const field of state.fields) {
    const input = $(`param-${field.name}`);
    if (!input || field.kind === "reference") continue;
    state.values[field.name] = field.kind === "checkbox" ? input.checked : input.value;
  }
}

export function renderForm() {
  rememberValues();
  const main = $("fields");
  const advanced = $("advanced-fields");
  main.replaceChildren();
  advanced.replaceChildren();
  state.fields = [];
  if (!state.model) {
    main.append(el("p", { class: "muted", text: "No model to choose from." }));
    main.dataset.ready = "false";
    return;
  }
  for (const field of fieldsOf(state.model)) {
    state.fields.push(field);
    (field.advanced ? advanced : main).append(buildField(field));
  }
  $("advanced").hidden = advanced.childElementCount === 0;
  syncReference();
  main.dataset.ready = "true";
}

// --- reading the form ------------------------------------------------------------------------
function referenceValue(field) {
  const mode = state.values.input_reference_mode || "none";
  if (mode === "file") return state.reference ? { value: state.reference.dataUri } : { problem: "choose an image file, or pick None" };
  if (mode === "url") {
    const url = ($("ref-url").value || "").trim();
    if (!url) return { problem: "enter the image's URL, or pick None" };
    if (!/^https?:\/\/[^/\s]+/i.test(url)) return { problem: "must be an http:// or https:// URL" };
    return { value: url };
  }
  return field.required ? { problem: "required" } : { skip: true };
}

// The request's parameters, and the rule each field breaks.
export function collect() {
  const params = {};
  const problems = [];
  for (const field of state.fields) {
    let outcome;
    if (field.kind === "reference") outcome = referenceValue(field);
    else {
      const input = $(`param-${field.name}`);
      if (!input) continue;
      if (field.kind === "checkbox") {
        outcome = input.checked || field.default !== undefined ? { value: input.checked } : { skip: true };
      } else {
        outcome = checkValue(field, input.value, { badInput: Boolean(input.validity && input.validity.badInput) });
      }
    }
    if (outcome.problem) problems.push({ field, message: outcome.problem });
    else if (!outcome.skip) params[field.name] = outcome.value;
  }
  return { params, problems };
}
