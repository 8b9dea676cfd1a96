// The job view: one request's status, progress, failure or video, followed over the live
// event stream when the server has it, else by polling its status.

import { api, authHeaders, followEvents, retryAfterSeconds } from "./api.js";
import { $, el, formatHertz, formatSeconds, isAbort, sleep, toast } from "./dom.js";
import { describe, failureMessage, failureOf, failureTitle, isCancelled, renderAlert } from "./errors.js";
import { followupButtons } from "./followups.js";
import { startRetryCountdown } from "./form.js";
import { emit, state, statusOf, TERMINAL } from "./state.js";

const isFinal = (body) => TERMINAL.has(statusOf(body));
const cancelRequested = () => Boolean(state.job && state.job.cancelRequested);

// The request in view is kept in the address (#request=ID), so a reload shows it again.
const HASH = /^#request=([^&]+)$/;

export function requestInAddress() {
  const match = HASH.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

function resetJobView(id) {
  if (requestInAddress() !== id) history.replaceState(null, "", `#request=${encodeURIComponent(id)}`);
  $("job-empty").hidden = true;
  $("job").hidden = false;
  $("job-id").textContent = id;
  $("job-error").hidden = true;
  $("result").hidden = true;
  $("result-meta").replaceChildren();
  $("result-followups").replaceChildren();
  const player = $("player");
  player.removeAttribute("src");
  player.load();
  setProgress(0);
  $("progress-row").hidden = false;
  hidePreview();
  $("job-transport").textContent = "";
  $("job-panel").dataset.status = "";
}

function setProgress(percent) {
  const value = Math.max(0, Math.min(100, Math.round(Number(percent) || 0)));
  $("job-progress").value = value;
  $("job-progress").setAttribute("aria-valuenow", String(value));
  $("job-progress-label").textContent = `${value}%`;
}

// What each phase is called on the page (jobs/phases.py names them).
const PHASE_WORDS = {
  starting: "Starting…",
  loading_model: "Loading the model…",
  encoding_prompt: "Reading the prompt…",
  denoising: "Generating",
  decoding: "Decoding the frames…",
  encoding_video: "Encoding the video…",
  storing: "Saving the video…",
};

function phaseDetail(body) {
  const phase = body.phase;
  if (phase === "denoising" && body.step !== undefined) return `Generating: step ${body.step} of ${body.steps}`;
  return PHASE_WORDS[phase] || "Generating…";
}

// The latest preview image of a running request, fetched with the key (an <img> cannot send
// it) whenever the status names a newer one; dropped when the request ends.
const preview = { id: null, step: null, url: null, loading: false };

function hidePreview() {
  if (preview.url) URL.revokeObjectURL(preview.url);
  Object.assign(preview, { id: null, step: null, url: null, loading: false });
  $("preview").hidden = true;
  $("preview-image").removeAttribute("src");
}

async function showPreview(id, body) {
  const step = body.preview_step;
  if (step === undefined || step === null || preview.loading) return;
  if (preview.id === id && preview.step === step) return;
  preview.loading = true;
  try {
    const response = await fetch(`/v2/requests/${encodeURIComponent(id)}/preview`, {
      headers: authHeaders({ Accept: "image/jpeg" }),
      cache: "no-store",
    });
    if (!response.ok || !state.job || state.job.id !== id || state.job.done) return;
    const url = URL.createObjectURL(await response.blob());
    if (preview.url) URL.revokeObjectURL(preview.url);
    Object.assign(preview, { id, step: Number(response.headers.get("X-Preview-Step") || step), url });
    $("preview-image").src = url;
    $("preview-caption").textContent = `Preview at step ${preview.step}${body.steps ? ` of ${body.steps}` : ""} (a rough look, not the final frames)`;
    $("preview").hidden = false;
  } catch {
    // A preview is a courtesy: the next status tries again.
  } finally {
    preview.loading = false;
  }
}

function startEstimate(seconds) {
  // About when it starts, from its model's recent job times and live workers (null: unknown).
  if (seconds === undefined || seconds === null) return "";
  const s = Number(seconds);
  if (s < 1) return " Starts in about a second.";
  if (s < 90) return ` Starts in about ${Math.round(s)} s.`;
  return ` Starts in about ${Math.round(s / 60)} min.`;
}

function queueDetail(position, waitingReason, estimate) {
  let line;
  if (position === undefined || position === null) line = "Waiting in the queue…";
  else line = Number(position) <= 1 ? `Queue position ${position}: next to run.` : `Queue position ${position}.`;
  // The server says why a queued job cannot start yet (no live worker serves its model).
  if (waitingReason) return `${line} Waiting: ${waitingReason}.`;
  return line + startEstimate(estimate);
}

function showStatus(body) {
  const status = statusOf(body);
  const badge = $("job-status");
  badge.textContent = status || "—";
  badge.dataset.status = status;
  $("job-panel").dataset.status = status;
  const detail = $("job-detail");
  if (status === "QUEUED") {
    detail.textContent = queueDetail(body.queue_position, body.waiting_reason, body.estimated_start_seconds);
    setProgress(0);
  } else if (status === "PROCESSING") {
    detail.textContent = phaseDetail(body);
    setProgress(Number(body.progress || 0));
    if (state.job && body.request_id === state.job.id) showPreview(body.request_id, body);
  } else if (status === "COMPLETED") {
    detail.textContent = "Done.";
    setProgress(100);
  } else if (status === "FAILED") {
    detail.textContent = isCancelled(body, cancelRequested()) ? "The request was cancelled." : "The request failed.";
  }
  const active = !TERMINAL.has(status);
  if (!active) hidePreview();
  $("progress-row").hidden = !active && status !== "COMPLETED";
  $("cancel").hidden = !active;
  $("cancel").disabled = !active;
}

function showJobError(info) {
  renderAlert($("job-error"), info);
  if (info.retryAfter) startRetryCountdown(info.retryAfter);
}

function stopTracking() {
  if (state.job && state.job.controller) state.job.controller.abort();
  state.job = null;
}

// Follows a request until it ends, then shows its video or why it has none.
export async function track(id, first) {
  stopTracking();
  const controller = new AbortController();
  const job = { id, controller, done: false, cancelRequested: false };
  state.job = job;
  resetJobView(id);
  showStatus(first || { status: "QUEUED" });
  emit("job-shown", { id });
  try {
    let final = null;
    if (state.canStream !== false) {
      const onStatus = (body) => {
        if (body) showStatus(body);
        else {
          state.canStream = true;
          $("job-transport").textContent = "· live";
        }
      };
      const streamed = await followEvents(id, controller.signal, onStatus, isFinal);
      if (streamed.outcome === "none") state.canStream = false;
      if (streamed.outcome === "final") final = streamed.body;
    }
    if (!final) {
      $("job-transport").textContent = "· polling";
      final = await poll(id, controller.signal);
    }
    job.done = true;
    await finish(id, final, controller.signal);
  } catch (err) {
    if (!isAbort(err)) showJobError({ title: "Error", message: String(err && err.message ? err.message : err) });
  } finally {
    job.done = true;
  }
}

// Polls the status until a final one; a run of 429/502/503 or lost connections backs off.
async function poll(id, signal) {
  let failures = 0;
  for (;;) {
    const result = await api("GET", `/v2/requests/${encodeURIComponent(id)}/status`, { signal });
    if (result.ok || (result.status === 422 && result.data && result.data.status)) {
      failures = 0;
      showStatus(result.data);
      if (isFinal(result.data)) return result.data;
      await sleep(statusOf(result.data) === "QUEUED" ? 1000 : 500, signal);
      continue;
    }
    if ([0, 429, 502, 503].includes(result.status)) {
      failures += 1;
      if (failures > 20) return { status: "FAILED", http: result };
      const wait =
        result.status === 429 || result.status === 503
          ? retryAfterSeconds(result.headers, result.data) * 1000
          : Math.min(8000, 500 * 2 ** failures);
      $("job-detail").textContent = `${describe(result).title}; checking again in ${Math.round(wait / 1000)} s…`;
      await sleep(wait, signal);
      continue;
    }
    return { status: "FAILED", http: result };
  }
}

async function finish(id, final, signal) {
  $("cancel").hidden = true;
  emit("request-changed", { id });
  if (final.http) {
    showJobError(describe(final.http));
    return;
  }
  if (statusOf(final) !== "COMPLETED") {
    showJobError({ title: failureTitle(final, cancelRequested()), message: failureMessage(final), code: failureOf(final) });
    return;
  }
  const result = await api("GET", `/v2/requests/${encodeURIComponent(id)}`, { signal });
  if (!result.ok) {
    showJobError(describe(result));
    return;
  }
  showResult(result.data);
}

// "with audio · 24 kHz · aac", "none" for a silent result, "—" where the server does not say.
export function audioFacts(body) {
  if (body.has_audio === true) return ["with audio", formatHertz(body.audio_sample_rate), body.audio_codec].filter(Boolean).join(" · ");
  return body.has_audio === false ? "none" : "—";
}

function showResult(body) {
  showStatus(body);
  const player = $("player");
  // Muted only when there is nothing to hear; a result with sound plays it.
  player.muted = body.has_audio !== true;
  player.src = body.output;
  const download = $("download");
  download.href = body.output;
  download.setAttribute("download", `${body.request_id || "video"}.mp4`);
  $("open-video").href = body.output;
  const metrics = body.metrics || {};
  const asked = body.params || {};
  const requested = [asked.size, asked.duration !== undefined ? `${asked.duration} s` : null].filter(Boolean).join(", ");
  const rows = [
    ["Requested", requested || "—"],
    ["Size", body.width && body.height ? `${body.width} × ${body.height}` : "—"],
    ["Duration", body.seconds !== undefined ? `${Number(body.seconds).toFixed(2)} s` : "—"],
    ["Frames", body.frames !== undefined ? `${body.frames} at ${body.fps} fps` : "—"],
    ["Audio", audioFacts(body)],
    ["Player reports", "loading…"],
    ["Queue time", formatSeconds(metrics.queue_time)],
    ["Inference time", formatSeconds(metrics.inference_time)],
    ["Encode time", formatSeconds(metrics.encode_time)],
    ["Total time", formatSeconds(metrics.total_time)],
    ["Served by", body.served_by || body.model || "—"],
    ["Seed", body.seed ?? "—"],
    ["Expires", body.expires_at ? new Date(body.expires_at).toLocaleString() : "—"],
  ];
  $("result-meta").replaceChildren(...rows.flatMap(([term, value]) => [el("dt", { text: term }), el("dd", { text: String(value), "data-term": term })]));
  const source = { id: body.request_id || $("job-id").textContent, model: body.model, prompt: asked.prompt || "" };
  $("result-followups").replaceChildren(...followupButtons(source));
  $("result").hidden = false;
}

function onPlayerMetadata() {
  const player = $("player");
  const cell = document.querySelector('#result-meta dd[data-term="Player reports"]');
  if (cell) cell.textContent = `${player.videoWidth} × ${player.videoHeight}, ${player.duration.toFixed(2)} s`;
}

async function onDownload(event) {
  const link = event.currentTarget;
  const url = new URL(link.href, location.href);
  if (url.origin === location.origin) return; // the download attribute does it
  // Another host (presigned S3): the attribute is ignored across origins, so fetch the bytes.
  event.preventDefault();
  try {
    const response = await fetch(url, { mode: "cors" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const objectUrl = URL.createObjectURL(await response.blob());
    const temp = el("a", { href: objectUrl, download: link.getAttribute("download") || "video.mp4" });
    document.body.append(temp);
    temp.click();
    temp.remove();
    setTimeout(() => URL.revokeObjectURL(objectUrl), 10000);
  } catch {
    window.open(url.href, "_blank", "noopener");
  }
}

// POST /v2/requests/{id}/cancel: always there. A queued request fails at once, a running one
// at its next step; the stream or the poll then brings the final status.
async function onCancel() {
  const job = state.job;
  if (!job) return;
  const button = $("cancel");
  button.disabled = true;
  job.cancelRequested = true;
  const result = await api("POST", `/v2/requests/${encodeURIComponent(job.id)}/cancel`);
  if (result.ok) {
    const data = result.data || {};
    if (data.cancelled === false) job.cancelRequested = false;
    if (data.status) showStatus(data);
    if (data.cancelled === false) toast(data.message || "Nothing to cancel.");
    else if (data.status && !isFinal(data)) {
      $("job-detail").textContent = data.message ? `Cancelling: ${data.message}` : "Cancelling…";
    }
    return;
  }
  job.cancelRequested = false;
  if (result.status === 404) {
    button.hidden = true;
    toast("The request is gone: it expired or was deleted.");
    return;
  }
  const info = describe(result);
  if (result.status === 409) info.title = "Too late to cancel (409)";
  showJobError(info);
  button.disabled = false;
}

// Shows a request from the gallery: its video, its failure, or its progress if it still runs.
// Answers the HTTP status of the read (404: expired or not this key's).
export async function openRequest(id) {
  stopTracking();
  state.job = { id, controller: null, done: true, cancelRequested: false };
  resetJobView(id);
  const result = await api("GET", `/v2/requests/${encodeURIComponent(id)}`);
  if (result.ok && statusOf(result.data) === "COMPLETED") showResult(result.data);
  else if (result.ok) track(id, result.data);
  else if (result.status === 422 && result.data) {
    showStatus(result.data);
    showJobError({ title: failureTitle(result.data), message: failureMessage(result.data), code: failureOf(result.data) });
  } else showJobError(describe(result));
  $("job-panel").scrollIntoView({ block: "start", behavior: "smooth" });
  return result.status;
}

export function initJobView() {
  $("cancel").addEventListener("click", onCancel);
  $("download").addEventListener("click", onDownload);
  const player = $("player");
  player.addEventListener("loadedmetadata", onPlayerMetadata);
  player.addEventListener("error", () => {
    if (player.getAttribute("src")) {
      showJobError({ title: "Playback failed", message: "the browser could not load the video (the link may have expired)" });
    }
  });
}
