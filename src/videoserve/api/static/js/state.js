// What the page's modules share: the models, the chosen one, the request in view, and a tiny
// event bus, so that a module tells the others what happened without importing them.

export const state = {
  models: [], // entries of GET /v1/models
  model: null, // the chosen model's entry
  fields: [], // field descriptors built from its schema (see schema.js)
  values: {}, // form values kept across model switches
  reference: null, // {dataUri, name, type, size} of an uploaded image
  job: null, // the request in the job view: {id, controller, done, cancelRequested}
  canStream: null, // null until the first request shows whether the server streams events
  retryUntil: 0, // no submit before this time (a 429's Retry-After)
  snippetTab: "curl",
};

// Status values of the Segmind contract; the last two are final.
export const TERMINAL = new Set(["COMPLETED", "FAILED"]);

// The OpenAI dialect's status values, in the Segmind words the page shows.
const OPENAI_STATUS = { queued: "QUEUED", in_progress: "PROCESSING", completed: "COMPLETED", failed: "FAILED" };

export function statusOf(body) {
  const raw = String((body && body.status) || "");
  return OPENAI_STATUS[raw] || raw.toUpperCase();
}

const bus = new EventTarget();

// Events: "form-changed"; "submitted" {id, model, prompt, kind, source}: a new request to show
// and remember; "request-changed" {id}: a request's state changed (the gallery re-reads it).
export function emit(name, detail = {}) {
  bus.dispatchEvent(new CustomEvent(name, { detail }));
}

export function on(name, listener) {
  bus.addEventListener(name, (event) => listener(event.detail));
}
