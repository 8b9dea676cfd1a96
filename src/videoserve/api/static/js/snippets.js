// "Code for this request": the current form as curl, videoserve.Client, the segmind SDK and
// the openai SDK, each runnable as shown (the e2e tests run the Python ones).

import { $, STORE, storage, toast } from "./dom.js";
import { collect } from "./form.js";
import { state } from "./state.js";

const TABS = ["curl", "python", "segmind", "openai"];

const py = (value) => (typeof value === "string" ? JSON.stringify(value) : typeof value === "boolean" ? (value ? "True" : "False") : String(value));
const shellQuote = (text) => `'${text.replace(/'/g, "'\\''")}'`;
const kwargs = (entries, indent = "    ") => entries.map(([k, v]) => `${indent}${k}=${v},`).join("\n");

// The form's parameters (prompt first) and the reference image: {file, type} or {url}.
function snippetParams() {
  const { params } = collect();
  const mode = state.values.input_reference_mode || "none";
  let reference = null;
  if (params.input_reference !== undefined) {
    reference =
      mode === "file"
        ? { file: state.reference ? state.reference.name : "first-frame.png", type: state.reference ? state.reference.type : "image/png" }
        : { url: params.input_reference };
    delete params.input_reference;
  } else if (mode === "file") {
    reference = { file: "first-frame.png", type: "image/png" };
  }
  const prompt = params.prompt || "A red fox trotting through fresh snow at dawn";
  const rest = Object.entries(params).filter(([k]) => k !== "prompt");
  return { params: { prompt, ...Object.fromEntries(rest) }, reference };
}

function curlSnippet(base, model, params, reference) {
  const body = { ...params };
  const file = reference && reference.file;
  if (reference && reference.url) body.input_reference = reference.url;
  const lines = [];
  let json;
  if (file) {
    body.input_reference = "__IMAGE__";
    lines.push(`IMAGE="data:${reference.type};base64,$(base64 -w0 ${shellQuote(file)})"`);
    json = shellQuote(JSON.stringify(body, null, 2)).replace('"__IMAGE__"', `"'"$IMAGE"'"`);
  } else {
    json = shellQuote(JSON.stringify(body, null, 2));
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

function pythonSnippet(tab, base, model, params, reference) {
  const file = reference && reference.file;
  const entries = Object.entries(params).map(([k, v]) => [k, py(v)]);
  const imports = ["import os"];
  const pre = [];
  if (file && tab !== "openai") {
    imports.unshift("import base64");
    pre.push(`with open(${py(file)}, "rb") as f:`, `    image = "data:${reference.type};base64," + base64.b64encode(f.read()).decode()`, ``);
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
  const standard = [
    ["model", py(model)],
    ["prompt", py(params.prompt)],
  ];
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

export function buildSnippet(tab) {
  const base = location.origin;
  const model = state.model ? state.model.id : "sora-2-pro";
  const { params, reference } = snippetParams();
  if (tab === "curl") return curlSnippet(base, model, params, reference);
  return pythonSnippet(tab, base, model, params, reference);
}

export function updateSnippet() {
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

// The tabs follow the ARIA tabs pattern: arrows, Home and End move between them.
export function initSnippets() {
  $("copy").addEventListener("click", copySnippet);
  const tabs = Array.from(document.querySelectorAll('[role="tab"]'));
  for (const tab of tabs) {
    tab.addEventListener("click", () => selectTab(tab.dataset.snippet, false));
    tab.addEventListener("keydown", (event) => {
      const index = tabs.indexOf(tab);
      const moves = {
        ArrowRight: tabs[(index + 1) % tabs.length],
        ArrowLeft: tabs[(index - 1 + tabs.length) % tabs.length],
        Home: tabs[0],
        End: tabs[tabs.length - 1],
      };
      const next = moves[event.key];
      if (next) {
        event.preventDefault();
        selectTab(next.dataset.snippet, true);
      }
    });
  }
  const saved = storage.get(STORE.tab, "curl");
  selectTab(TABS.includes(saved) ? saved : "curl", false);
}
