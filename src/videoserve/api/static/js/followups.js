// Extend or edit a finished video from its card, in the OpenAI dialect the routes belong to:
// POST /v1/videos/extensions {"prompt", "seconds", "video": {"id"}} and POST /v1/videos/edits
// {"prompt", "video": {"id"}}, the key as `Authorization: Bearer`. Both dialects share request
// ids, so the new request is followed and listed like one made from the form.

import { api } from "./api.js";
import { $, el, toast } from "./dom.js";
import { describe, renderAlert } from "./errors.js";
import { fieldsOf } from "./schema.js";
import { emit, state, statusOf } from "./state.js";

const KINDS = {
  extend: { path: "/v1/videos/extensions", title: "Extend the video", action: "Extend", done: "Extension queued." },
  edit: { path: "/v1/videos/edits", title: "Edit the video", action: "Edit", done: "Edit queued." },
};
// OpenAI's VideoSeconds, sent as strings as its SDK does; a model's own durations win.
const DEFAULT_SECONDS = ["4", "8", "12"];

let current = null; // {kind, source: {id, model, prompt}} while the dialog is open

// The card's "Extend" and "Edit" buttons for a completed request.
export function followupButtons(source) {
  const label = source.prompt || source.id;
  return [
    el("button", { type: "button", class: "ghost small", "data-action": "extend", "aria-label": `Extend: ${label}`, text: "Extend", onclick: () => openFollowup("extend", source) }),
    el("button", { type: "button", class: "ghost small", "data-action": "edit", "aria-label": `Edit: ${label}`, text: "Edit", onclick: () => openFollowup("edit", source) }),
  ];
}

function secondsChoices(modelId) {
  const model = state.models.find((m) => m.id === modelId);
  const duration = model ? fieldsOf(model).find((f) => f.name === "duration") : null;
  return duration && duration.options ? duration.options.map(String) : DEFAULT_SECONDS;
}

function setError(name, message) {
  const box = $(`followup-${name}-field`);
  const error = $(`followup-${name}-error`);
  const input = $(`followup-${name}`);
  box.classList.toggle("invalid", Boolean(message));
  error.textContent = message || "";
  error.hidden = !message;
  if (message) input.setAttribute("aria-invalid", "true");
  else input.removeAttribute("aria-invalid");
}

function clearDialogErrors() {
  setError("prompt", null);
  setError("seconds", null);
  $("followup-error").hidden = true;
  $("followup-error").replaceChildren();
}

export function openFollowup(kind, source) {
  const spec = KINDS[kind];
  current = { kind, source };
  const dialog = $("followup");
  dialog.dataset.kind = kind;
  $("followup-title").textContent = spec.title;
  $("followup-source").replaceChildren("Request ", el("code", { text: source.id }), source.prompt ? `: ${source.prompt}` : "");
  $("followup-prompt").value = "";
  $("followup-prompt-label").textContent = kind === "extend" ? "What happens next" : "What to change";
  $("followup-seconds-field").hidden = kind !== "extend";
  const seconds = $("followup-seconds");
  seconds.replaceChildren(...secondsChoices(source.model).map((value) => el("option", { value, text: `${value} s` })));
  $("followup-submit").textContent = spec.action;
  $("followup-submit").disabled = false;
  clearDialogErrors();
  dialog.showModal();
  $("followup-prompt").focus();
}

async function onSubmit(event) {
  event.preventDefault();
  if (!current) return;
  clearDialogErrors();
  const { kind, source } = current;
  const prompt = $("followup-prompt").value;
  if (!prompt.trim()) {
    setError("prompt", "required");
    $("followup-prompt").focus();
    return;
  }
  const body = { prompt, video: { id: source.id } };
  if (kind === "extend") body.seconds = $("followup-seconds").value;
  const button = $("followup-submit");
  button.disabled = true;
  let result;
  try {
    result = await api("POST", KINDS[kind].path, { body, dialect: "openai" });
  } finally {
    button.disabled = false;
  }
  if (!result.ok || !result.data || typeof result.data.id !== "string") {
    const info = describe(result);
    const field = info.field && ["prompt", "seconds"].includes(info.field) ? info.field : null;
    if (field) setError(field, info.message);
    renderAlert($("followup-error"), info);
    return;
  }
  $("followup").close();
  current = null;
  toast(KINDS[kind].done);
  emit("submitted", {
    id: result.data.id,
    model: result.data.model || source.model,
    prompt,
    kind,
    source: source.id,
    first: { status: statusOf(result.data) || "QUEUED" },
  });
}

export function initFollowups() {
  $("followup-form").addEventListener("submit", onSubmit);
  $("followup-close").addEventListener("click", () => {
    current = null;
    $("followup").close();
  });
  $("followup-prompt").addEventListener("input", () => setError("prompt", null));
}
