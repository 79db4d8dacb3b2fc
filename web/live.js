// Live control in the demo: while a session streams, show the OSC address that drives its parameters
// (docs/live-control.md), read from GET /v1/sessions/{id}/osc. Self-contained: it watches the status
// line the demo keeps and the session id it publishes on window.latentcast, and shows nothing when
// the server has no OSC listener.
const token = new URLSearchParams(location.search).get("token");
const status = document.getElementById("status");
const shown = document.getElementById("osc-address");
let showing = null; // the session whose address is shown (or being fetched)

async function oscAddress(sessionId) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(`v1/sessions/${encodeURIComponent(sessionId)}/osc`, { headers });
  return response.ok ? response.json() : null;
}

async function follow() {
  const sessionId = window.latentcast?.sessionId;
  if (status.dataset.state !== "streaming" || !sessionId) {
    showing = null;
    shown.hidden = true;
    return;
  }
  if (showing === sessionId) return;
  showing = sessionId;
  const osc = await oscAddress(sessionId).catch(() => null);
  if (showing !== sessionId || !osc?.enabled) return; // the stream ended meanwhile, or the server has no OSC
  const code = document.createElement("code");
  code.textContent = `${osc.address}/<param> <value>`;
  shown.replaceChildren(`OSC to udp://${osc.host}:${osc.port}: `, code);
  shown.title = "Any parameter of this session, e.g. /prompt \"a cat\"; append /scaled to send a 0..1 fader position. "
    + "Replies come back as /latentcast/ack or /latentcast/error.";
  shown.dataset.address = osc.address;
  shown.hidden = false;
}

if (status && shown) new MutationObserver(follow).observe(status, { attributes: true, attributeFilter: ["data-state"] });
