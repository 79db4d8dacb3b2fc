"""The client side of WHIP and WHEP: POST a complete offer, apply the answer, DELETE to end.

Used by `latentcast virtualcam` (a WHEP player) and by tests (WHIP publishers and WHEP players).
The standard library's HTTP client on a thread keeps this free of extra dependencies.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from email.message import Message
from urllib.parse import urljoin

from aiortc import RTCPeerConnection, RTCSessionDescription

SDP = "application/sdp"
HTTP_TIMEOUT_S = 10.0


class SignalingError(Exception):
    """The endpoint refused the offer: `status` is its HTTP status, the message its reason."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.reason = message


async def open_resource(pc: RTCPeerConnection, endpoint_url: str, token: str | None = None) -> str:
    """Offer what `pc` has been set up to send and receive; returns the resource URL."""
    await pc.setLocalDescription(await pc.createOffer())  # aiortc returns once every candidate is in
    status, headers, body = await asyncio.to_thread(
        _request, "POST", endpoint_url, token, pc.localDescription.sdp.encode(), {"Content-Type": SDP})
    if status != 201:
        raise SignalingError(status, _reason(body))
    await pc.setRemoteDescription(RTCSessionDescription(body.decode(), "answer"))
    return urljoin(endpoint_url, headers["Location"])


async def close_resource(resource_url: str, token: str | None = None) -> int:
    """DELETE the resource; returns the HTTP status (404 when the server already ended it)."""
    status, _, _ = await asyncio.to_thread(_request, "DELETE", resource_url, token, None, {})
    return status


def _request(method: str, url: str, token: str | None, body: bytes | None,
             headers: dict[str, str]) -> tuple[int, Message, bytes]:
    """(status, headers looked up case-insensitively, body)."""
    if token:
        headers = {**headers, "Authorization": f"Bearer {token}"}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def _reason(body: bytes) -> str:
    """The server's own message from an error body ({"error": {"message": ...}}), else the body."""
    try:
        return json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:500] or "no reason given"
