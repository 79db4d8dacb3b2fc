// The demo's WebRTC link: media on tracks both ways, the WebSocket API's control messages on a
// data channel named "control" (docs/protocol.md). Same shape as the socket link in demo.js:
// send(message), close(), and callbacks for control messages, the output stream and the end.

const GATHER_TIMEOUT_MS = 2000; // the offer goes complete (no trickle); never wait forever for candidates
const CONNECT_TIMEOUT_MS = 8000; // then the caller falls back to the WebSocket

async function gathered(pc) {
  if (pc.iceGatheringState === "complete") return;
  await new Promise((resolve) => {
    pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve());
    setTimeout(resolve, GATHER_TIMEOUT_MS);
  });
}

// Resolves once the control channel is open (the caller then sends `start`); rejects when the
// server refuses the offer or the connection does not come up in time. Video goes both ways with
// a camera, comes back alone without one (txt2img), and is left out with `receiveVideo: false`
// (talking: audio both ways only). `base`: the server that answers the offer (a cluster's worker), else this page's.
export async function openWebRtc({ source, receiveVideo = true, token, base, onControl, onOutput, onClosed }) {
  const pc = new RTCPeerConnection();
  const video = source?.getVideoTracks()[0];
  const audio = source?.getAudioTracks()[0];
  if (video || receiveVideo) pc.addTransceiver(video ?? "video", { direction: video ? "sendrecv" : "recvonly", streams: source ? [source] : [] });
  if (audio) pc.addTransceiver(audio, { direction: "sendrecv", streams: [source] });
  const channel = pc.createDataChannel("control", { ordered: true });
  const output = new MediaStream();
  pc.ontrack = (event) => {
    output.addTrack(event.track);
    onOutput(output);
  };
  let closed = false;
  const close = (reason = "") => {
    if (closed) return;
    closed = true;
    pc.close();
    onClosed(reason);
  };
  channel.onmessage = (event) => onControl(JSON.parse(event.data));
  channel.onclose = () => close("connection closed");
  // When media starts to flow: the server numbers input pts from the first frame it receives, which the
  // browser sends right after connecting (docs/protocol.md), so this is the input clock's zero, within a frame.
  let connectedAt = null;
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "connected" && connectedAt === null) connectedAt = performance.now();
    if (["failed", "closed"].includes(pc.connectionState)) close(`connection ${pc.connectionState}`);
  };

  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const response = await fetch(new URL("v1/webrtc/offer", base ?? location.href), {
      method: "POST",
      headers: { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) },
      // frame_info: each generated frame is announced with its input's pts and its RTP pts (latency over WebRTC).
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", frame_info: Boolean(video) }),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer?.error?.message ?? `HTTP ${response.status}`);
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no connection after ${CONNECT_TIMEOUT_MS / 1000} s`)), CONNECT_TIMEOUT_MS);
      channel.onopen = () => { clearTimeout(timer); resolve(); };
    });
  } catch (err) {
    closed = true; // a link that never opened ends silently: the caller falls back
    pc.close();
    throw err;
  }
  return {
    kind: "webrtc",
    pc,
    inputClockStart: () => connectedAt,
    send: (message) => channel.readyState === "open" && channel.send(JSON.stringify(message)),
    close: () => close(),
  };
}
