// Failed answers in words. Only structured fields are read (the status, `code`, `param`,
// `balance`, `price`, the failure code of a job); the message is shown as the server wrote it
// and never parsed, so rewording a message on the server changes nothing here.

import { apiKey, retryAfterSeconds } from "./api.js";
import { el } from "./dom.js";

const TITLES = {
  0: "Server unreachable",
  400: "Invalid request (400)",
  401: "API key refused (401)",
  403: "Not allowed (403)",
  404: "Not found (404)",
  406: "Not enough credits (406)",
  409: "Conflict (409)",
  413: "Too large (413)",
  422: "Generation failed (422)",
  429: "Rate limited (429)",
  502: "Model or worker unavailable (502)",
  503: "Service unavailable (503)",
  504: "Timed out (504)",
  507: "Storage full (507)",
};

// A job's failure code (jobs/failures.py), and the title the page gives each.
const FAILURE_TITLES = {
  cancelled: "Cancelled",
  moderation: "Blocked by the content policy",
  model_error: "Generation failed",
  worker_lost: "Worker lost",
  timeout: "Timed out",
  input_invalid: "Invalid input",
  model_unavailable: "Model unavailable",
  media_error: "Encoding failed",
  storage_full: "Storage full",
  out_of_memory: "Out of memory",
};

const number = (value) => (typeof value === "number" && Number.isFinite(value) ? value : null);

// The fields of an error body in either dialect: Segmind's {"error": "...", "code", "param",
// ...} or OpenAI's {"error": {"message", "type", "param", "code"}}.
export function errorFields(data) {
  const body = data && typeof data === "object" ? data : {};
  const envelope = body.error && typeof body.error === "object" ? body.error : null;
  const source = envelope || body;
  const message = envelope ? envelope.message : body.error ?? body.detail ?? body.message;
  return {
    message: message === undefined || message === null ? null : String(message),
    code: source.code ?? null,
    param: source.param ?? null,
    balance: number(source.balance ?? body.balance),
    price: number(source.price ?? body.price),
  };
}

// {status, title, message, field, balance, price, hint, retryAfter} for a failed API answer.
export function describe(result) {
  const fields = errorFields(result.data);
  const status = result.status;
  const out = {
    status,
    message: fields.message || `HTTP ${status}`,
    code: fields.code,
    field: null,
    title: TITLES[status] || (status >= 500 ? `Server error (${status})` : `Error ${status}`),
  };
  if (status === 400 && fields.param) out.field = String(fields.param).split(".")[0];
  if (status === 401) {
    out.field = "api-key";
    out.hint =
      (apiKey()
        ? "The key was not accepted: check it in the API key field at the top."
        : "This server needs an API key: enter it in the API key field at the top.") +
      " To get one, run `videoserve keys create --name NAME` on the server (the key is the last" +
      " line it prints); `videoserve serve` also prints an admin key when it first starts.";
  }
  if (status === 403) out.hint = "This API key lacks the permission for that.";
  if (status === 406) {
    out.balance = fields.balance;
    out.price = fields.price;
  }
  if (status === 429) out.retryAfter = retryAfterSeconds(result.headers, result.data);
  return out;
}

// The failure code of a FAILED job's body: `code` (Segmind), `failure`, or OpenAI's error.code.
export function failureOf(body) {
  if (!body) return null;
  if (body.error && typeof body.error === "object") return body.error.code ?? null;
  return body.code ?? body.failure ?? null;
}

// The title for a job that ended without a video. `cancelRequested`: this page asked to cancel
// it, which is all it knows when the server sends no failure code.
export function failureTitle(body, cancelRequested = false) {
  const code = failureOf(body);
  if (code && FAILURE_TITLES[code]) return FAILURE_TITLES[code];
  return !code && cancelRequested ? FAILURE_TITLES.cancelled : "Generation failed";
}

export function isCancelled(body, cancelRequested = false) {
  const code = failureOf(body);
  return code === "cancelled" || (!code && cancelRequested);
}

export function failureMessage(body) {
  return errorFields(body).message || "no reason given";
}

export function renderAlert(node, info) {
  node.replaceChildren(el("strong", { text: info.title + ": " }), info.message);
  if (info.balance !== undefined && info.balance !== null) {
    const cost = info.price !== undefined && info.price !== null ? `; this request costs ${info.price} credits` : "";
    node.append(el("br"), el("span", { class: "credits", text: `Your balance: ${info.balance} credits${cost}.` }));
  }
  if (info.hint) node.append(el("br"), info.hint);
  if (info.retryAfter) {
    node.append(el("br"), "Try again in ", el("span", { class: "countdown", text: `${info.retryAfter}` }), " s.");
  }
  node.dataset.status = String(info.status ?? "");
  node.dataset.code = info.code ? String(info.code) : "";
  node.hidden = false;
}
