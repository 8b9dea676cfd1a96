// videoserve playground: plain JavaScript, no build step, nothing loaded from elsewhere.
//
// Talks to the same API any client uses: GET /v1/models for the schemas, POST /v2/{model} to
// submit, the live event stream GET /v2/requests/{id}/events when the server has it (else
// polling GET /v2/requests/{id}/status), GET /v2/requests/{id} for the result.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  const STORE = {
    key: "videoserve.apiKey",
    recent: "videoserve.recent",
    model: "videoserve.model",
    tab: "videoserve.snippetTab",
  };
  const MAX_RECENT = 30;
  const GALLERY_SIZE = 12;
  const MAIN_FIELDS = ["prompt", "duration", "size", "input_reference"];
  const LABELS = {
    prompt: "Prompt",
    duration: "Duration (seconds)",
    size: "Size (width × height)",
    input_reference: "Reference image",
    seed: "Seed",
    negative_prompt: "Negative prompt",
    num_inference_steps: "Inference steps",
    guidance_scale: "Guidance scale",
  };
  const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED", "CANCELED", "EXPIRED"]);

  const state = {
    models: [],
    model: null, // the chosen model's entry from /v1/models
    fields: [], // field descriptors built from its schema
    values: {}, // form values kept across model switches
    reference: null, // {dataUri, name, type, size} of an uploaded image
    job: null, // {id, controller}
    canCancel: null, // null: unknown, true/false once known
    canStream: null,
    retryUntil: 0,
    retryTimer: null,
    snippetTab: "curl",
  };

  // --- small helpers ---------------------------------------------------------------------
  const storage = {
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

  function el(tag, attrs = {}, ...children) {
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

  function sleep(ms, signal) {
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

  const isAbort = (err) => err && err.name === "AbortError";
  const codePoints = (text) => Array.from(text).length; // the server counts characters, not UTF-16 units

  function apiKey() {
    return $("api-key").value.trim();
  }

  function authHeaders(extra = {}) {
    const headers = { Accept: "application/json", ...extra };
    const key = apiKey();
    if (key) headers["x-api-key"] = key;
    return headers;
  }

  // Every call answers {status, ok, data, headers}; status 0 means the server was not reached.
  async function api(method, path, { body, signal } = {}) {
    const headers = authHeaders(body === undefined ? {} : { "Content-Type": "application/json" });
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
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

  function formatSeconds(value) {
    if (value === null || value === undefined || Number.isNaN(Number(value))) return "—";
    const n = Number(value);
    return n < 10 ? `${n.toFixed(2)} s` : `${n.toFixed(1)} s`;
  }

  function formatBytes(n) {
    if (n < 1024) return `${n} bytes`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  }

  function timeAgo(ms) {
    const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (seconds < 60) return "just now";
    if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
    return new Date(ms).toLocaleDateString();
  }

  function toast(message) {
    const node = $("toast");
    node.textContent = message;
    node.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => {
      node.hidden = true;
    }, 2500);
  }

  // --- errors in words -------------------------------------------------------------------
  function fieldFromMessage(message) {
    const unknown = /unknown parameter\(s\):\s*([A-Za-z_][\w]*)/.exec(message);
    if (unknown) return unknown[1];
    const named = /^\s*([A-Za-z_][\w]*)(?:\.[\w.]+)?\s*:/.exec(message);
    return named ? named[1] : null;
  }

  function creditBalance(message) {
    const match =
      /balance[^0-9-]*(-?\d+(?:\.\d+)?)/i.exec(message) ||
      /(-?\d+(?:\.\d+)?)\s*credits?\s*(?:left|remaining|available)/i.exec(message) ||
      /(?:have|has|remaining|left)[^0-9-]*(-?\d+(?:\.\d+)?)/i.exec(message);
    return match ? match[1] : null;
  }

  function retryAfterSeconds(headers, data) {
    const header = headers && headers.get("Retry-After");
    let seconds = header ? Number(header) : NaN;
    if (Number.isNaN(seconds) && header) {
      const when = Date.parse(header);
      if (!Number.isNaN(when)) seconds = (when - Date.now()) / 1000;
    }
    if (Number.isNaN(seconds) && data && data.retry_after) seconds = Number(data.retry_after);
    return Number.isNaN(seconds) ? 5 : Math.max(1, Math.ceil(seconds));
  }

  // {title, message, field, balance, retryAfter} for a failed API answer.
  function describe(result) {
    const data = result.data || {};
    const message = String(data.error || data.detail || data.message || `HTTP ${result.status}`);
    const out = { status: result.status, message, field: null };
    switch (result.status) {
      case 0:
        out.title = "Server unreachable";
        break;
      case 400:
        out.title = "Invalid request (400)";
        out.field = data.param ? String(data.param).split(".")[0] : fieldFromMessage(message);
        break;
      case 401:
        out.title = "API key refused (401)";
        out.hint = apiKey()
          ? "The key was not accepted: check it in the API key field at the top."
          : "This server needs an API key: enter it in the API key field at the top.";
        out.field = "api-key";
        break;
      case 403:
        out.title = "Not allowed (403)";
        out.hint = "This API key lacks the permission for that.";
        break;
      case 404:
        out.title = "Not found (404)";
        break;
      case 406:
        out.title = "Not enough credits (406)";
        out.balance = creditBalance(message);
        break;
      case 413:
        out.title = "Too large (413)";
        break;
      case 422:
        out.title = "Generation failed (422)";
        break;
      case 429:
        out.title = "Rate limited (429)";
        out.retryAfter = retryAfterSeconds(result.headers, data);
        break;
      case 502:
        out.title = "Model or worker unavailable (502)";
        break;
      case 503:
        out.title = "Service unavailable (503)";
        break;
      case 504:
        out.title = "Timed out (504)";
        break;
      default:
        out.title = result.status >= 500 ? `Server error (${result.status})` : `Error ${result.status}`;
    }
    return out;
  }

  function renderAlert(node, info) {
    node.replaceChildren(el("strong", { text: info.title + ": " }), info.message);
    if (info.balance !== undefined && info.balance !== null) {
      node.append(el("br"), `Your balance: ${info.balance} credits.`);
    }
    if (info.hint) node.append(el("br"), info.hint);
    if (info.retryAfter) {
      node.append(el("br"), "Try again in ", el("span", { class: "countdown", text: `${info.retryAfter}` }), " s.");
    }
    node.dataset.status = String(info.status ?? "");
    node.hidden = false;
  }

  function showFormError(info) {
    renderAlert($("form-error"), info);
    if (info.field === "api-key") markInvalid($("api-key"), null);
    else if (info.field) markField(info.field, info.message);
    if (info.retryAfter) startRetryCountdown(info.retryAfter);
  }

  function startRetryCountdown(seconds) {
    clearInterval(state.retryTimer);
    state.retryUntil = Date.now() + seconds * 1000;
    const button = $("generate");
    const tick = () => {
      const left = Math.ceil((state.retryUntil - Date.now()) / 1000);
      for (const node of document.querySelectorAll(".countdown")) node.textContent = String(Math.max(0, left));
      if (left <= 0) {
        clearInterval(state.retryTimer);
        button.disabled = false;
        $("retry-countdown").textContent = "";
        return;
      }
      button.disabled = true;
      $("retry-countdown").textContent = `Rate limited: you can submit again in ${left} s.`;
    };
    tick();
    state.retryTimer = setInterval(tick, 250);
  }

  function clearErrors() {
    $("form-error").hidden = true;
    $("form-error").replaceChildren();
    markInvalid($("api-key"), false);
    for (const field of state.fields) setFieldError(field, null);
  }

  // The summary of a form mistake goes once every field it named is fixed.
  function refreshFormAlert() {
    const alert = $("form-error");
    if (alert.hidden || !["client", "400"].includes(alert.dataset.status)) return;
    if (!document.querySelector("#gen-form .field.invalid")) alert.hidden = true;
  }

  function markInvalid(input, invalid) {
    if (!input) return;
    if (invalid === false) input.removeAttribute("aria-invalid");
    else input.setAttribute("aria-invalid", "true");
  }

  function setFieldError(field, message) {
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

  function markField(name, message) {
    const field = state.fields.find((f) => f.name === name);
    if (!field) return false;
    // The server's message starts with the field's name: keep only the reason under the field.
    const reason = String(message).replace(new RegExp(`^\\s*${name}(\\.[\\w.]+)?\\s*:\\s*`), "");
    setFieldError(field, reason);
    if (field.advanced) $("advanced").open = true;
    const box = $(`field-${name}`);
    const input = box && box.querySelector("textarea, select, input:not([type=radio])");
    if (input) input.focus();
    return true;
  }

  // --- the schema-driven form ------------------------------------------------------------
  function resolveRef(schema, root) {
    if (schema && schema.$ref && root) {
      const path = schema.$ref.replace(/^#\//, "").split("/");
      let node = root;
      for (const part of path) node = node ? node[part] : undefined;
      return node || {};
    }
    return schema || {};
  }

  function describeField(name, prop, required, root) {
    prop = resolveRef(prop, root);
    const branches = prop.anyOf || prop.oneOf || [prop];
    const types = new Set();
    const options = [];
    const field = {
      name,
      required,
      title: LABELS[name] || prop.title || name,
      description: prop.description || "",
      default: prop.default,
      nullable: false,
    };
    const take = (source) => {
      for (const key of ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern"]) {
        if (source[key] !== undefined && field[key] === undefined) field[key] = source[key];
      }
    };
    take(prop);
    for (const raw of branches) {
      const branch = resolveRef(raw, root);
      if (branch.type === "null") {
        field.nullable = true;
        continue;
      }
      if (branch.type) types.add(branch.type);
      for (const value of branch.enum || []) {
        if (!options.some((o) => String(o) === String(value))) options.push(value);
      }
      if (branch.const !== undefined && !options.some((o) => String(o) === String(branch.const))) {
        options.push(branch.const);
      }
      take(branch);
    }
    for (const value of prop.enum || []) {
      if (!options.some((o) => String(o) === String(value))) options.push(value);
    }
    field.type = ["integer", "number", "boolean", "string"].find((t) => types.has(t)) || "string";
    if (options.length) field.options = options;
    field.advanced = !MAIN_FIELDS.includes(name) && !required;
    if (name === "input_reference") field.kind = "reference";
    else if (field.options) field.kind = "select";
    else if (field.type === "boolean") field.kind = "checkbox";
    else if (field.type === "integer" || field.type === "number") field.kind = "number";
    else if (/prompt/.test(name) || (field.maxLength || 0) > 300) field.kind = "textarea";
    else field.kind = "text";
    return field;
  }

  function sizeLabel(value) {
    const match = /^(\d+)x(\d+)$/.exec(String(value));
    if (!match) return String(value);
    const [w, h] = [Number(match[1]), Number(match[2])];
    const shape = w > h ? "landscape" : w < h ? "portrait" : "square";
    return `${w} × ${h} (${shape})`;
  }

  function fieldHelp(field) {
    const rules = [];
    if (field.kind === "number") {
      if (field.minimum !== undefined && field.maximum !== undefined) rules.push(`${field.minimum} to ${field.maximum}`);
      else if (field.minimum !== undefined) rules.push(`at least ${field.minimum}`);
      else if (field.maximum !== undefined) rules.push(`at most ${field.maximum}`);
      if (field.default === null || field.default === undefined) rules.push("empty: the model's default");
    }
    return [field.description, rules.length ? `(${rules.join("; ")})` : ""].filter(Boolean).join(" ");
  }

  function buildField(field) {
    const id = `param-${field.name}`;
    const helpId = `help-${field.name}`;
    const errorId = `error-${field.name}`;
    const box = el("div", { class: "field", id: `field-${field.name}`, "data-param": field.name });
    const describedBy = `${helpId} ${errorId}`;
    const help = el("p", { class: "help", id: helpId, text: fieldHelp(field) });
    const error = el("p", { class: "field-error", id: errorId, hidden: true, role: "alert" });
    const label = () =>
      el("label", { for: id }, field.title, field.required ? el("span", { class: "req", "aria-hidden": "true", text: "*" }) : null);
    const saved = state.values[field.name];

    if (field.kind === "reference") {
      box.classList.add("full");
      box.append(buildReference(field, describedBy), help, error);
      return box;
    }
    let input;
    if (field.kind === "select") {
      input = el("select", { id, name: field.name, "aria-describedby": describedBy, required: field.required });
      if (!field.required && (field.default === null || field.default === undefined)) {
        input.append(el("option", { value: "", text: "(model default)" }));
      }
      field.options.forEach((value) => {
        const text = field.name === "size" ? sizeLabel(value) : field.name === "duration" ? `${value} s` : String(value);
        input.append(el("option", { value: String(value), text }));
      });
      const initial = saved !== undefined ? saved : field.default;
      if (initial !== undefined && initial !== null && field.options.some((o) => String(o) === String(initial))) {
        input.value = String(initial);
      }
    } else if (field.kind === "textarea") {
      box.classList.add("full");
      input = el("textarea", {
        id,
        name: field.name,
        rows: field.name === "prompt" ? 4 : 2,
        "aria-describedby": describedBy,
        "aria-required": field.required ? "true" : null,
        placeholder: field.name === "prompt" ? "A red fox trotting through fresh snow at dawn, cinematic" : null,
      });
      input.value = saved !== undefined ? saved : typeof field.default === "string" ? field.default : "";
    } else if (field.kind === "checkbox") {
      input = el("input", { id, name: field.name, type: "checkbox", "aria-describedby": describedBy });
      input.checked = saved !== undefined ? Boolean(saved) : Boolean(field.default);
    } else if (field.kind === "number") {
      input = el("input", {
        id,
        name: field.name,
        type: "number",
        inputmode: field.type === "integer" ? "numeric" : "decimal",
        step: field.type === "integer" ? "1" : "any",
        min: field.minimum,
        max: field.maximum,
        placeholder: field.default === null || field.default === undefined ? "default" : String(field.default),
        "aria-describedby": describedBy,
        "aria-required": field.required ? "true" : null,
      });
      if (saved !== undefined) input.value = saved;
    } else {
      input = el("input", { id, name: field.name, type: "text", "aria-describedby": describedBy, "aria-required": field.required ? "true" : null });
      input.value = saved !== undefined ? saved : typeof field.default === "string" ? field.default : "";
    }
    box.append(label(), input);
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
        updateSnippet();
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
      updateSnippet();
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
    const urlRow = $("ref-url-row");
    if (!fileRow) return;
    fileRow.hidden = mode !== "file";
    urlRow.hidden = mode !== "url";
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
      updateSnippet();
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
      updateSnippet();
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

  function renderForm() {
    rememberValues();
    const model = state.model;
    const main = $("fields");
    const advanced = $("advanced-fields");
    main.replaceChildren();
    advanced.replaceChildren();
    state.fields = [];
    if (!model) {
      main.append(el("p", { class: "muted", text: "No model to choose from." }));
      main.dataset.ready = "false";
      return;
    }
    const schema = model.parameters || {};
    const required = new Set(schema.required || []);
    const props = schema.properties || {};
    const names = Object.keys(props).sort((a, b) => {
      const ia = MAIN_FIELDS.indexOf(a);
      const ib = MAIN_FIELDS.indexOf(b);
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib);
    });
    const fields = names.map((name) => describeField(name, props[name], required.has(name), schema));
    // In the two-column grid, full-width boxes (textareas) after the short inputs leave no holes.
    const wide = (f) => (f.kind === "textarea" || f.kind === "reference" ? 1 : 0);
    const ordered = [...fields.filter((f) => !f.advanced), ...fields.filter((f) => f.advanced).sort((a, b) => wide(a) - wide(b))];
    for (const field of ordered) {
      state.fields.push(field);
      (field.advanced ? advanced : main).append(buildField(field));
    }
    $("advanced").hidden = advanced.childElementCount === 0;
    syncReference();
    main.dataset.ready = "true";
  }

  // The request's parameters, and the rule each breaks: the schema's own rules, checked here
  // so a mistake is shown at once; the server checks them again either way.
  function collect() {
    const params = {};
    const problems = [];
    for (const field of state.fields) {
      const problem = (message) => problems.push({ field, message });
      if (field.kind === "reference") {
        const mode = state.values.input_reference_mode || "none";
        if (mode === "file") {
          if (state.reference) params[field.name] = state.reference.dataUri;
          else problem("choose an image file, or pick None");
        } else if (mode === "url") {
          const url = ($("ref-url").value || "").trim();
          if (!url) problem("enter the image's URL, or pick None");
          else if (!/^https?:\/\/[^/\s]+/i.test(url)) problem("must be an http:// or https:// URL");
          else params[field.name] = url;
        } else if (field.required) {
          problem("required");
        }
        continue;
      }
      const input = $(`param-${field.name}`);
      if (!input) continue;
      if (field.kind === "checkbox") {
        if (input.checked || field.default !== undefined) params[field.name] = input.checked;
        continue;
      }
      const raw = input.value;
      if (field.kind === "select") {
        if (raw === "") {
          if (field.required) problem("required");
          continue;
        }
        const value = field.options.find((o) => String(o) === raw);
        if (value === undefined) problem(`must be one of ${field.options.join(", ")} (got ${raw})`);
        else params[field.name] = value;
        continue;
      }
      if (field.kind === "number") {
        if (raw.trim() === "") {
          if (field.required) problem("required");
          else if (input.validity && input.validity.badInput) problem("must be a number");
          continue;
        }
        const value = Number(raw);
        if (!Number.isFinite(value)) {
          problem("must be a finite number");
          continue;
        }
        if (field.type === "integer" && !Number.isInteger(value)) {
          problem(`must be an integer (got ${raw})`);
          continue;
        }
        const low = field.minimum ?? (field.exclusiveMinimum !== undefined ? field.exclusiveMinimum : undefined);
        const high = field.maximum ?? (field.exclusiveMaximum !== undefined ? field.exclusiveMaximum : undefined);
        const tooLow = (field.minimum !== undefined && value < field.minimum) || (field.exclusiveMinimum !== undefined && value <= field.exclusiveMinimum);
        const tooHigh = (field.maximum !== undefined && value > field.maximum) || (field.exclusiveMaximum !== undefined && value >= field.exclusiveMaximum);
        if (tooLow || tooHigh) {
          if (low !== undefined && high !== undefined) problem(`must be between ${low} and ${high} (got ${raw})`);
          else if (tooLow) problem(`must be at least ${low} (got ${raw})`);
          else problem(`must be at most ${high} (got ${raw})`);
          continue;
        }
        params[field.name] = value;
        continue;
      }
      // text and textarea
      if (raw.trim() === "") {
        if (field.required) problem(raw === "" ? "required" : "must not be empty");
        else if (raw !== "") problem("must not be only spaces");
        continue;
      }
      const length = codePoints(raw);
      if (field.maxLength !== undefined && length > field.maxLength) {
        problem(`must be at most ${field.maxLength} characters (got ${length})`);
        continue;
      }
      if (field.minLength !== undefined && length < field.minLength) {
        problem(`must be at least ${field.minLength} characters (got ${length})`);
        continue;
      }
      if (field.pattern && !new RegExp(field.pattern, "u").test(raw)) {
        problem(`must match ${field.pattern}`);
        continue;
      }
      params[field.name] = raw;
    }
    return { params, problems };
  }

  // --- models ----------------------------------------------------------------------------
  async function loadModels() {
    const result = await api("GET", "/v1/models");
    const select = $("model");
    if (!result.ok) {
      const info = describe(result);
      $("fields").replaceChildren(el("p", { class: "alert", role: "alert" }, `Could not load the models: ${info.message}`));
      return;
    }
    state.models = (result.data && result.data.data) || [];
    select.replaceChildren();
    for (const model of state.models) {
      const text = model.available === false ? `${model.id} — unavailable` : model.alias_of ? `${model.id} (→ ${model.served_by || model.alias_of})` : model.id;
      select.append(el("option", { value: model.id, text, disabled: model.available === false }));
    }
    const usable = state.models.filter((m) => m.available !== false);
    const wanted = new URLSearchParams(location.search).get("model") || storage.get(STORE.model, null);
    const choice =
      usable.find((m) => m.id === wanted) || usable.find((m) => m.id === "sora-2-pro") || usable[0] || state.models[0] || null;
    if (choice) select.value = choice.id;
    chooseModel(choice ? choice.id : null);
  }

  function chooseModel(id) {
    state.model = state.models.find((m) => m.id === id) || null;
    if (state.model) storage.set(STORE.model, state.model.id);
    const note = $("model-note");
    note.replaceChildren();
    note.className = "help";
    if (state.model) {
      const bits = [];
      if (state.model.alias_of) bits.push(`Served by ${state.model.served_by || state.model.alias_of}.`);
      if (state.model.available === false) bits.push(`Unavailable: ${state.model.reason || "no reason given"}.`);
      if (state.model.warning) bits.push(state.model.warning);
      note.textContent = bits.join(" ");
      if (state.model.warning || state.model.available === false) note.classList.add("note-warn");
    }
    renderForm();
    clearErrors();
    updateSnippet();
  }

  // --- capabilities: routes other parts of the server may or may not have yet ------------
  async function probeCapabilities() {
    try {
      const response = await fetch("/openapi.json", { cache: "no-store" });
      if (!response.ok) return;
      const spec = await response.json();
      const paths = Object.keys(spec.paths || {});
      const has = (pattern) => paths.some((p) => pattern.test(p));
      state.canCancel = has(/^\/v2\/requests\/\{[^}]+\}\/cancel$/);
      if (state.job && !state.job.done) $("cancel").hidden = !state.canCancel;
    } catch {
      /* unknown: the buttons stay, and a 404 hides them */
    }
  }

  // --- a request's life ------------------------------------------------------------------
  function resetJobView(id) {
    $("job-empty").hidden = true;
    $("job").hidden = false;
    $("job-id").textContent = id;
    $("job-error").hidden = true;
    $("result").hidden = true;
    $("result-meta").replaceChildren();
    const player = $("player");
    player.removeAttribute("src");
    player.load();
    setProgress(0);
    $("progress-row").hidden = false;
    $("job-transport").textContent = "";
    $("job-panel").dataset.status = "";
  }

  function setProgress(percent) {
    const value = Math.max(0, Math.min(100, Math.round(Number(percent) || 0)));
    $("job-progress").value = value;
    $("job-progress").setAttribute("aria-valuenow", String(value));
    $("job-progress-label").textContent = `${value}%`;
  }

  function showStatus(body) {
    const status = String(body.status || "").toUpperCase();
    const badge = $("job-status");
    badge.textContent = status || "—";
    badge.dataset.status = status;
    $("job-panel").dataset.status = status;
    const detail = $("job-detail");
    if (status === "QUEUED") {
      const position = body.queue_position;
      detail.textContent =
        position === undefined || position === null
          ? "Waiting in the queue…"
          : Number(position) <= 1
            ? `Queue position ${position}: next to run.`
            : `Queue position ${position}.`;
      setProgress(0);
    } else if (status === "PROCESSING") {
      const progress = Number(body.progress || 0);
      detail.textContent = progress > 0 ? `Generating… ${Math.round(progress)}%` : "Generating… (loading the model)";
      setProgress(progress);
    } else if (status === "COMPLETED") {
      detail.textContent = "Done.";
      setProgress(100);
    } else if (TERMINAL.has(status)) {
      detail.textContent = isCancelled(body)
        ? "The request was cancelled."
        : status === "FAILED"
          ? "The request failed."
          : `The request ended: ${status.toLowerCase()}.`;
    }
    $("progress-row").hidden = TERMINAL.has(status) && status !== "COMPLETED";
    const active = !TERMINAL.has(status);
    $("cancel").hidden = !active || state.canCancel === false;
    $("cancel").disabled = !active;
  }

  const isCancelled = (body) => /^CANCEL/.test(String(body.status).toUpperCase()) || /\bcancel/i.test(String(body.error || ""));

  function stopTracking() {
    if (state.job && state.job.controller) state.job.controller.abort();
    state.job = null;
  }

  async function track(id, first) {
    stopTracking();
    const controller = new AbortController();
    const job = { id, controller, done: false };
    state.job = job;
    resetJobView(id);
    showStatus(first || { status: "QUEUED" });
    try {
      let final = null;
      if (state.canStream !== false) final = await followEvents(id, controller.signal);
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

  // The live stream, read with fetch (EventSource cannot send the x-api-key header). Answers
  // the terminal status body, or null when the server has no stream (or it ended early): the
  // caller then polls.
  async function followEvents(id, signal) {
    let response;
    try {
      response = await fetch(`/v2/requests/${encodeURIComponent(id)}/events`, {
        headers: authHeaders({ Accept: "text/event-stream" }),
        cache: "no-store",
        signal,
      });
    } catch (err) {
      if (isAbort(err)) throw err;
      return null;
    }
    const type = response.headers.get("Content-Type") || "";
    if (response.status !== 200 || !type.includes("text/event-stream") || !response.body) {
      if (response.status === 404 || response.status === 405) state.canStream = false;
      try {
        await response.body?.cancel();
      } catch {
        /* nothing to release */
      }
      return null;
    }
    state.canStream = true;
    $("job-transport").textContent = "· live";
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return null;
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
          showStatus(body);
          if (TERMINAL.has(String(body.status).toUpperCase())) {
            reader.cancel().catch(() => {});
            return body;
          }
        }
      }
    } catch (err) {
      if (isAbort(err)) throw err;
      return null; // dropped: polling picks up from the current state
    }
  }

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

  async function poll(id, signal) {
    let failures = 0;
    for (;;) {
      const result = await api("GET", `/v2/requests/${encodeURIComponent(id)}/status`, { signal });
      if (result.ok || (result.status === 422 && result.data && result.data.status)) {
        failures = 0;
        showStatus(result.data);
        if (TERMINAL.has(String(result.data.status).toUpperCase())) return result.data;
        await sleep(result.data.status === "QUEUED" ? 1000 : 500, signal);
        continue;
      }
      if (result.status === 429 || result.status === 502 || result.status === 503 || result.status === 0) {
        failures += 1;
        if (failures > 20) return { status: "FAILED", error: describe(result).message, _http: result };
        const wait = result.status === 429 || result.status === 503 ? retryAfterSeconds(result.headers, result.data) * 1000 : Math.min(8000, 500 * 2 ** failures);
        $("job-detail").textContent = `${describe(result).title}; checking again in ${Math.round(wait / 1000)} s…`;
        await sleep(wait, signal);
        continue;
      }
      return { status: "FAILED", _http: result };
    }
  }

  async function finish(id, final, signal) {
    $("cancel").hidden = true;
    refreshGalleryItem(id);
    if (final._http) {
      showJobError(describe(final._http));
      return;
    }
    const status = String(final.status).toUpperCase();
    if (status !== "COMPLETED") {
      const title = isCancelled(final) ? "Cancelled" : status === "FAILED" ? "Generation failed" : `Request ${status.toLowerCase()}`;
      showJobError({ title, message: final.error || "no reason given" });
      return;
    }
    const result = await api("GET", `/v2/requests/${encodeURIComponent(id)}`, { signal });
    if (!result.ok) {
      showJobError(describe(result));
      return;
    }
    showResult(result.data);
  }

  function showJobError(info) {
    renderAlert($("job-error"), info);
    if (info.retryAfter) startRetryCountdown(info.retryAfter);
  }

  function showResult(body) {
    showStatus(body);
    const player = $("player");
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
      ["Player reports", "loading…"],
      ["Queue time", formatSeconds(metrics.queue_time)],
      ["Inference time", formatSeconds(metrics.inference_time)],
      ["Encode time", formatSeconds(metrics.encode_time)],
      ["Total time", formatSeconds(metrics.total_time)],
      ["Served by", body.served_by || body.model || "—"],
      ["Seed", body.seed ?? "—"],
      ["Expires", body.expires_at ? new Date(body.expires_at).toLocaleString() : "—"],
    ];
    const list = $("result-meta");
    list.replaceChildren(...rows.flatMap(([term, value]) => [el("dt", { text: term }), el("dd", { text: String(value), "data-term": term })]));
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
      const blob = await response.blob();
      const objectUrl = URL.createObjectURL(blob);
      const temp = el("a", { href: objectUrl, download: link.getAttribute("download") || "video.mp4" });
      document.body.append(temp);
      temp.click();
      temp.remove();
      setTimeout(() => URL.revokeObjectURL(objectUrl), 10000);
    } catch {
      window.open(url.href, "_blank", "noopener");
    }
  }

  async function onCancel() {
    const job = state.job;
    if (!job) return;
    const button = $("cancel");
    button.disabled = true;
    const result = await api("POST", `/v2/requests/${encodeURIComponent(job.id)}/cancel`);
    if (result.ok) {
      const data = result.data || {};
      if (data.status) showStatus(data);
      if (data.cancelled === false) toast(data.message || "Nothing to cancel.");
      else if (data.status && !TERMINAL.has(String(data.status).toUpperCase())) {
        $("job-detail").textContent = data.message ? `Cancelling: ${data.message}` : "Cancelling…";
      }
      return;
    }
    if (result.status === 404 || result.status === 405) {
      state.canCancel = false;
      button.hidden = true;
      toast(result.status === 405 || /not found: POST/.test(result.data?.error || "") ? "This server cannot cancel requests." : "The request is gone.");
      return;
    }
    const info = describe(result);
    if (result.status === 409) info.title = "Too late to cancel (409)";
    showJobError(info);
    button.disabled = false;
  }

  // --- submit ----------------------------------------------------------------------------
  async function onSubmit(event) {
    event.preventDefault();
    if (Date.now() < state.retryUntil) return;
    clearErrors();
    if (!state.model) return;
    const { params, problems } = collect();
    if (problems.length) {
      for (const { field, message } of problems) setFieldError(field, message);
      const first = problems[0];
      if (problems.some((p) => p.field.advanced)) $("advanced").open = true;
      renderAlert($("form-error"), {
        title: "Check the form",
        message: problems.map((p) => `${p.field.title}: ${p.message}`).join("; "),
        status: "client",
      });
      const box = $(`field-${first.field.name}`);
      const input = box && box.querySelector("textarea, select, input:not([type=radio])");
      if (input) input.focus();
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
    const id = result.data.request_id;
    remember({ id, model: state.model.id, prompt: params.prompt || "", created: Date.now() });
    renderGallery();
    track(id, result.data);
  }

  // --- recent requests -------------------------------------------------------------------
  const gallery = {
    history: [], // from GET /v1/requests, when the server has it
    gone: new Set(), // ids that answered 404 (expired) or were forgotten
    info: new Map(), // id -> the last GET /v2/requests/{id} body
  };

  function recent() {
    const list = storage.get(STORE.recent, []);
    return Array.isArray(list) ? list.filter((e) => e && typeof e.id === "string") : [];
  }

  function remember(entry) {
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

  function galleryEntries() {
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

  // Usage history from the server, when it has the route (GET /v1/requests); else null.
  async function serverHistory() {
    const result = await api("GET", `/v1/requests?limit=${GALLERY_SIZE}`);
    if (!result.ok || !result.data) return null;
    const items = Array.isArray(result.data) ? result.data : result.data.data || result.data.requests || result.data.items;
    if (!Array.isArray(items)) return null;
    const when = (value) => (typeof value === "number" ? value * 1000 : Date.parse(value));
    return items
      .map((item) => ({
        id: item.request_id || item.id,
        model: item.model,
        prompt: (item.parameters && item.parameters.prompt) || (item.params && item.params.prompt) || item.prompt || "",
        created: item.created_at ? when(item.created_at) : 0,
        status: item.status,
      }))
      .filter((e) => typeof e.id === "string");
  }

  async function refreshGallery() {
    const note = $("gallery-note");
    gallery.history = (await serverHistory().catch(() => null)) || [];
    const statuses = await Promise.all(galleryEntries().map((e) => refreshGalleryItem(e.id, false)));
    note.textContent = statuses.includes(401) ? "Enter a valid API key to see your requests." : "";
    renderGallery();
  }

  async function refreshGalleryItem(id, render = true) {
    const result = await api("GET", `/v2/requests/${encodeURIComponent(id)}`);
    if (result.status === 404) forget(id); // expired (or another key's): it never comes back
    else if (result.ok || result.status === 422) gallery.info.set(id, result.data || {});
    if (render) renderGallery();
    return result.status;
  }

  function renderGallery() {
    const list = $("gallery");
    const entries = galleryEntries();
    list.replaceChildren();
    if (!entries.length) {
      list.append(el("li", { class: "muted empty", text: "Nothing yet: your requests appear here for as long as the server keeps them." }));
      return;
    }
    for (const entry of entries) {
      const info = gallery.info.get(entry.id) || {};
      const status = String(info.status || entry.status || "…").toUpperCase();
      const prompt = entry.prompt || (info.params && info.params.prompt) || entry.id;
      const thumb = info.thumbnail
        ? el("img", { src: info.thumbnail, alt: `Thumbnail: ${prompt}`, loading: "lazy" })
        : el("span", { text: status === "FAILED" ? "failed" : status === "COMPLETED" ? "no thumbnail" : "in progress" });
      const button = el(
        "button",
        {
          type: "button",
          "data-id": entry.id,
          "aria-current": state.job && state.job.id === entry.id ? "true" : null,
          "aria-label": `${status.toLowerCase()}: ${prompt}`,
          title: info.error ? `${prompt}\n${info.error}` : prompt,
          onclick: () => openRequest(entry.id),
        },
        el("span", { class: "thumb" }, thumb),
        el(
          "span",
          { class: "caption" },
          el("span", { class: "prompt", text: prompt }),
          el("span", { class: "badge", "data-status": status, text: status }),
          el("span", { class: "muted", text: [entry.model || info.model, entry.created ? timeAgo(entry.created) : ""].filter(Boolean).join(" · ") }),
        ),
      );
      list.append(el("li", {}, button));
    }
  }

  async function openRequest(id) {
    const info = gallery.info.get(id);
    const status = info && String(info.status || "").toUpperCase();
    if (status && !TERMINAL.has(status)) {
      track(id, info);
      renderGallery();
      return;
    }
    stopTracking();
    state.job = { id, controller: null, done: true };
    resetJobView(id);
    const result = await api("GET", `/v2/requests/${encodeURIComponent(id)}`);
    if (result.ok) {
      showStatus(result.data);
      if (String(result.data.status).toUpperCase() === "COMPLETED") showResult(result.data);
      else track(id, result.data);
    } else if (result.status === 422 && result.data) {
      showStatus(result.data);
      showJobError({ title: isCancelled(result.data) ? "Cancelled" : "Generation failed", message: result.data.error || "no reason given" });
    } else {
      if (result.status === 404) forget(id);
      showJobError(describe(result));
    }
    renderGallery();
    $("job-panel").scrollIntoView({ block: "start", behavior: "smooth" });
  }

  // --- snippets --------------------------------------------------------------------------
  const py = (value) => (typeof value === "string" ? JSON.stringify(value) : typeof value === "boolean" ? (value ? "True" : "False") : String(value));
  const shellQuote = (text) => `'${text.replace(/'/g, "'\\''")}'`;

  function snippetParams() {
    const { params } = collect();
    const mode = state.values.input_reference_mode || "none";
    let reference = null;
    if (params.input_reference !== undefined) {
      reference = mode === "file" ? { file: state.reference ? state.reference.name : "first-frame.png", type: state.reference ? state.reference.type : "image/png" } : { url: params.input_reference };
      delete params.input_reference;
    } else if (mode === "file") {
      reference = { file: "first-frame.png", type: "image/png" };
    }
    const prompt = params.prompt || "A red fox trotting through fresh snow at dawn";
    return { params: { prompt, ...Object.fromEntries(Object.entries(params).filter(([k]) => k !== "prompt")) }, reference };
  }

  function buildSnippet(tab) {
    const base = location.origin;
    const model = state.model ? state.model.id : "sora-2-pro";
    const { params, reference } = snippetParams();
    const file = reference && reference.file;
    if (tab === "curl") {
      const body = { ...params };
      if (reference && reference.url) body.input_reference = reference.url;
      let json = JSON.stringify(body, null, 2);
      const lines = [];
      if (file) {
        body.input_reference = "__IMAGE__";
        json = JSON.stringify(body, null, 2);
        lines.push(`IMAGE="data:${reference.type};base64,$(base64 -w0 ${shellQuote(file)})"`);
        json = shellQuote(json).replace('"__IMAGE__"', `"'"$IMAGE"'"`);
      } else {
        json = shellQuote(json);
      }
      lines.push(
        `# Submit (answers at once with the request id and its URLs)`,
        `curl -sS -X POST "${base}/v2/${model}" \\`,
        `  -H "x-api-key: $VIDEOSERVE_API_KEY" \\`,
        `  -H "Content-Type: application/json" \\`,
        `  -d ${json}`,
        ``,
        `# Poll, then read the result ("output" is a signed MP4 URL)`,
        `curl -sS -H "x-api-key: $VIDEOSERVE_API_KEY" "${base}/v2/requests/REQUEST_ID/status"`,
        `curl -sS -H "x-api-key: $VIDEOSERVE_API_KEY" "${base}/v2/requests/REQUEST_ID"`,
        ``,
        `# Or block until done and save the MP4 in one call:`,
        `# curl -sS -X POST "${base}/v1/${model}" -H "x-api-key: $VIDEOSERVE_API_KEY" \\`,
        `#   -H "Content-Type: application/json" -d ... -o out.mp4`,
      );
      return lines.join("\n");
    }
    const kwargs = (entries, extraIndent = "    ") => entries.map(([k, v]) => `${extraIndent}${k}=${v},`).join("\n");
    const entries = Object.entries(params).map(([k, v]) => [k, py(v)]);
    const imports = ["import os"];
    const pre = [];
    if (file) {
      if (tab !== "openai") {
        imports.unshift("import base64");
        pre.push(`with open(${py(file)}, "rb") as f:`, `    image = "data:${reference.type};base64," + base64.b64encode(f.read()).decode()`, ``);
      }
    }
    const refArg = () => {
      if (!reference) return [];
      if (tab === "openai") return [["input_reference", file ? `open(${py(file)}, "rb")` : `{"image_url": ${py(reference.url)}}`]];
      return [["input_reference", file ? "image" : py(reference.url)]];
    };
    if (tab === "python") {
      return [
        ...imports,
        "",
        "from videoserve import Client",
        "",
        `client = Client(api_key=os.environ["VIDEOSERVE_API_KEY"], base_url=${py(base)})`,
        ...pre,
        `job = client.submit_async(`,
        `    ${py(model)},`,
        kwargs([...entries, ...refArg()]),
        `)`,
        `result = job.wait()  # polls until COMPLETED; raises InferenceFailed with .detail`,
        `print(result["output"], result["width"], result["height"], result["seconds"])`,
        `job.download("out.mp4")`,
      ].join("\n");
    }
    if (tab === "segmind") {
      const segEntries = entries.map(([k, v]) => (k === "duration" ? [k, py(String(params.duration))] : [k, v]));
      return [
        ...imports,
        "import urllib.request",
        "",
        "from segmind import SegmindClient  # the official SDK, unchanged",
        "",
        `client = SegmindClient(api_key=os.environ["VIDEOSERVE_API_KEY"], base_url=${py(base + "/v1")})`,
        ...pre,
        `job = client.submit_async(`,
        `    ${py(model)},`,
        kwargs([...segEntries, ...refArg()]),
        `)`,
        `result = job.wait(timeout=900, interval=2.0)`,
        `urllib.request.urlretrieve(result["output"], "out.mp4")  # a signed URL: no key needed`,
      ].join("\n");
    }
    // openai
    const standard = [["model", py(model)], ["prompt", py(params.prompt)]];
    if (params.duration !== undefined) standard.push(["seconds", py(String(params.duration))]);
    if (params.size !== undefined) standard.push(["size", py(params.size)]);
    const extra = Object.entries(params).filter(([k]) => !["prompt", "duration", "size"].includes(k));
    const args = [...standard, ...refArg()];
    if (extra.length) args.push(["extra_body", `{${extra.map(([k, v]) => `${py(k)}: ${py(v)}`).join(", ")}}`]);
    return [
      ...imports,
      "",
      "from openai import OpenAI",
      "",
      `client = OpenAI(api_key=os.environ["VIDEOSERVE_API_KEY"], base_url=${py(base + "/v1")})`,
      `video = client.videos.create(`,
      kwargs(args),
      `)`,
      `video = client.videos.poll(video.id)`,
      `client.videos.download_content(video.id).write_to_file("out.mp4")`,
    ].join("\n");
  }

  function updateSnippet() {
    $("snippet-lang").textContent = state.snippetTab === "curl" ? "shell" : "Python";
    $("snippet-code").textContent = buildSnippet(state.snippetTab);
  }

  function selectTab(name, focus) {
    state.snippetTab = name;
    storage.set(STORE.tab, name);
    for (const tab of document.querySelectorAll('[role="tab"]')) {
      const selected = tab.dataset.snippet === name;
      tab.setAttribute("aria-selected", String(selected));
      tab.tabIndex = selected ? 0 : -1;
      if (selected) {
        $("snippet").setAttribute("aria-labelledby", tab.id);
        if (focus) tab.focus();
      }
    }
    updateSnippet();
  }

  async function copySnippet() {
    const text = $("snippet-code").textContent;
    try {
      await navigator.clipboard.writeText(text);
      toast("Copied to the clipboard.");
    } catch {
      // No clipboard permission (plain http on another host): select the text instead.
      const range = document.createRange();
      range.selectNodeContents($("snippet-code"));
      const selection = getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      toast("Selected: press Ctrl+C (⌘C) to copy.");
    }
  }

  // --- wiring ----------------------------------------------------------------------------
  function init() {
    const keyInput = $("api-key");
    keyInput.value = storage.get(STORE.key, "") || "";
    keyInput.addEventListener("change", () => {
      storage.set(STORE.key, keyInput.value.trim());
      markInvalid(keyInput, false);
      refreshGallery();
    });
    keyInput.addEventListener("input", () => {
      storage.set(STORE.key, keyInput.value.trim());
      markInvalid(keyInput, false);
    });
    $("api-key-toggle").addEventListener("click", (event) => {
      const show = keyInput.type === "password";
      keyInput.type = show ? "text" : "password";
      event.currentTarget.textContent = show ? "Hide" : "Show";
      event.currentTarget.setAttribute("aria-pressed", String(show));
    });
    $("model").addEventListener("change", (event) => chooseModel(event.target.value));
    $("gen-form").addEventListener("submit", onSubmit);
    $("gen-form").addEventListener("input", (event) => {
      const box = event.target.closest && event.target.closest(".field");
      if (box && box.classList.contains("invalid")) {
        const field = state.fields.find((f) => f.name === box.dataset.param);
        if (field) setFieldError(field, null);
        refreshFormAlert();
      }
      updateSnippet();
    });
    $("gen-form").addEventListener("change", updateSnippet);
    $("gen-form").addEventListener("keydown", (event) => {
      // Ctrl/Cmd+Enter submits from the prompt, as in most chat-style boxes.
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        $("gen-form").requestSubmit();
      }
    });
    $("cancel").addEventListener("click", onCancel);
    $("download").addEventListener("click", onDownload);
    $("player").addEventListener("loadedmetadata", onPlayerMetadata);
    $("player").addEventListener("error", () => {
      if ($("player").getAttribute("src")) {
        showJobError({ title: "Playback failed", message: "the browser could not load the video (the link may have expired)" });
      }
    });
    $("copy").addEventListener("click", copySnippet);
    const tabs = Array.from(document.querySelectorAll('[role="tab"]'));
    for (const tab of tabs) {
      tab.addEventListener("click", () => selectTab(tab.dataset.snippet, false));
      tab.addEventListener("keydown", (event) => {
        const index = tabs.indexOf(tab);
        let next = null;
        if (event.key === "ArrowRight") next = tabs[(index + 1) % tabs.length];
        else if (event.key === "ArrowLeft") next = tabs[(index - 1 + tabs.length) % tabs.length];
        else if (event.key === "Home") next = tabs[0];
        else if (event.key === "End") next = tabs[tabs.length - 1];
        if (next) {
          event.preventDefault();
          selectTab(next.dataset.snippet, true);
        }
      });
    }
    $("gallery-refresh").addEventListener("click", refreshGallery);
    $("gallery-clear").addEventListener("click", () => {
      for (const entry of galleryEntries()) gallery.gone.add(entry.id);
      storage.set(STORE.recent, []);
      gallery.info.clear();
      renderGallery();
    });
    const tab = storage.get(STORE.tab, "curl");
    selectTab(["curl", "python", "segmind", "openai"].includes(tab) ? tab : "curl", false);
    renderGallery();
    probeCapabilities();
    loadModels().then(() => refreshGallery());
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
