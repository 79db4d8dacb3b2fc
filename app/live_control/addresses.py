"""The OSC address scheme (docs/live-control.md), in one place for the listener and the REST routes."""

from __future__ import annotations

ROOT = "/latentcast"
LATEST_ADDRESS = f"{ROOT}/latest"   # + /<param>: the session created last
ACK_ADDRESS = f"{ROOT}/ack"         # replies: <session> <param> <value in force> <update class>
ERROR_ADDRESS = f"{ROOT}/error"     # replies: <code> <message> <address asked>
SCALED = "scaled"                   # <param>/scaled <0..1>: a fader's position on the parameter's range


def session_address(session_id: str) -> str:
    """The address prefix of one session's parameters (append `/<param>`)."""
    return f"{ROOT}/session/{session_id}"
