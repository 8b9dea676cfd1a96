// From a model's JSON schema (GET /v1/models: `parameters`) to field descriptors, and the
// schema's own rules checked on a field's raw value: pure functions, no DOM.

export const MAIN_FIELDS = ["prompt", "duration", "size", "input_reference"];

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

function resolveRef(schema, root) {
  if (schema && schema.$ref && root) {
    const path = schema.$ref.replace(/^#\//, "").split("/");
    let node = root;
    for (const part of path) node = node ? node[part] : undefined;
    return node || {};
  }
  return schema || {};
}

const RULES = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern"];

// {name, required, title, description, default, type, options, kind, advanced, ...rules}
export function describeField(name, prop, required, root) {
  prop = resolveRef(prop, root);
  const branches = prop.anyOf || prop.oneOf || [prop];
  const types = new Set();
  const options = [];
  const addOption = (value) => {
    if (!options.some((o) => String(o) === String(value))) options.push(value);
  };
  const field = {
    name,
    required,
    title: LABELS[name] || prop.title || name,
    description: prop.description || "",
    default: prop.default,
    nullable: false,
  };
  const take = (source) => {
    for (const key of RULES) if (source[key] !== undefined && field[key] === undefined) field[key] = source[key];
  };
  take(prop);
  for (const raw of branches) {
    const branch = resolveRef(raw, root);
    if (branch.type === "null") {
      field.nullable = true;
      continue;
    }
    if (branch.type) types.add(branch.type);
    for (const value of branch.enum || []) addOption(value);
    if (branch.const !== undefined) addOption(branch.const);
    take(branch);
  }
  for (const value of prop.enum || []) addOption(value);
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

// The model's fields in form order: the main ones first, then the advanced ones, full-width
// boxes last so the two-column grid has no holes.
export function fieldsOf(model) {
  const schema = (model && model.parameters) || {};
  const required = new Set(schema.required || []);
  const props = schema.properties || {};
  const rank = (name) => (MAIN_FIELDS.includes(name) ? MAIN_FIELDS.indexOf(name) : 99);
  const names = Object.keys(props).sort((a, b) => rank(a) - rank(b));
  const fields = names.map((name) => describeField(name, props[name], required.has(name), schema));
  const wide = (f) => (f.kind === "textarea" || f.kind === "reference" ? 1 : 0);
  return [...fields.filter((f) => !f.advanced), ...fields.filter((f) => f.advanced).sort((a, b) => wide(a) - wide(b))];
}

export function sizeLabel(value) {
  const match = /^(\d+)x(\d+)$/.exec(String(value));
  if (!match) return String(value);
  const [w, h] = [Number(match[1]), Number(match[2])];
  const shape = w > h ? "landscape" : w < h ? "portrait" : "square";
  return `${w} × ${h} (${shape})`;
}

export function fieldHelp(field) {
  const rules = [];
  if (field.kind === "number") {
    if (field.minimum !== undefined && field.maximum !== undefined) rules.push(`${field.minimum} to ${field.maximum}`);
    else if (field.minimum !== undefined) rules.push(`at least ${field.minimum}`);
    else if (field.maximum !== undefined) rules.push(`at most ${field.maximum}`);
    if (field.default === null || field.default === undefined) rules.push("empty: the model's default");
  }
  return [field.description, rules.length ? `(${rules.join("; ")})` : ""].filter(Boolean).join(" ");
}

// {value} to send, {skip: true} to leave out, or {problem} naming the rule it breaks. The
// server checks the same rules again; checking here shows a mistake at once.
export function checkValue(field, raw, { badInput = false } = {}) {
  if (field.kind === "select") {
    if (raw === "") return field.required ? { problem: "required" } : { skip: true };
    const value = field.options.find((o) => String(o) === raw);
    return value === undefined ? { problem: `must be one of ${field.options.join(", ")} (got ${raw})` } : { value };
  }
  if (field.kind === "number") return checkNumber(field, raw, badInput);
  if (raw.trim() === "") {
    if (field.required) return { problem: raw === "" ? "required" : "must not be empty" };
    return raw === "" ? { skip: true } : { problem: "must not be only spaces" };
  }
  const length = Array.from(raw).length;
  if (field.maxLength !== undefined && length > field.maxLength) {
    return { problem: `must be at most ${field.maxLength} characters (got ${length})` };
  }
  if (field.minLength !== undefined && length < field.minLength) {
    return { problem: `must be at least ${field.minLength} characters (got ${length})` };
  }
  if (field.pattern && !new RegExp(field.pattern, "u").test(raw)) return { problem: `must match ${field.pattern}` };
  return { value: raw };
}

function checkNumber(field, raw, badInput) {
  if (raw.trim() === "") {
    if (field.required) return { problem: "required" };
    return badInput ? { problem: "must be a number" } : { skip: true };
  }
  const value = Number(raw);
  if (!Number.isFinite(value)) return { problem: "must be a finite number" };
  if (field.type === "integer" && !Number.isInteger(value)) return { problem: `must be an integer (got ${raw})` };
  const low = field.minimum ?? field.exclusiveMinimum;
  const high = field.maximum ?? field.exclusiveMaximum;
  const tooLow =
    (field.minimum !== undefined && value < field.minimum) || (field.exclusiveMinimum !== undefined && value <= field.exclusiveMinimum);
  const tooHigh =
    (field.maximum !== undefined && value > field.maximum) || (field.exclusiveMaximum !== undefined && value >= field.exclusiveMaximum);
  if (tooLow || tooHigh) {
    if (low !== undefined && high !== undefined) return { problem: `must be between ${low} and ${high} (got ${raw})` };
    return tooLow ? { problem: `must be at least ${low} (got ${raw})` } : { problem: `must be at most ${high} (got ${raw})` };
  }
  return { value };
}
