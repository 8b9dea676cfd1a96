// Small DOM and formatting helpers every part of the page uses; no state of their own.

export const $ = (id) => document.getElementById(id);

// localStorage keys: the page remembers the key, the recent requests, the model and the tab.
export const STORE = {
  key: "videoserve.apiKey",
  recent: "videoserve.recent",
  model: "videoserve.model",
  tab: "videoserve.snippetTab",
};

export const storage = {
  get(name, fallback) {
    try {
      const raw = localStorage.getItem(name);
      return raw === null ? fallback : JSON.parse(raw);
    } catch {
      return fallback;
    }
  },
  set(name, value) {
    try {
      localStorage.setItem(name, JSON.stringify(value));
    } catch {
      /* private mode or full: the page still works, it just forgets */
    }
  },
};

// A new element: `text` sets its text, `class` its classes, `on...` adds listeners, a false,
// null or undefined attribute is left out, `true` is an empty attribute.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) return reject(new DOMException("aborted", "AbortError"));
    const timer = setTimeout(resolve, ms);
    if (signal) {
      signal.addEventListener(
        "abort",
        () => {
          clearTimeout(timer);
          reject(new DOMException("aborted", "AbortError"));
        },
        { once: true },
      );
    }
  });
}

export const isAbort = (err) => err && err.name === "AbortError";

// The server counts characters (code points), not UTF-16 units.
export const codePoints = (text) => Array.from(text).length;

export function formatSeconds(value) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return "—";
  const n = Number(value);
  return n < 10 ? `${n.toFixed(2)} s` : `${n.toFixed(1)} s`;
}

export function formatBytes(n) {
  if (n < 1024) return `${n} bytes`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export function formatHertz(rate) {
  const n = Number(rate);
  if (!Number.isFinite(n) || n <= 0) return null;
  return n >= 1000 ? `${Number((n / 1000).toFixed(1))} kHz` : `${n} Hz`;
}

export function timeAgo(ms) {
  const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(ms).toLocaleDateString();
}

let toastTimer = null;

export function toast(message) {
  const node = $("toast");
  node.textContent = message;
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    node.hidden = true;
  }, 2500);
}
