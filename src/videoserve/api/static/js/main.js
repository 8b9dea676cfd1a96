// videoserve playground: plain ES modules, no build step, nothing loaded from elsewhere.
//
// It talks to the same API any client uses: GET /v1/models for the schemas, POST /v2/{model}
// to submit, GET /v2/requests/{id}/events (or .../status) to follow, GET /v2/requests/{id}
// for the result, POST /v2/requests/{id}/cancel, and POST /v1/videos/extensions and /edits
// from a finished video's card. This module wires the page; each other module has one part:
//   api.js (HTTP), errors.js (failed answers in words), schema.js + form.js (the form),
//   job.js (one request's view), gallery.js (recent requests), followups.js (extend, edit),
//   snippets.js (code for the request), state.js (what they share), dom.js (helpers).

import { api } from "./api.js";
import { $, el, STORE, storage } from "./dom.js";
import { describe } from "./errors.js";
import { initFollowups } from "./followups.js";
import { clearErrors, collect, markInvalid, refreshFormAlert, renderForm, setFieldError, showFormError, showProblems } from "./form.js";
import { initGallery, refreshGallery, remember, renderGallery } from "./gallery.js";
import { initJobView, openRequest, requestInAddress, track } from "./job.js";
import { initSnippets, updateSnippet } from "./snippets.js";
import { on, state } from "./state.js";

async function loadModels() {
  const result = await api("GET", "/v1/models");
  if (!result.ok) {
    const info = describe(result);
    $("fields").replaceChildren(el("p", { class: "alert", role: "alert" }, `Could not load the models: ${info.message}`));
    return;
  }
  state.models = (result.data && result.data.data) || [];
  const select = $("model");
  select.replaceChildren();
  for (const model of state.models) {
    const text =
      model.available === false ? `${model.id} — unavailable` : model.alias_of ? `${model.id} (→ ${model.served_by || model.alias_of})` : model.id;
    select.append(el("option", { value: model.id, text, disabled: model.available === false }));
  }
  const usable = state.models.filter((m) => m.available !== false);
  const wanted = new URLSearchParams(location.search).get("model") || storage.get(STORE.model, null);
  const choice = usable.find((m) => m.id === wanted) || usable.find((m) => m.id === "sora-2-pro") || usable[0] || state.models[0] || null;
  if (choice) select.value = choice.id;
  chooseModel(choice ? choice.id : null);
}

function chooseModel(id) {
  state.model = state.models.find((m) => m.id === id) || null;
  const note = $("model-note");
  note.replaceChildren();
  note.className = "help";
  if (state.model) {
    storage.set(STORE.model, state.model.id);
    const bits = [];
    // The warning of a stand-in already says what serves it: say it once.
    if (state.model.alias_of && !state.model.warning) bits.push(`Served by ${state.model.served_by || state.model.alias_of}.`);
    if (state.model.available === false) bits.push(`Unavailable: ${state.model.reason || "no reason given"}.`);
    if (state.model.warning) bits.push(state.model.warning);
    note.textContent = bits.join(" ");
    if (state.model.warning || state.model.available === false) note.classList.add("note-warn");
  }
  renderForm();
  clearErrors();
  updateSnippet();
}

async function onSubmit(event) {
  event.preventDefault();
  if (Date.now() < state.retryUntil) return;
  clearErrors();
  if (!state.model) return;
  const { params, problems } = collect();
  if (problems.length) {
    showProblems(problems);
    return;
  }
  const button = $("generate");
  button.disabled = true;
  button.textContent = "Submitting…";
  let result;
  try {
    result = await api("POST", `/v2/${encodeURIComponent(state.model.id)}`, { body: params });
  } finally {
    button.textContent = "Generate";
    button.disabled = Date.now() < state.retryUntil;
  }
  if (!result.ok) {
    showFormError(describe(result));
    return;
  }
  showSubmitted({ id: result.data.request_id, model: state.model.id, prompt: params.prompt || "", first: result.data });
}

// A new request, from the form or a card's Extend / Edit: remembered, listed and followed.
function showSubmitted({ id, model, prompt, kind, source, first }) {
  remember({ id, model, prompt, created: Date.now(), ...(kind ? { kind, source } : {}) });
  renderGallery();
  track(id, first);
}

function initKey() {
  const input = $("api-key");
  input.value = storage.get(STORE.key, "") || "";
  input.addEventListener("change", () => {
    storage.set(STORE.key, input.value.trim());
    markInvalid(input, false);
    refreshGallery();
  });
  input.addEventListener("input", () => {
    storage.set(STORE.key, input.value.trim());
    markInvalid(input, false);
  });
  $("api-key-toggle").addEventListener("click", (event) => {
    const show = input.type === "password";
    input.type = show ? "text" : "password";
    event.currentTarget.textContent = show ? "Hide" : "Show";
    event.currentTarget.setAttribute("aria-pressed", String(show));
  });
}

function initForm() {
  const form = $("gen-form");
  $("model").addEventListener("change", (event) => chooseModel(event.target.value));
  form.addEventListener("submit", onSubmit);
  form.addEventListener("input", (event) => {
    const box = event.target.closest && event.target.closest(".field");
    if (box && box.classList.contains("invalid")) {
      const field = state.fields.find((f) => f.name === box.dataset.param);
      if (field) setFieldError(field, null);
      refreshFormAlert();
    }
    updateSnippet();
  });
  form.addEventListener("change", updateSnippet);
  form.addEventListener("keydown", (event) => {
    // Ctrl/Cmd+Enter submits from the prompt, as in most chat-style boxes.
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
}

function init() {
  initKey();
  initForm();
  initJobView();
  initFollowups();
  initSnippets();
  initGallery();
  on("form-changed", updateSnippet);
  on("submitted", showSubmitted);
  loadModels().then(() => {
    refreshGallery();
    // A reload keeps the request in view: shown again, and followed if it still runs.
    const shown = requestInAddress();
    if (shown) openRequest(shown);
  });
}

// A module script runs after the document is parsed: the elements are there.
init();
