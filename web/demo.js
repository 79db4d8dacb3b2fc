// latentcast browser demo: camera or screen -> WebRTC (or, as a fallback, the WebSocket API) ->
// generated video beside it. `?transport=websocket` picks the socket from the start. With an
// audio-to-audio pipeline the page is a talk client instead: microphone -> WebRTC -> the spoken
// answer plays back, and the conversation is listed turn by turn. Around the video: a style picker
// (thumbnails rendered by the model itself), the model's notes on the prompt, a note when this machine
// cannot make the frame rate asked, the last frames kept after Stop, snapshot, recording and full screen.
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
const FPS_WINDOW_MS = 2000;   // output rate over the last two seconds...
const FPS_SLOW_SPAN_MS = 10000; // ...or over the last two frames when slower, up to ten seconds apart
const SPEED_GRACE_S = 3;      // the pipe fills and the first frames are slow: judge the rate after this
const SPEED_SHORTFALL = 0.8;  // below this share of the rate asked (or of the input's, if lower), say so
const CAPTURE_HINTS = {
  NotAllowedError: "The browser blocked the camera for this page. Allow it (the camera icon in the address bar, or the "
    + "site's settings), then press Start again; or pick the source “screen” or “none (txt2img)”.",
  NotFoundError: "No camera was found. Plug one in and press Start again, or pick the source “screen” or “none (txt2img)”.",
  NotReadableError: "The camera is in use by another application. Close it there and press Start again.",
};

// Everything a person or a test wants to know about the stream, in one place.
const demo = (window.latentcast = {
  status: "idle", transport: null, peer: null, sessionId: null, framesSent: 0, framesReceived: 0, reused: 0,
  acks: [], errors: [], lastAck: null, stats: null, latencyMs: [], quality: [],
  turns: [],                 // finished spoken turns of the session, as the server records them (docs/speech.md)
  notes: [],                 // the model's notes on the parameters in force (a prompt outside its vocabulary ...)
  sloEstimate: null,         // what the scheduler forecast for this stream at admission (fps, latency, meets_slo)
  speedNote: null,           // shown when this machine cannot make the frame rate asked
  fpsOut: null, snapshots: 0, recording: null, recordings: [], captureHint: null,
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
const frameInfo = new Map(); // WebRTC: RTP pts of a generated frame -> its input's pts (the server's `frame` messages)
let firstRtpTimestamp = null;
let recorder = null;

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
  $("snapshot").disabled = !demo.framesReceived && status !== "streaming";
  if (!recorder) $("record").disabled = status !== "streaming";
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
  showStyles(pipeline.styles ?? []);
  showNotes([]);
  showKind(pipeline.kind === "audio-to-audio");
}

// The styles a model knows, each as its thumbnail (the model's own output on one sample picture):
// a click makes it the prompt, at once while streaming.
function showStyles(styles) {
  $("styles").hidden = !styles.length;
  $("style-list").replaceChildren(...styles.map(({ prompt, thumbnail }) => {
    const button = Object.assign(document.createElement("button"), { type: "button", className: "style", title: prompt });
    button.dataset.prompt = prompt;
    const image = Object.assign(document.createElement("img"), { src: withToken(thumbnail), alt: prompt, width: 64, height: 64 });
    button.append(image, Object.assign(document.createElement("span"), { textContent: prompt }));
    button.addEventListener("click", () => pickStyle(prompt));
    return button;
  }));
  markStyle(params.prompt);
}

function pickStyle(prompt) {
  controls.setValues({ prompt });
  onParamChange("prompt", prompt);
  markStyle(prompt);
}

function markStyle(prompt) {
  for (const button of $("style-list").children) button.classList.toggle("chosen", button.dataset.prompt === prompt);
}

function withToken(path) {
  if (!token) return path;
  const url = new URL(path, location.href);
  url.searchParams.set("token", token);
  return url.href;
}

// What the model will not do with these parameters, in its own words (started / ack / session info).
function showNotes(notes) {
  demo.notes = notes ?? [];
  $("notes").replaceChildren(...demo.notes.map((note) => Object.assign(document.createElement("li"), { textContent: note })));
  $("notes").hidden = !demo.notes.length;
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
  if (name === "prompt") markStyle(value);
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

function showCaptureHint(hint) {
  demo.captureHint = hint;
  $("capture-hint").textContent = hint ?? "";
  $("capture-hint").hidden = !hint;
}

async function start() {
  setStatus("connecting");
  demo.framesSent = demo.framesReceived = 0;
  demo.latencyMs = [];
  demo.sloEstimate = demo.speedNote = null;
  outputTimes.length = 0;
  frameInfo.clear();
  firstRtpTimestamp = null;
  demo.turns = [];
  $("turns").replaceChildren();
  const webrtc = $("transport").value === "webrtc" && HAS_WEBRTC;
  showCaptureHint(null);
  showLive();
  try {
    source = await openSource($("source").value, webrtc && $("microphone").checked);
  } catch (err) {
    setStatus("error", `capture failed: ${err.message}`);
    showCaptureHint(CAPTURE_HINTS[err.name] ?? null);
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
  keepLastOutput();
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

// Each generated frame shown over WebRTC: counted, and matched by its RTP timestamp to the server's
// `frame` message, whose input pts (on the input clock, which starts when media starts to flow) gives
// capture-to-display latency.
function countOutputFrame(now, metadata) {
  if (demo.transport === "webrtc" && link?.kind === "webrtc") {
    countOutput(now);
    if (metadata?.rtpTimestamp !== undefined) {
      firstRtpTimestamp ??= metadata.rtpTimestamp;
      const inputPts = frameInfo.get((metadata.rtpTimestamp - firstRtpTimestamp) >>> 0);
      const clockStart = link.inputClockStart?.();
      if (inputPts !== undefined && clockStart !== null) addLatency(now - (clockStart + inputPts * 1000));
    }
  }
  $("output-video").requestVideoFrameCallback(countOutputFrame);
}

function countOutput(now) {
  outputTimes.push(now);
  while (outputTimes.length > 2 && now - outputTimes[0] > FPS_WINDOW_MS) outputTimes.shift();
  while (outputTimes.length && now - outputTimes[0] > FPS_SLOW_SPAN_MS) outputTimes.shift();
  demo.framesReceived += 1;
}

function addLatency(ms) {
  if (ms < 0) return;
  demo.latencyMs.push(ms);
  if (demo.latencyMs.length > 120) demo.latencyMs.shift();
}

// Frames per second from the frames of the last two seconds, or from the last two frames when they are
// further apart (a slow machine: 0.4 fps is 0.4, not 0), decaying once frames stop coming.
function outputFps(now = performance.now()) {
  if (outputTimes.length < 2) return outputTimes.length ? 0 : null;
  const span = Math.max(outputTimes.at(-1) - outputTimes[0], now - outputTimes.at(-1));
  return (outputTimes.length - 1) / (span / 1000);
}

function onControl(message) {
  switch (message.type) {
    case "started":
      demo.sessionId = message.session_id;
      demo.sloEstimate = message.slo_estimate ?? null;
      showNotes(message.notes);
      showParams(message.params, message.needs_input);
      setStatus("streaming", `session ${message.session_id} on ${message.pipeline} over ${demo.transport === "webrtc" ? "WebRTC" : "the WebSocket"}`);
      if (source && message.needs_input && link?.kind === "websocket") startCapture();
      break;
    case "ack": {
      demo.acks.push(message);
      demo.lastAck = message;
      showNotes(message.notes);
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
    case "frame": // WebRTC, frame_info: a generated frame's RTP pts (from the first one sent) and its input's pts
      frameInfo.set(message.rtp_pts, message.pts);
      if (frameInfo.size > 600) frameInfo.delete(frameInfo.keys().next().value);
      break;
    case "stopped":
      if (message.stats?.speech) showConversation(message.stats.speech);
      keepLastOutput();
      setStatus("stopped", message.reason);
      if (link?.kind === "webrtc") link.close(); // the socket is closed by the server
      break;
  }
}

async function onMedia(buffer) {
  const { header, payload } = unpackMedia(buffer);
  if (header.kind !== KIND.video || !MIME[header.format]) return;
  const now = performance.now();
  if (header.pts !== null && header.pts * 1000 <= now) addLatency(now - header.pts * 1000); // pts: this page's clock at capture
  countOutput(now);
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
  markStyle(params.prompt);
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
  keepStill($("input"), $("input-still"));
  for (const track of source?.getTracks() ?? []) track.stop();
  source = null;
}

function stop() {
  keepLastOutput();
  link?.send({ type: "stop", request_id: "stop" });
  stopCapture();
}

// After Stop the last frames stay on screen: a video whose tracks end goes black, so its last
// picture is drawn on a canvas shown in its place (the socket's output is a canvas already).
function keepStill(video, canvas) {
  if (!video.videoWidth || video.hidden) return false;
  Object.assign(canvas, { width: video.videoWidth, height: video.videoHeight });
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.hidden = false;
  video.hidden = true;
  return true;
}

function keepLastOutput() {
  if (demo.transport === "webrtc") keepStill($("output-video"), $("output"));
}

// A new stream shows live video again.
function showLive() {
  $("input").hidden = false;
  $("input-still").hidden = true;
}

function snapshot() {
  const canvas = outputPicture();
  if (!canvas) return;
  canvas.toBlob((blob) => {
    demo.snapshots += 1;
    download(blob, `latentcast-${demo.sessionId ?? "output"}-${demo.snapshots}.png`);
  }, "image/png");
}

// The generated picture now: from the WebRTC video while it plays, else the canvas (the socket's
// output, or the frame kept after Stop).
function outputPicture() {
  const video = $("output-video");
  if (!video.hidden && video.videoWidth) {
    const canvas = Object.assign(document.createElement("canvas"), { width: video.videoWidth, height: video.videoHeight });
    canvas.getContext("2d").drawImage(video, 0, 0);
    return canvas;
  }
  return demo.framesReceived ? $("output") : null;
}

function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = Object.assign(document.createElement("a"), { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// Records what the page shows as the output: the WebRTC stream (its audio too, when the server sends
// audio back), or the socket's canvas. Stop (or the stream ending) saves a WebM file.
function toggleRecording() {
  if (recorder) {
    recorder.stop();
    return;
  }
  const live = $("output-video").srcObject;
  const stream = demo.transport === "webrtc" && live ? new MediaStream(live.getTracks().filter((t) => t.readyState === "live"))
    : $("output").captureStream(30);
  const kinds = stream.getTracks().map((t) => t.kind);
  const mimeType = ["video/webm;codecs=vp8,opus", "video/webm;codecs=vp8", "video/webm"]
    .find((type) => MediaRecorder.isTypeSupported(type) && (kinds.includes("audio") || !type.includes("opus")));
  const chunks = [];
  recorder = new MediaRecorder(stream, { mimeType });
  demo.recording = { state: "recording", tracks: kinds, mimeType, bytes: 0 };
  recorder.ondataavailable = (event) => {
    if (event.data.size) chunks.push(event.data);
  };
  recorder.onstop = () => {
    const blob = new Blob(chunks, { type: "video/webm" });
    demo.recording = { ...demo.recording, state: "saved", bytes: blob.size };
    demo.recordings.push(demo.recording);
    download(blob, `latentcast-${demo.sessionId ?? "output"}-${demo.recordings.length}.webm`);
    recorder = null;
    showRecording();
  };
  recorder.start(1000);
  showRecording();
}

function showRecording() {
  $("record").textContent = recorder ? "Stop recording" : "Record";
  $("record").classList.toggle("recording", Boolean(recorder));
  $("record").disabled = !recorder && demo.status !== "streaming";
}

function toggleFullscreen() {
  if (document.fullscreenElement) document.exitFullscreen();
  else $("output-figure").requestFullscreen().catch((err) => logError(`full screen refused: ${err.message}`));
}

function percentile(values, q) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

const fmt = (v, digits = 0) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const fmtFps = (v) => fmt(v, v !== null && v !== undefined && v < 1 && v > 0 ? 2 : 1); // 0.4 fps is not 0.0

// Said once the stream has run a few seconds: the machine makes fewer frames than asked (or than the
// input brings, if that is fewer), with the scheduler's forecast from admission and what to change.
function showSpeedNote(fpsOut, s) {
  const target = Number($("fps").value);
  const expected = needsInput && s.fps_in ? Math.min(target, s.fps_in) : target;
  const slow = demo.status === "streaming" && !talk && fpsOut !== null && (s.uptime_s ?? 0) >= SPEED_GRACE_S
    && fpsOut < SPEED_SHORTFALL * expected;
  const forecast = demo.sloEstimate?.fps;
  const asked = expected < target ? `${fmtFps(expected)} fps the input brings` : `${fmtFps(target)} fps asked`;
  demo.speedNote = slow ? `This machine makes about ${fmtFps(fpsOut)} fps here, below the ${asked}`
    + `${forecast ? ` (the scheduler forecast ${fmtFps(forecast)} fps)` : ""}: lower the size or the steps, or ask for fewer fps.` : null;
  $("speed-note").textContent = demo.speedNote ?? "";
  $("speed-note").hidden = !demo.speedNote;
}

function showStats() {
  const s = demo.stats ?? {};
  showConsistency(s.consistency);
  const fpsOut = outputFps();
  demo.fpsOut = fpsOut;
  const latency = percentile(demo.latencyMs, 0.5);
  showSpeedNote(fpsOut, s);
  $("stats").textContent = [
    `out ${fmtFps(fpsOut)} fps · in ${fmtFps(s.fps_in)} fps`,
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
  $("snapshot").addEventListener("click", snapshot);
  $("record").addEventListener("click", toggleRecording);
  $("fullscreen").addEventListener("click", toggleFullscreen);
  const transport = new URLSearchParams(location.search).get("transport");
  if (transport === "websocket" || !HAS_WEBRTC) $("transport").value = "websocket";
  $("output-video").requestVideoFrameCallback(countOutputFrame);
  setInterval(showStats, 500);
  setStatus("idle");
  showPipeline(list.default); // after "idle": a talk pipeline in a browser without WebRTC says so
}

init();
