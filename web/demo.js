// latentcast browser demo: camera or screen -> WebRTC (or, as a fallback, the WebSocket API) ->
// generated video beside it. `?transport=websocket` picks the socket from the start. With an
// audio-to-audio pipeline the page is a talk client instead: microphone -> WebRTC -> the spoken
// answer plays back, and the conversation is listed turn by turn.
import { buildControls } from "./controls.js";
import { FLAG_REUSED, FORMAT, KIND, MIME, PROTOCOL_VERSION, packMedia, unpackMedia } from "./protocol.js";
import { openWebRtc } from "./webrtc.js";

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
const MAX_BUFFERED = 1 << 20; // bytes queued in the socket before capture skips a frame
const MAX_SIDE = 640;         // captured frames are scaled down to this when the pipeline has no size
const HAS_WEBRTC = "RTCPeerConnection" in window;
const LISTENING = "listening: ask something, then pause";
const TALK_NEEDS_WEBRTC = "talking needs WebRTC, which this browser does not have (this page sends no audio over the WebSocket)";

// Everything a person or a test wants to know about the stream, in one place.
const demo = (window.latentcast = {
  status: "idle", transport: null, peer: null, sessionId: null, framesSent: 0, framesReceived: 0, reused: 0,
  acks: [], errors: [], lastAck: null, stats: null, latencyMs: [], quality: [],
  turns: [],                 // finished spoken turns of the session, as the server records them (docs/speech.md)
});

let pipelines = [];
let controls = null;
let link = null;           // the open transport: { kind, send(message), close() } (+ socket for the WebSocket)
let source = null;
let captureTimer = null;
let talk = false;          // the selected pipeline is audio-to-audio
let videoChoice = null;    // source and transport picked for video pipelines, restored after talking
let params = {};           // parameters in force, as the server last told them (started, ack, quality, stats)
let needsInput = true;     // the stream advances on input frames (false: it generates on its own clock)
let changed = {};          // edited before start: sent with `start`
let nextFrameId = 0;
let frontDoor = false;     // the page comes from a cluster's front door (docs/cluster.md): sessions are placed on a worker
let nextRequest = 0;
const pendingUpdates = new Map(); // request id -> field name
const outputTimes = [];

async function api(path, options = {}) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(path, { ...options, headers: { ...headers, ...options.headers } });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(body?.error?.message ?? `${path}: HTTP ${response.status}`);
  return body;
}

function setStatus(status, detail = "") {
  demo.status = status;
  $("status").textContent = detail ? `${status}: ${detail}` : status;
  $("status").dataset.state = status;
  const live = status === "connecting" || status === "streaming";
  $("start").disabled = live || status === "unsupported";
  $("stop").disabled = !live;
  // What the stream is made of stays as it started: a talk session must not turn into a video page.
  for (const id of ["source", "transport", "microphone", "pipeline"]) $(id).disabled = live;
  $("talk-state").textContent = status === "streaming" ? LISTENING : "press Start, allow the microphone, then ask something";
}

function logError(message) {
  demo.errors.push(message);
  const line = document.createElement("li");
  line.textContent = message;
  $("log").prepend(line);
  while ($("log").children.length > 6) $("log").lastChild.remove();
}

function showPipeline(name) {
  const pipeline = pipelines.find((p) => p.name === name);
  params = { ...pipeline.defaults };
  changed = {};
  controls = buildControls($("params"), pipeline.params_schema, pipeline.defaults, onParamChange);
  showKind(pipeline.kind === "audio-to-audio");
}

// An audio pipeline is talked to: the microphone is the source, over WebRTC (the page sends no
// audio over the WebSocket), and the conversation takes the place of the video figures and rates.
function showKind(audio) {
  const source = $("source");
  const transport = $("transport");
  if (audio && !talk) videoChoice = { source: source.value, transport: transport.value };
  talk = audio;
  for (const option of source.options) {
    option.disabled = (option.value === "microphone") !== audio || (option.value === "screen" && !navigator.mediaDevices?.getDisplayMedia);
  }
  transport.querySelector("[value=websocket]").disabled = audio;
  if (audio) {
    source.value = "microphone";
    transport.value = "webrtc";
  } else if (videoChoice) {
    source.value = videoChoice.source;
    transport.value = videoChoice.transport;
  }
  for (const element of document.querySelectorAll(".video-only")) element.hidden = audio;
  for (const element of document.querySelectorAll(".talk-only")) element.hidden = !audio;
  if (audio && !HAS_WEBRTC) setStatus("unsupported", TALK_NEEDS_WEBRTC);
  else if (demo.status === "unsupported") setStatus("idle");
}

// Last value wins: a field edited again before its update went out replaces the earlier value.
const debounced = new Map();
function onParamChange(name, value) {
  if (!link || demo.status !== "streaming") {
    changed[name] = value;
    return;
  }
  clearTimeout(debounced.get(name));
  debounced.set(name, setTimeout(() => sendUpdate({ [name]: value }), 200));
}

function sendUpdate(changes) {
  const requestId = `u${++nextRequest}`;
  for (const name of Object.keys(changes)) {
    pendingUpdates.set(requestId, name);
    controls.setStatus(name, "pending", "…");
  }
  link.send({ type: "update", request_id: requestId, params: changes });
}

async function openSource(kind, audio) {
  if (kind === "none") return null;
  // The answer plays aloud: the browser's echo canceller keeps it from coming back as the user's
  // voice (which would interrupt it), and noise suppression keeps the room from starting turns.
  if (kind === "microphone") return navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true } });
  const media = kind === "screen" ? navigator.mediaDevices.getDisplayMedia({ video: true, audio })
    : navigator.mediaDevices.getUserMedia({ video: true, audio });
  const stream = await media;
  $("input").srcObject = stream;
  await $("input").play();
  return stream;
}

function startMessage(output) {
  // An audio pipeline keeps its own SLO (stepped every 20 ms): the rate and budget fields are for video.
  const slo = talk ? {} : { slo: { target_fps: Number($("fps").value), latency_budget_ms: Number($("budget").value) } };
  return {
    type: "start", version: PROTOCOL_VERSION, request_id: "start", pipeline: $("pipeline").value, params: changed, ...slo, ...output,
  };
}

async function start() {
  setStatus("connecting");
  demo.framesSent = demo.framesReceived = 0;
  demo.turns = [];
  $("turns").replaceChildren();
  const webrtc = $("transport").value === "webrtc" && HAS_WEBRTC;
  try {
    source = await openSource($("source").value, webrtc && $("microphone").checked);
  } catch (err) {
    setStatus("error", `capture failed: ${err.message}`);
    return;
  }
  // Behind a front door, WebRTC needs the worker before the offer: the session is made over REST (placed there),
  // the offer goes to that worker, and `start` attaches to the session. The WebSocket follows a `redirect` instead.
  let placed = null;
  if (webrtc && frontDoor) {
    try {
      placed = await placeSession();
    } catch (err) {
      stopCapture();
      setStatus("error", err.message);
      return;
    }
  }
  if (webrtc) {
    try {
      link = await openWebRtc({ source, receiveVideo: !talk, token, base: placed?.urls.base, onControl, onOutput: showOutputStream,
        onClosed: onLinkClosed });
      demo.peer = link.pc; // getStats() for people and tests
      showTransport("webrtc");
      link.send(placed ? attachMessage(placed) : startMessage({}));
      return;
    } catch (err) {
      if (talk) {
        stopCapture();
        setStatus("error", `WebRTC did not connect (${err.message}); talking needs it`);
        return;
      }
      logError(`WebRTC did not connect (${err.message}); using the WebSocket`);
    }
  }
  showTransport("websocket");
  const output = { output: { format: "jpeg", quality: 80 } };
  link = placed ? openWebSocket(new URL(placed.urls.stream), { ...attachMessage(placed), ...output }) : openWebSocket(streamUrl(), startMessage(output));
}

function streamUrl() {
  const url = new URL("v1/stream", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  return url;
}

// A session made at the front door over REST, on the worker it was placed on (`urls` say where).
function placeSession() {
  const slo = talk ? {} : { slo: { target_fps: Number($("fps").value), latency_budget_ms: Number($("budget").value) } };
  return api("v1/sessions", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ pipeline: $("pipeline").value, params: changed, ...slo }) });
}

function attachMessage(placed) {
  return { type: "start", version: PROTOCOL_VERSION, request_id: "start", session_id: placed.id };
}

function openWebSocket(url, start) {
  if (token) url.searchParams.set("token", token);
  const socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  socket.onopen = () => socket.send(JSON.stringify(start));
  socket.onmessage = (event) => {
    if (typeof event.data !== "string") return onMedia(event.data);
    const message = JSON.parse(event.data);
    if (message.type !== "redirect") return onControl(message);
    // A front door placed the session: the same start, at the worker it names (this socket closes).
    socket.onclose = null;
    link = openWebSocket(new URL(message.url), start);
  };
  socket.onclose = (event) => {
    onLinkClosed(event.reason || (event.code === 1008 || event.code === 1006 ? "connection refused or lost" : ""));
  };
  return {
    kind: "websocket", socket,
    send: (message) => socket.readyState === WebSocket.OPEN && socket.send(JSON.stringify(message)),
    close: () => socket.close(),
  };
}

function onLinkClosed(reason = "") {
  stopCapture();
  if (demo.status !== "error" && demo.status !== "stopped") setStatus("stopped", reason);
  link = null;
}

// WebRTC shows the generated stream in a <video>; the socket draws pictures on the canvas.
function showTransport(kind) {
  demo.transport = kind;
  $("output-video").hidden = kind !== "webrtc";
  $("output").hidden = kind === "webrtc";
}

function showOutputStream(stream) {
  const player = talk ? $("answer") : $("output-video");
  if (player.srcObject !== stream) player.srcObject = stream;
  player.play().catch(() => {});
}

function countOutputFrame() {
  if (demo.transport === "webrtc") {
    const now = performance.now();
    outputTimes.push(now);
    while (outputTimes.length && now - outputTimes[0] > 2000) outputTimes.shift();
    demo.framesReceived += 1;
  }
  $("output-video").requestVideoFrameCallback(countOutputFrame);
}

function onControl(message) {
  switch (message.type) {
    case "started":
      demo.sessionId = message.session_id;
      showParams(message.params, message.needs_input);
      setStatus("streaming", `session ${message.session_id} on ${message.pipeline} over ${demo.transport === "webrtc" ? "WebRTC" : "the WebSocket"}`);
      if (source && message.needs_input && link?.kind === "websocket") startCapture();
      break;
    case "ack": {
      demo.acks.push(message);
      demo.lastAck = message;
      showParams(message.params, message.needs_input);
      const name = pendingUpdates.get(message.request_id);
      pendingUpdates.delete(message.request_id);
      if (name) controls.setStatus(name, "ok", message.update_class === "reset" ? "✓ reset" : "✓");
      break;
    }
    case "error": {
      const name = pendingUpdates.get(message.request_id);
      pendingUpdates.delete(message.request_id);
      if (name) controls.setStatus(name, "error", message.message);
      logError(`${message.code}: ${message.message}`);
      if (message.request_id === "start") setStatus("error", message.message);
      break;
    }
    case "quality": // the server stepped quality down or up: `params` are the values that changed
      demo.quality.push(message);
      showParams({ ...params, ...message.params }, needsInput);
      break;
    case "stats":
      demo.stats = message;
      if (message.params) showParams(message.params, needsInput);
      showStats();
      if (message.speech) showConversation(message.speech);
      break;
    case "stopped":
      if (message.stats?.speech) showConversation(message.stats.speech);
      setStatus("stopped", message.reason);
      if (link?.kind === "webrtc") link.close(); // the socket is closed by the server
      break;
  }
}

async function onMedia(buffer) {
  const { header, payload } = unpackMedia(buffer);
  if (header.kind !== KIND.video || !MIME[header.format]) return;
  const now = performance.now();
  if (header.pts !== null && header.pts * 1000 <= now) {
    demo.latencyMs.push(now - header.pts * 1000); // pts is this page's clock when the input was captured
    if (demo.latencyMs.length > 120) demo.latencyMs.shift();
  }
  outputTimes.push(now);
  while (outputTimes.length && now - outputTimes[0] > 2000) outputTimes.shift();
  demo.framesReceived += 1;
  if (header.flags & FLAG_REUSED) demo.reused += 1;
  const bitmap = await createImageBitmap(new Blob([payload], { type: MIME[header.format] }));
  const canvas = $("output");
  if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) Object.assign(canvas, { width: bitmap.width, height: bitmap.height });
  canvas.getContext("2d").drawImage(bitmap, 0, 0);
  bitmap.close();
}

// The controls always show what is in force, whoever changed it (this page, another client over
// REST, or the server stepping quality down under load).
function showParams(inForce, needs) {
  params = inForce;
  if (needs !== undefined) needsInput = needs;
  controls.setValues(params);
}

function captureSize(video) {
  if (params.width && params.height) return [params.width, params.height];
  const scale = Math.min(1, MAX_SIDE / Math.max(video.videoWidth, video.videoHeight));
  return [Math.round(video.videoWidth * scale), Math.round(video.videoHeight * scale)];
}

function startCapture() {
  const video = $("input");
  const canvas = document.createElement("canvas");
  const context = canvas.getContext("2d");
  const capture = () => {
    captureTimer = setTimeout(capture, 1000 / Number($("fps").value));
    const socket = link?.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN || socket.bufferedAmount > MAX_BUFFERED) return;
    if (!needsInput || !video.videoWidth) return;
    const [width, height] = captureSize(video);
    canvas.width = width;
    canvas.height = height;
    // Centre crop to the target's aspect ratio, as the pipeline would.
    const scale = Math.max(width / video.videoWidth, height / video.videoHeight);
    const sw = width / scale, sh = height / scale;
    context.drawImage(video, (video.videoWidth - sw) / 2, (video.videoHeight - sh) / 2, sw, sh, 0, 0, width, height);
    const pts = performance.now() / 1000;
    const frameId = nextFrameId++;
    canvas.toBlob(async (blob) => {
      const payload = blob && (await blob.arrayBuffer());
      // Checked after the encoding and the read: the socket may have closed (Stop) meanwhile.
      if (!payload || socket.readyState !== WebSocket.OPEN) return;
      const header = { kind: KIND.video, format: FORMAT.jpeg, frameId, pts, width, height };
      socket.send(packMedia(header, payload));
      demo.framesSent += 1;
    }, "image/jpeg", 0.85);
  };
  capture();
}

function stopCapture() {
  clearTimeout(captureTimer);
  captureTimer = null;
  for (const track of source?.getTracks() ?? []) track.stop();
  source = null;
}

function stop() {
  link?.send({ type: "stop", request_id: "stop" });
  stopCapture();
}

function percentile(values, q) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

const fmt = (v, digits = 0) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));

function showStats() {
  const s = demo.stats ?? {};
  showConsistency(s.consistency);
  const fpsOut = outputTimes.length > 1 ? (outputTimes.length - 1) / ((outputTimes.at(-1) - outputTimes[0]) / 1000) : 0;
  const latency = percentile(demo.latencyMs, 0.5);
  $("stats").textContent = [
    `out ${fmt(fpsOut, 1)} fps · in ${fmt(s.fps_in, 1)} fps`,
    `latency ${fmt(latency)} ms (server p50 ${fmt(s.latency_ms?.p50)} / p95 ${fmt(s.latency_ms?.p95)} ms, model ${fmt(s.model_ms?.p50)} ms)`,
    `dropped ${s.dropped_input ?? 0} in / ${s.dropped_output ?? 0} out · skipped ${s.skipped ?? 0} · deadline misses ${s.deadline_misses ?? 0}`,
    ...(s.quality_level ? [`quality stepped down ${s.quality_level} level(s) under load`] : []),
  ].join("\n");
}

// Temporal consistency (stats.consistency, one frame pair in `every`): warp error and flicker
// beside the input's (what the input itself scores), drift once the stream has run a few seconds.
// A value well above the input's, or a ratio far from 1, is what flicker or drift looks like.
function showConsistency(c) {
  const box = $("consistency");
  box.hidden = !c || !c.samples;
  if (box.hidden) return;
  const pair = (value, input, digits) => `${fmt(value, digits)}${input === null || input === undefined ? "" : ` (in ${fmt(input, digits)})`}`;
  const lines = [`consistency · 1 pair in ${c.every} · ${c.samples} measured`];
  if (c.warp_error !== null) lines.push(`warp error ${pair(c.warp_error * 1000, c.warp_error_input === null ? null : c.warp_error_input * 1000, 2)} ‰`);
  lines.push(`flicker ${pair(c.flicker * 100, c.flicker_input === null ? null : c.flicker_input * 100, 2)} %`);
  const d = c.drift;
  lines.push(d ? `drift: sharpness ×${fmt(d.sharpness_ratio, 2)} · contrast ×${fmt(d.contrast_ratio, 2)} · colour Δ${fmt(d.color_shift, 3)}`
    : "drift: after the first seconds");
  box.textContent = lines.join("\n");
  const drifting = d && (Math.abs(Math.log(d.sharpness_ratio ?? 1)) > Math.log(1.5) || d.color_shift > 0.1);
  box.classList.toggle("bad", Boolean(drifting));
}

// Stats carry only a stream's last few finished turns: the page keeps the whole conversation.
function showConversation(speech) {
  for (const record of speech.last_turns ?? []) {
    if (demo.turns.some((t) => t.turn === record.turn)) continue; // a finished turn does not change
    demo.turns.push(record);
    $("turns").append(turnItem(record));
  }
  const asked = speech.answering?.final_transcript || speech.answering?.fast_transcript;
  if (demo.status === "streaming") $("talk-state").textContent = speech.answering ? `answering${asked ? ` “${asked}”` : ""}…` : LISTENING;
  const audio = demo.stats?.audio ?? {};
  $("speech-stats").textContent = [
    `turns ${speech.turns} · drafts kept ${speech.keep_rate === null ? "–" : fmt(speech.keep_rate * 100)} % · interrupted ${speech.interrupted}`,
    `speech end → first audio p50 ${fmt(speech.speech_end_to_first_audio_ms?.p50)} / p90 ${fmt(speech.speech_end_to_first_audio_ms?.p90)} ms`,
    `audio ${audio.chunks_in ?? 0} chunks in / ${audio.chunks_out ?? 0} out`,
  ].join("\n");
}

function turnItem(turn) {
  const line = (className, who, text) => {
    const p = Object.assign(document.createElement("p"), { className });
    p.append(Object.assign(document.createElement("b"), { textContent: who }), " ", text);
    return p;
  };
  const draft = turn.kept === true ? `draft kept: “${turn.prefix}”`
    : turn.kept === false ? `draft discarded: “${turn.draft}”`
      : turn.mode === "cascaded" ? "no draft (cascaded)" : "no draft";
  const latency = turn.speech_end_to_first_audio === null ? "no answer audio"
    : `${fmt(turn.speech_end_to_first_audio, 2)} s from the end of speech to the first audio`;
  const meta = [draft, latency, ...(turn.interrupted ? ["interrupted"] : []), ...(turn.error ? [`error: ${turn.error}`] : [])];
  const item = Object.assign(document.createElement("li"), { className: "turn" });
  item.append(line("you", "you", turn.final_transcript || turn.fast_transcript || "…"),
    line("bot", "latentcast", turn.heard || "(no answer)"),
    Object.assign(document.createElement("p"), { className: "meta", textContent: meta.join(" · ") }));
  return item;
}

async function init() {
  setStatus("loading");
  const health = await fetch("health", { headers: token ? { Authorization: `Bearer ${token}` } : {} }).then((r) => r.json()).catch(() => null);
  frontDoor = health?.role === "front-door";
  if (health?.status !== "ready") {
    setStatus("loading", health?.status === "failed" ? health.error : "models are loading…");
    setTimeout(init, 1000);
    return;
  }
  const list = await api("v1/pipelines");
  pipelines = list.pipelines;
  $("pipeline").replaceChildren(...pipelines.map((p) => new Option(`${p.name} (${p.kind})`, p.name)));
  $("pipeline").value = list.default;
  $("pipeline").addEventListener("change", () => showPipeline($("pipeline").value));
  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", stop);
  const transport = new URLSearchParams(location.search).get("transport");
  if (transport === "websocket" || !HAS_WEBRTC) $("transport").value = "websocket";
  $("output-video").requestVideoFrameCallback(countOutputFrame);
  setInterval(showStats, 500);
  setStatus("idle");
  showPipeline(list.default); // after "idle": a talk pipeline in a browser without WebRTC says so
}

init();
