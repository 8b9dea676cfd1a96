// "My recent requests": the ids this browser submitted (localStorage) merged with the key's
// usage history (GET /v1/requests), each re-read from GET /v2/requests/{id} for its status and
// thumbnail. A 404 means expired (or another key's): that id is dropped for good.

import { api } from "./api.js";
import { $, el, STORE, storage, timeAgo } from "./dom.js";
import { followupButtons } from "./followups.js";
import { openRequest } from "./job.js";
import { on, state, statusOf } from "./state.js";

const MAX_RECENT = 30;
const GALLERY_SIZE = 12;
const KIND_LABELS = { extend: "extension", edit: "edit" };

const gallery = {
  history: [], // from GET /v1/requests
  gone: new Set(), // ids that answered 404 or were forgotten
  info: new Map(), // id -> the last GET /v2/requests/{id} body
};

function recent() {
  const list = storage.get(STORE.recent, []);
  return Array.isArray(list) ? list.filter((e) => e && typeof e.id === "string") : [];
}

// {id, model, prompt, created, kind?, source?}: kind "extend" or "edit" of the source's id.
export function remember(entry) {
  gallery.gone.delete(entry.id);
  const list = recent().filter((e) => e.id !== entry.id);
  list.unshift(entry);
  storage.set(STORE.recent, list.slice(0, MAX_RECENT));
}

function forget(id) {
  gallery.gone.add(id);
  gallery.info.delete(id);
  storage.set(
    STORE.recent,
    recent().filter((e) => e.id !== id),
  );
}

function entries() {
  const seen = new Set();
  const out = [];
  for (const entry of [...recent(), ...gallery.history]) {
    if (seen.has(entry.id) || gallery.gone.has(entry.id)) continue;
    seen.add(entry.id);
    out.push(entry);
  }
  out.sort((a, b) => (b.created || 0) - (a.created || 0));
  return out.slice(0, GALLERY_SIZE);
}

async function serverHistory() {
  const result = await api("GET", `/v1/requests?limit=${GALLERY_SIZE}`);
  if (!result.ok || !result.data || !Array.isArray(result.data.data)) return null;
  const when = (value) => (typeof value === "number" ? value * 1000 : Date.parse(value));
  return result.data.data
    .map((item) => ({
      id: item.id,
      model: item.model,
      prompt: (item.parameters && item.parameters.prompt) || "",
      created: item.created_at ? when(item.created_at) : 0,
      status: item.status,
    }))
    .filter((e) => typeof e.id === "string");
}

export async function refreshGallery() {
  gallery.history = (await serverHistory().catch(() => null)) || [];
  const statuses = await Promise.all(entries().map((e) => refreshItem(e.id, false)));
  $("gallery-note").textContent = statuses.includes(401) ? "Enter a valid API key to see your requests." : "";
  renderGallery();
}

async function refreshItem(id, render = true) {
  const result = await api("GET", `/v2/requests/${encodeURIComponent(id)}`);
  if (result.status === 404) forget(id);
  else if (result.ok || result.status === 422) gallery.info.set(id, result.data || {});
  if (render) renderGallery();
  return result.status;
}

async function open(id) {
  if ((await openRequest(id)) === 404) forget(id);
  renderGallery();
}

function card(entry) {
  const info = gallery.info.get(entry.id) || {};
  const status = statusOf(info) || String(entry.status || "…").toUpperCase();
  const prompt = entry.prompt || (info.params && info.params.prompt) || entry.id;
  const thumb = info.thumbnail
    ? el("img", { src: info.thumbnail, alt: `Thumbnail: ${prompt}`, loading: "lazy" })
    : el("span", { text: status === "FAILED" ? "failed" : status === "COMPLETED" ? "no thumbnail" : "in progress" });
  const facts = [entry.model || info.model, KIND_LABELS[entry.kind], info.has_audio ? "with audio" : null, entry.created ? timeAgo(entry.created) : ""];
  const button = el(
    "button",
    {
      type: "button",
      class: "card",
      "data-id": entry.id,
      "aria-current": state.job && state.job.id === entry.id ? "true" : null,
      "aria-label": `${status.toLowerCase()}: ${prompt}`,
      title: info.error && typeof info.error === "string" ? `${prompt}\n${info.error}` : prompt,
      onclick: () => open(entry.id),
    },
    el("span", { class: "thumb" }, thumb),
    el(
      "span",
      { class: "caption" },
      el("span", { class: "prompt", text: prompt }),
      el("span", { class: "badge", "data-status": status, text: status }),
      el("span", { class: "muted", text: facts.filter(Boolean).join(" · ") }),
    ),
  );
  const item = el("li", { "data-id": entry.id }, button);
  if (status === "COMPLETED") {
    const source = { id: entry.id, model: entry.model || info.model, prompt };
    item.append(el("div", { class: "card-actions" }, followupButtons(source)));
  }
  return item;
}

export function renderGallery() {
  const list = $("gallery");
  const shown = entries();
  if (!shown.length) {
    list.replaceChildren(el("li", { class: "muted empty", text: "Nothing yet: your requests appear here for as long as the server keeps them." }));
    return;
  }
  list.replaceChildren(...shown.map(card));
}

export function initGallery() {
  on("request-changed", ({ id }) => refreshItem(id));
  on("job-shown", () => renderGallery());
  $("gallery-refresh").addEventListener("click", refreshGallery);
  $("gallery-clear").addEventListener("click", () => {
    for (const entry of entries()) gallery.gone.add(entry.id);
    storage.set(STORE.recent, []);
    gallery.info.clear();
    renderGallery();
  });
  renderGallery();
}
