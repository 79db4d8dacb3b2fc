// Receive-only player (WHEP) for one session's output, made for an OBS Browser Source: no
// controls, fills the window, reconnects on its own. URL: /player/<session id or "latest">
//   ?background=transparent|<css colour>   ?fit=contain|cover|fill   ?muted=1   ?token=<short-lived>

const query = new URLSearchParams(location.search);
const sessionId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
const token = query.get("token");
const video = document.getElementById("video");
const RETRY_MS = 2000;         // after a refused offer or a lost connection
const GATHER_TIMEOUT_MS = 2000; // offers go complete (no trickle); never wait forever for candidates

// State for people and tests.
const player = (window.player = { status: "connecting", sessionId: null, framesDecoded: 0, connects: 0, lastError: null });

let pc = null;
let resource = null;
let retryTimer = null;

function styleFromQuery() {
  const background = query.get("background");
  if (background === "transparent") document.body.classList.add("transparent");
  else if (background) document.body.style.background = background;
  if (["contain", "cover", "fill"].includes(query.get("fit"))) video.style.objectFit = query.get("fit");
  video.muted = query.get("muted") === "1";
}

function authHeaders() {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function setStatus(status, error = null) {
  player.status = status;
  if (error) player.lastError = error;
  document.title = `latentcast player: ${status}`;
}

async function gathered(connection) {
  if (connection.iceGatheringState === "complete") return;
  await new Promise((resolve) => {
    const done = () => connection.iceGatheringState === "complete" && resolve();
    connection.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, GATHER_TIMEOUT_MS);
  });
}

async function connect() {
  retryTimer = null;
  hangUp();
  setStatus("connecting");
  const connection = (pc = new RTCPeerConnection());
  const stream = new MediaStream();
  video.srcObject = stream;
  connection.addTransceiver("video", { direction: "recvonly" });
  connection.addTransceiver("audio", { direction: "recvonly" });
  connection.ontrack = (event) => stream.addTrack(event.track);
  connection.onconnectionstatechange = () => {
    if (connection !== pc) return;
    const state = connection.connectionState;
    if (state === "connected") {
      player.connects += 1;
      setStatus("playing");
      video.play().catch(() => { video.muted = true; video.play().catch(() => {}); }); // autoplay rules
    } else if (state === "failed" || state === "closed" || state === "disconnected") {
      retry(`connection ${state}`);
    }
  };
  try {
    await connection.setLocalDescription(await connection.createOffer());
    await gathered(connection);
    const response = await fetch(`v1/whep/${encodeURIComponent(sessionId)}`, {
      method: "POST", body: connection.localDescription.sdp,
      headers: { "Content-Type": "application/sdp", ...authHeaders() },
    });
    if (response.status !== 201) {
      const body = await response.json().catch(() => null);
      throw new Error(body?.error?.message ?? `HTTP ${response.status}`);
    }
    if (connection !== pc) return;
    resource = new URL(response.headers.get("Location"), location.href).href;
    player.sessionId = response.headers.get("Latentcast-Session-Id");
    await connection.setRemoteDescription({ type: "answer", sdp: await response.text() });
    // The server hanging up (the session ended) closes DTLS at once; ICE would notice only
    // seconds later.
    const dtls = connection.getReceivers()[0]?.transport;
    if (dtls) dtls.onstatechange = () => ["closed", "failed"].includes(dtls.state) && connection === pc && retry(`stream ended`);
  } catch (err) {
    if (connection === pc) retry(err.message);
  }
}

function retry(reason) {
  setStatus("waiting", reason);
  if (!retryTimer) retryTimer = setTimeout(connect, RETRY_MS);
}

function hangUp() {
  if (resource) fetch(resource, { method: "DELETE", headers: authHeaders(), keepalive: true }).catch(() => {});
  resource = null;
  pc?.close();
  pc = null;
}

function countFrames() {
  player.framesDecoded += 1;
  video.requestVideoFrameCallback(countFrames);
}

styleFromQuery();
video.requestVideoFrameCallback(countFrames);
window.addEventListener("pagehide", hangUp);
connect();
