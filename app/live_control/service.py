"""The OSC listener and the MIDI input of one server, opened as the settings ask; both off by default.

Everything that can be wrong with them (a missing `live` extra, a bad mapping file, a port that
cannot be opened or bound) is found by `LiveControl.open`, which `create_app` calls: `serve` stops
with one line that says what, before it loads a model or binds HTTP. They start receiving with the
server's event loop (`start`, from the router's lifespan) and stop before the sessions go.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.auth import is_loopback
from app.context import ServerContext
from app.live_control.addresses import LATEST_ADDRESS, session_address
from app.settings import Settings
from streaming.remote_control import RemoteControl

if TYPE_CHECKING:  # imported when enabled: the `live` extra is optional
    from app.live_control.midi import MidiInput

log = logging.getLogger(__name__)


class LiveControlError(ValueError):
    """OSC or MIDI cannot start as configured; the message says why."""


@dataclass
class OscEndpoint:
    host: str
    port: int
    require_session_id: bool


def _require(module: str, feature: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise LiveControlError(f"{feature} needs the `live` extra: pip install 'latentcast[live]'")


def _bind_udp(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((host, port))
    except OSError as err:
        raise LiveControlError(f"cannot listen for OSC on {host}:{port}: {err.strerror or err}") from None
    sock.setblocking(False)
    return sock


class LiveControl:
    def __init__(self, osc_socket: socket.socket | None = None, require_session_id: bool = False, midi: MidiInput | None = None):
        self._osc_socket = osc_socket
        self.require_session_id = require_session_id
        self.midi = midi
        self._transport: asyncio.DatagramTransport | None = None
        self._remote: RemoteControl | None = None

    @classmethod
    def open(cls, settings: Settings) -> LiveControl:
        """Bind the OSC socket and open the MIDI port the settings name (neither, by default)."""
        if settings.midi_map is not None and settings.midi_port is None:
            raise LiveControlError("--midi-map needs --midi-port (the MIDI input it maps)")
        midi = None
        if settings.midi_port is not None:
            _require("mido", "MIDI")
            from app.live_control.mapping import load_midi_map
            from app.live_control.midi import open_midi_input

            if settings.midi_map is None:
                raise LiveControlError("--midi-port needs --midi-map: the file that says which control drives which parameter "
                                       "(docs/live-control.md)")
            midi = open_midi_input(settings.midi_port, load_midi_map(settings.midi_map))  # MappingError, MidiPortError: ValueErrors
        osc_socket = None
        if settings.osc_port is not None:
            _require("pythonosc", "OSC")
            osc_socket = _bind_udp(settings.osc_host, settings.osc_port)
        require = settings.osc_require_session_id
        return cls(osc_socket, not is_loopback(settings.osc_host) if require is None else require, midi)

    @property
    def osc(self) -> OscEndpoint | None:
        if self._osc_socket is None:
            return None
        host, port = self._osc_socket.getsockname()[:2]
        return OscEndpoint(host, port, self.require_session_id)

    async def start(self, context: ServerContext) -> None:
        if self._osc_socket is None and self.midi is None:
            return
        self._remote = remote = RemoteControl(context.sessions)
        if self._osc_socket is not None:
            from app.live_control.osc import OscListener

            s = context.settings
            listener = OscListener(remote, context.metrics, require_session_id=self.require_session_id, max_bytes=s.max_control_bytes)
            self._transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: listener, sock=self._osc_socket)
            endpoint = self.osc
            assert endpoint is not None
            log.info("OSC: listening on udp://%s:%d for %s/<param>%s", endpoint.host, endpoint.port, session_address("<id>"),
                     "" if self.require_session_id else f" and {LATEST_ADDRESS}/<param>")
        if self.midi is not None:
            await self.midi.start(remote)
            log.info("MIDI: reading %s (%d control changes, %d notes mapped) into the latest session", self.midi.port_name,
                     len(self.midi.mapping.cc), len(self.midi.mapping.note))

    async def close(self) -> None:
        if self.midi is not None:
            await self.midi.close()
        if self._transport is not None:
            self._transport.close()
        elif self._osc_socket is not None:
            self._osc_socket.close()
        if self._remote is not None:
            await self._remote.close()
