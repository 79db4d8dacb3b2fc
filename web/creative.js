// Creative controls for stream-diffusion (docs/control.md): a ControlNet's preprocessor and scale,
// with its control image shown beside the input; the image prompt (a picture, or a frame of the
// input) and its weight; a slider per LoRA. What is offered is what the server loaded (the
// schema's `choices`). Changes go to the running session over REST (PATCH /v1/sessions/{id},
// PUT .../images/image_prompt), so they work the same over WebRTC and the WebSocket; choices made
// before Start are sent as soon as the session starts.

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
const PREPROCESSORS = ["off", "canny", "soft_edge", "input", "previous_output"];
const PREVIEW_MS = 300;       // how often the control image is fetched while a ControlNet is on
const IMAGE_SIDE = 320;       // image prompts are sent at most this big: the IP-Adapter sees 224 pixels anyway
const DEBOUNCE_MS = 200;

// For people and tests: what was sent, what the server said.
const creative = { applied: [], errors: [], previews: 0, session: null };

let offered = null;           // { controlnets: [...], loras: [...], imagePrompt: bool } of the stream-diffusion schema
let choice = { controlnets: {}, loras: {}, imageWeight: 0.6 };
let pendingImage = null;      // a picture (Blob) or "input" chosen before the session started
let timer = null;
let previewTimer = null;

function headers(extra = {}) {
  return token ? { Authorization: `Bearer ${token}`, ...extra } : extra;
}

async function request(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers) });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(body?.error?.message ?? `${path}: HTTP ${response.status}`);
  return body;
}

function element(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function slider(min, max, value, onInput) {
  const range = element("input", { type: "range", min, max, step: (max - min) / 100, value });
  const shown = element("output", { value: Number(value).toFixed(2) });
  range.addEventListener("input", () => {
    shown.value = Number(range.value).toFixed(2);
    onInput(Number(range.value));
  });
  return element("span", { className: "numeric" }, range, shown);
}

function say(text, bad = false) {
  const status = $("creative-status");
  status.textContent = text;
  status.classList.toggle("bad", bad);
}

function session() {
  const demo = window.latentcast;
  return demo && demo.status === "streaming" && demo.sessionId ? demo.sessionId : null;
}

// The parameters these controls stand for, in the pipeline's terms.
function params() {
  const controlnets = Object.entries(choice.controlnets)
    .filter(([, c]) => c.preprocessor !== "off")
    .map(([model, c]) => ({ model, preprocessor: c.preprocessor, scale: c.scale }));
  const loras = Object.fromEntries(Object.entries(choice.loras).filter(([, w]) => w !== 0));
  return { controlnets, loras, ...(offered.imagePrompt ? { image_prompt_weight: choice.imageWeight } : {}) };
}

function changed() {
  clearTimeout(timer);
  timer = setTimeout(send, DEBOUNCE_MS);
  showPreview();
}

async function send() {
  const id = session();
  if (!id) {
    say("applies once the stream runs");
    return;
  }
  const body = params();
  try {
    const report = await request(`v1/sessions/${id}`, { method: "PATCH", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ params: body }) });
    creative.applied.push(report);
    say(report.applied.length ? `applied: ${report.applied.join(", ")}` : "in force");
  } catch (err) {
    creative.errors.push(err.message);
    say(err.message, true);
  }
}

// An image prompt: a picture scaled down and uploaded, or "input" (the stream's next frame).
async function sendImage(picture) {
  const id = session();
  if (!id) {
    pendingImage = picture;
    say("the image prompt is sent once the stream runs");
    return;
  }
  pendingImage = null;
  try {
    const patch = (values) => request(`v1/sessions/${id}`, { method: "PATCH", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ params: values }) });
    // "input" takes one frame when it is set: clearing it first makes a second click take a new one.
    if (picture === "input") await patch({ image_prompt: null });
    const report = picture === "input"
      ? await patch({ image_prompt: "input", image_prompt_weight: choice.imageWeight })
      : await request(`v1/sessions/${id}/images/image_prompt`, { method: "PUT", headers: { "Content-Type": "image/jpeg" },
        body: await smaller(picture) });
    creative.applied.push(report);
    say(`image prompt ${report.params.image_prompt === "input" ? "waits for the next frame" : "in force"}`);
  } catch (err) {
    creative.errors.push(err.message);
    say(err.message, true);
  }
}

async function smaller(file) {
  const bitmap = await createImageBitmap(file);
  const scale = Math.min(1, IMAGE_SIDE / Math.max(bitmap.width, bitmap.height));
  const canvas = element("canvas", { width: Math.round(bitmap.width * scale), height: Math.round(bitmap.height * scale) });
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
}

// The first ControlNet's control image, beside the input, while one is on.
function showPreview() {
  const on = session() && Object.values(choice.controlnets).some((c) => c.preprocessor !== "off");
  $("control-figure").hidden = !on;
  clearTimeout(previewTimer);
  if (on) previewTimer = setTimeout(fetchPreview, PREVIEW_MS);
}

async function fetchPreview() {
  const id = session();
  if (!id) return showPreview();
  try {
    const response = await fetch(`v1/sessions/${id}/pictures/control-0`, { headers: headers() });
    if (response.ok) {
      const image = $("control-image");
      const old = image.src;
      image.src = URL.createObjectURL(await response.blob());
      if (old.startsWith("blob:")) URL.revokeObjectURL(old);
      creative.previews += 1;
    }
  } catch {
    // the session ended between two fetches: the next look at it hides the figure
  }
  showPreview();
}

function build(schema) {
  const box = $("creative");
  const heading = element("h3", { textContent: "creative controls" });
  const parts = [heading];
  for (const name of offered.controlnets) {
    choice.controlnets[name] = { preprocessor: "off", scale: 1 };
    const select = element("select", { id: `controlnet-${name}` }, ...PREPROCESSORS.map((p) => new Option(p, p)));
    select.addEventListener("change", () => { choice.controlnets[name].preprocessor = select.value; changed(); });
    parts.push(element("label", { title: schema.controlnets.description }, `ControlNet ${name} `, select,
      slider(0, 2, 1, (v) => { choice.controlnets[name].scale = v; changed(); })));
  }
  if (offered.imagePrompt) {
    const file = element("input", { type: "file", accept: "image/png,image/jpeg,image/webp", id: "image-prompt-file" });
    file.addEventListener("change", () => file.files[0] && sendImage(file.files[0]));
    const fromInput = element("button", { type: "button", id: "image-prompt-input", textContent: "use the input frame" });
    fromInput.addEventListener("click", () => sendImage("input"));
    parts.push(element("label", { title: schema.image_prompt.description }, "image prompt ", file, fromInput),
      element("label", {}, "image prompt weight ", slider(0, 2, choice.imageWeight, (v) => { choice.imageWeight = v; changed(); })));
  }
  for (const name of offered.loras) {
    choice.loras[name] = 0;
    parts.push(element("label", { title: schema.loras.description, className: "lora" }, `LoRA ${name} `,
      slider(-1, 1.5, 0, (v) => { choice.loras[name] = v; changed(); })));
  }
  parts.push(element("p", { id: "creative-status", className: "hint" }));
  box.replaceChildren(...parts);

  // The control image goes beside the input picture.
  const figure = element("figure", { id: "control-figure", hidden: true },
    element("img", { id: "control-image", alt: "control image", style: "width: 100%; image-rendering: pixelated" }), element("figcaption", { textContent: "control image" }));
  const input = $("input")?.closest("figure");
  if (input) input.after(figure);
  else box.append(figure);
}

function showFor(pipeline) {
  $("creative").hidden = pipeline !== offered?.pipeline;
}

// A new session gets what was chosen before it started.
function watchSession() {
  const id = session();
  if (id !== creative.session) {
    creative.session = id;
    if (id) {
      const p = params();
      if (p.controlnets.length || Object.keys(p.loras).length) send();
      if (pendingImage) sendImage(pendingImage);
    }
    showPreview();
  }
}

async function init() {
  let list = null;
  while (!list) {
    list = await request("v1/pipelines").catch(() => null);
    if (!list) await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  const pipeline = list.pipelines.find((p) => p.params_schema?.properties?.controlnets);
  if (!pipeline) return;
  const schema = pipeline.params_schema.properties;
  offered = { pipeline: pipeline.name, controlnets: schema.controlnets.choices ?? [], loras: schema.loras.choices ?? [],
    imagePrompt: Boolean(schema.image_prompt.available) };
  if (!offered.controlnets.length && !offered.loras.length && !offered.imagePrompt) return;
  build(schema);
  const select = $("pipeline");
  showFor(select?.value || list.default);
  select?.addEventListener("change", () => showFor(select.value));
  setInterval(watchSession, 250);
  if (window.latentcast) window.latentcast.creative = creative;
}

init();
