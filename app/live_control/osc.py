"""The OSC listener: a UDP datagram sets one parameter of a session (docs/live-control.md).

    /latentcast/session/<id>/<param> <value>      that session
    /latentcast/latest/<param> <value>            the session created last (refused when the listener
                                                  requires session ids)
    .../<param>/scaled <0..1>                     a fader's position, scaled onto the parameter's range

Each message becomes a `RemoteUpdate` and takes the WebSocket `update` path; the outcome goes back
to the sender's address and port as `/latentcast/ack <session> <param> <value in force> <class>` or
`/latentcast/error <code> <message> <address>`.

OSC is unauthenticated UDP and a reply goes to whatever source address a datagram claims, so the
listener binds loopback by default, and when it requires session ids (the default off loopback)
it answers only messages that name a running session: a sender that knows no session id learns
nothing and cannot make the server reflect replies at someone else. Bundle time tags are ignored
(applied at once): waiting on a tag a stranger chose would hold updates for as long as it says.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from typing import Any

import numpy as np
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket, ParseError

from app.live_control.addresses import ACK_ADDRESS, ERROR_ADDRESS, LATEST_ADDRESS, SCALED, session_address
from streaming.errors import ErrorCode, StreamError
from streaming.metrics import ServerMetrics
from streaming.remote_control import Outcome, RemoteControl, RemoteUpdate, param_schema, scale_to_param
from streaming.session import Session

log = logging.getLogger(__name__)

MAX_REPLY_TEXT = 300  # an error message is cut to this: a reply stays about as small as the datagram that asked


def parse_address(address: str) -> tuple[str | None, str, bool]:
    """(session id or None for the latest, parameter, scaled) of a message address; StreamError(bad_message) if
    it is not one of ours."""
    parts = address.split("/")[1:]
    if parts[:2] == ["latentcast", "session"] and len(parts) >= 3 and parts[2]:
        target, rest = parts[2], parts[3:]
    elif parts[:2] == ["latentcast", "latest"]:
        target, rest = None, parts[2:]
    else:
        raise StreamError(ErrorCode.BAD_MESSAGE, f"{address!r} is not an address of this server: use "
                          f"{session_address('<id>')}/<param> or {LATEST_ADDRESS}/<param>")
    if len(rest) == 1 and rest[0] or len(rest) == 2 and rest[0] and rest[1] == SCALED:
        return target, rest[0], len(rest) == 2
    raise StreamError(ErrorCode.BAD_MESSAGE, f"{address!r}: name one parameter after the session, optionally followed by /{SCALED}")


def _single_precision(value: Any) -> Any:
    """Floats as the shortest decimal that the 32-bit OSC float they most likely came as holds: a controller's
    0.3 is 0.3 in force, not 0.30000001192092896."""
    if isinstance(value, float):
        return float(str(np.float32(value)))
    if isinstance(value, list):
        return [_single_precision(v) for v in value]
    return value


def osc_changes(param: str, args: list[Any], scaled: bool, session: Session) -> dict[str, Any]:
    """The parameter change a message's arguments ask of `session` (its schema says how to read them)."""
    prop = param_schema(session.pipeline.params_model, param)
    if scaled:
        if len(args) != 1 or isinstance(args[0], bool) or not isinstance(args[0], int | float):
            raise StreamError(ErrorCode.BAD_PARAMS, f"{param}/{SCALED} takes one number between 0 and 1", field=param)
        return {param: scale_to_param(prop, param, float(args[0]))}
    if not args:
        raise StreamError(ErrorCode.BAD_PARAMS, f"{param}: the message carries no value", field=param)
    if any(isinstance(a, bytes | tuple) for a in args):
        raise StreamError(ErrorCode.BAD_PARAMS, f"{param}: blobs and MIDI arguments are not parameter values", field=param)
    values = _single_precision(args)
    composite = prop.get("type") in ("array", "object") or "$ref" in prop or "anyOf" in prop
    if len(values) > 1:
        if prop.get("type") != "array":
            raise StreamError(ErrorCode.BAD_PARAMS, f"{param} takes one value; the message carries {len(values)}", field=param)
        return {param: values}
    value = values[0]
    if composite and isinstance(value, str):  # lists of objects (prompt blending) come as JSON text
        try:
            value = json.loads(value)
        except ValueError:
            raise StreamError(ErrorCode.BAD_PARAMS, f"{param}: give its value as JSON text", field=param) from None
    return {param: value}


def _osc_value(value: Any) -> Any:
    """A value in force as an OSC argument: scalars as they are, anything else as JSON text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value)


def build_message(address: str, *args: Any) -> bytes:
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build().dgram


class OscListener(asyncio.DatagramProtocol):
    """The datagram endpoint: decodes packets on the event loop (they are tiny) and hands updates on."""

    def __init__(self, remote: RemoteControl, metrics: ServerMetrics, *, require_session_id: bool, max_bytes: int):
        self.remote = remote
        self.metrics = metrics
        self.require_session_id = require_session_id
        self.max_bytes = max_bytes
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) > self.max_bytes:
            self._refuse(addr, "", StreamError(ErrorCode.MESSAGE_TOO_LARGE, f"OSC packet over {self.max_bytes} bytes"))
            return
        try:
            messages = [timed.message for timed in OscPacket(data).messages]
        except (ParseError, ValueError, IndexError, struct.error) as err:  # python-osc raises more than ParseError on garbage
            self._refuse(addr, "", StreamError(ErrorCode.BAD_MESSAGE, f"not an OSC packet: {err}"))
            return
        for message in messages:
            self._on_message(message, addr)

    def _on_message(self, message: OscMessage, addr: tuple[str, int]) -> None:
        address = message.address
        try:
            target, param, scaled = parse_address(address)
            if target is None and self.require_session_id:
                raise StreamError(ErrorCode.UNAUTHORIZED, f"this listener requires the session id: use {session_address('<id>')}/{param}")
        except StreamError as err:
            self._refuse(addr, address, err)
            return
        args = list(message.params)

        async def answer(session: Session | None, outcome: Outcome) -> None:
            if isinstance(outcome, StreamError):
                self._refuse(addr, address, outcome, session)
            else:
                value = outcome.params.get(param)
                kind = outcome.update_class.value if outcome.applied and outcome.update_class else "unchanged"
                self._send(addr, ACK_ADDRESS, session.id if session else "", param, _osc_value(value), kind)

        self.remote.submit(RemoteUpdate(target, lambda session: osc_changes(param, args, scaled, session), f"param:{param}", answer))

    def _refuse(self, addr: tuple[str, int], address: str, err: StreamError, session: Session | None = None) -> None:
        """Count the error; tell the sender unless it named no running session on a listener that requires ids."""
        self.metrics.errors.labels(err.code.value).inc()
        if session is None and self.require_session_id:
            log.debug("OSC from %s:%s dropped unanswered: %s", *addr, err.message)
            return
        self._send(addr, ERROR_ADDRESS, err.code.value, err.message[:MAX_REPLY_TEXT], address[:MAX_REPLY_TEXT])

    def _send(self, addr: tuple[str, int], address: str, *args: Any) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(build_message(address, *args), addr)
