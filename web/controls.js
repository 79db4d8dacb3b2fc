// Parameter controls generated from a pipeline's JSON schema (pydantic): one widget per field,
// with its bounds, its description as a tooltip and its update class (hot / reset) as a badge.

const PRIMARY = ["mode", "prompt", "negative_prompt", "seed", "strength", "steps", "guidance_scale", "cfg_type",
  "delta", "filter_threshold", "filter_max_skip"];

function resolve(schema, prop) {
  // Optional fields come as anyOf [T, null]; nested models as $ref into $defs.
  let nullable = false;
  let spec = prop;
  if (prop.anyOf) {
    const options = prop.anyOf.filter((o) => o.type !== "null");
    nullable = options.length < prop.anyOf.length;
    spec = { ...options[0], ...prop, anyOf: undefined };
  }
  if (spec.$ref) spec = { ...schema.$defs[spec.$ref.split("/").pop()], ...spec };
  return { spec, nullable };
}

function widgetFor(name, spec, nullable) {
  const kind = spec.enum ? "enum" : spec.type;
  if (kind === "enum") {
    const select = document.createElement("select");
    for (const option of spec.enum) select.append(new Option(option, option));
    return { element: select, read: () => select.value, write: (v) => { select.value = v; } };
  }
  if (kind === "boolean") {
    const box = document.createElement("input");
    box.type = "checkbox";
    return { element: box, read: () => box.checked, write: (v) => { box.checked = Boolean(v); } };
  }
  if (kind === "integer" || kind === "number") {
    const min = spec.minimum ?? spec.exclusiveMinimum;
    const max = spec.maximum ?? spec.exclusiveMaximum;
    const number = document.createElement("input");
    number.type = "number";
    const step = kind === "integer" ? (spec.multipleOf ?? 1) : (min !== undefined && max !== undefined ? (max - min) / 100 : "any");
    Object.assign(number, { step, ...(min !== undefined && { min }), ...(max !== undefined && { max }) });
    if (nullable) number.placeholder = "auto";
    const row = document.createElement("span");
    row.className = "numeric";
    let range = null;
    if (min !== undefined && max !== undefined && max - min <= 10000) {
      range = document.createElement("input");
      Object.assign(range, { type: "range", min, max, step });
      range.addEventListener("input", () => { number.value = range.value; number.dispatchEvent(new Event("input")); });
      number.addEventListener("input", () => { if (number.value !== "") range.value = number.value; });
      row.append(range);
    }
    row.append(number);
    const parse = kind === "integer" ? parseInt : parseFloat;
    return {
      element: row, input: number,
      read: () => (number.value === "" ? (nullable ? null : undefined) : parse(number.value)),
      write: (v) => { number.value = v ?? ""; if (range && v !== null && v !== undefined) range.value = v; },
    };
  }
  if (kind === "string") {
    const long = (spec.maxLength ?? 0) > 200;
    const text = document.createElement(long ? "textarea" : "input");
    if (long) text.rows = 2;
    return { element: text, read: () => text.value, write: (v) => { text.value = v ?? ""; } };
  }
  // Lists and nested models (prompt or seed blending, t_index_list): edited as JSON.
  const text = document.createElement("input");
  text.className = "json";
  return {
    element: text,
    read: () => (text.value.trim() === "" ? null : JSON.parse(text.value)),
    write: (v) => { text.value = v === null || v === undefined ? "" : JSON.stringify(v); },
  };
}

export function buildControls(container, schema, defaults, onChange) {
  container.replaceChildren();
  const more = document.createElement("details");
  more.append(Object.assign(document.createElement("summary"), { textContent: "more parameters" }));
  const fields = {};
  const names = Object.keys(schema.properties ?? {});
  names.sort((a, b) => (PRIMARY.indexOf(a) + 1 || 99) - (PRIMARY.indexOf(b) + 1 || 99));
  for (const name of names) {
    const { spec, nullable } = resolve(schema, schema.properties[name]);
    const widget = widgetFor(name, spec, nullable);
    const label = document.createElement("label");
    label.className = "param";
    label.title = spec.description ?? "";
    const title = document.createElement("span");
    title.className = "name";
    title.textContent = name.replaceAll("_", " ");
    const badge = document.createElement("span");
    badge.className = `badge ${spec.update ?? "hot"}`;
    badge.textContent = spec.update ?? "hot";
    const status = document.createElement("span");
    status.className = "status";
    label.append(title, badge, widget.element, status);
    const input = widget.input ?? widget.element;
    input.name = name;
    input.id = `param-${name}`;
    const changed = () => {
      let value;
      try { value = widget.read(); } catch { return setStatus(name, "error", "not valid JSON"); }
      if (value !== undefined) onChange(name, value);
    };
    input.addEventListener(input.type === "checkbox" || input.tagName === "SELECT" ? "change" : "input", changed);
    widget.write(defaults[name]);
    fields[name] = { widget, label, status };
    (PRIMARY.includes(name) ? container : more).append(label);
  }
  if (more.children.length > 1) container.append(more);

  function setStatus(name, kind, message = "") {
    const field = fields[name];
    if (!field) return;
    field.label.dataset.state = kind;
    field.status.textContent = message;
  }
  return {
    setValues(params) {
      for (const [name, value] of Object.entries(params)) {
        const field = fields[name];
        if (field && document.activeElement?.name !== name) field.widget.write(value);
      }
    },
    setStatus,
  };
}
