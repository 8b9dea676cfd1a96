// The API client: the same HTTP calls any client makes, in either dialect. Every call answers
// {status, ok, data, headers}; status 0 means the server was not reached.

import { $, isAbort } from "./dom.js";

export function apiKey() {
  return $("api-key").value.trim();
}

// Segmind routes take `x-api-key`; the OpenAI dialect (/v1/videos...) `Authorization: Bearer`.
export function authHeaders(extra = {}, dialect = "segmind") {
  const headers = { Accept: "application/json", ...extra };
  const key = apiKey();
  if (key && dialect === "openai") headers.Authorization = `Bearer ${key}`;
  else if (key) headers["x-api-key"] = key;
  return headers;
}

export async function api(method, path, { body, signal, dialect } = {}) {
  const json = body === undefined ? {} : { "Content-Type": "application/json" };
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: authHeaders(json, dialect),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
    });
  } catch (err) {
    if (isAbort(err)) throw err;
    return { status: 0, ok: false, data: { error: `could not reach the server (${err.message})` }, headers: new Headers() };
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { error: text.slice(0, 300) || response.statusText };
  }
  return { status: response.status, ok: response.ok, data, headers: response.headers };
}

export function retryAfterSeconds(headers, data) {
  const header = headers && headers.get("Retry-After");
  let seconds = header ? Number(header) : NaN;
  if (Number.isNaN(seconds) && header) {
    const when = Date.parse(header);
    if (!Number.isNaN(when)) seconds = (when - Date.now()) / 1000;
  }
  if (Number.isNaN(seconds) && data && data.retry_after) seconds = Number(data.retry_after);
  return Number.isNaN(seconds) ? 5 : Math.max(1, Math.ceil(seconds));
}

// Follows GET /v2/requests/{id}/events, read with fetch (EventSource cannot send the key
// header), calling onStatus(body) for each `status` event. Answers "final" with the last body
// once a final status arrived, "none" when the server has no stream, "dropped" when it ended
// early: the caller then polls.
export async function followEvents(id, signal, onStatus, isFinal) {
  let response;
  try {
    response = await fetch(`/v2/requests/${encodeURIComponent(id)}/events`, {
      headers: authHeaders({ Accept: "text/event-stream" }),
      cache: "no-store",
      signal,
    });
  } catch (err) {
    if (isAbort(err)) throw err;
    return { outcome: "dropped" };
  }
  const type = response.headers.get("Content-Type") || "";
  if (response.status !== 200 || !type.includes("text/event-stream") || !response.body) {
    try {
      await response.body?.cancel();
    } catch {
      /* nothing to release */
    }
    return { outcome: response.status === 404 || response.status === 405 ? "none" : "dropped" };
  }
  onStatus(null); // connected: the caller may say "live"
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return { outcome: "dropped" };
      buffer += value;
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        const event = parseEvent(block);
        if (!event || (event.name !== "status" && event.name !== "message")) continue;
        let body;
        try {
          body = JSON.parse(event.data);
        } catch {
          continue;
        }
        if (!body || !body.status) continue;
        onStatus(body);
        if (isFinal(body)) {
          reader.cancel().catch(() => {});
          return { outcome: "final", body };
        }
      }
    }
  } catch (err) {
    if (isAbort(err)) throw err;
    return { outcome: "dropped" }; // polling picks up from the current state
  }
}

// One server-sent event block (the text/event-stream format): its name and joined data lines.
function parseEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  return data.length ? { name, data: data.join("\n") } : null;
}
