"""The MIDI input: control changes and notes, through the mapping file, into session parameters.

Three kinds of port (`--midi-port`), all read with mido:

- `NAME`: a port of the machine's MIDI system through python-rtmidi (ALSA or JACK on Linux, CoreMIDI,
  Windows MM): a controller plugged in, or another program's output. A unique prefix of the name will do.
- `virtual:NAME`: a port this server creates for other programs to connect to (ALSA/JACK, CoreMIDI;
  not Windows). Needs the ALSA sequencer on Linux (`/dev/snd/seq`).
- `tcp:HOST:PORT`: MIDI over TCP in mido's own wire format (raw MIDI bytes; `mido.sockets.connect`
  is a client), for machines without a MIDI system, bridges, and the tests.

Messages are parsed off the event loop's thread only where rtmidi delivers them (its callback
thread); they hop onto the loop, where `RemoteControl` applies them as any update. MIDI has no
reply channel: a refused change is logged (once per mapping and error code at warning level).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import mido

from app.live_control.mapping import CcMapping, MidiMap, NoteMapping
from streaming.errors import ErrorCode, StreamError
from streaming.remote_control import Outcome, RemoteControl, RemoteUpdate, param_schema, scale_to_param
from streaming.session import Session

log = logging.getLogger(__name__)

MAX_TCP_CLIENTS = 8
READ_BYTES = 4096


class MidiPortError(ValueError):
    """The MIDI port cannot be opened; the message says why and what there is instead."""


def cc_changes(mapping: CcMapping, value: int, session: Session) -> dict[str, Any]:
    prop = param_schema(session.pipeline.params_model, mapping.param)
    return {mapping.param: scale_to_param(prop, mapping.param, value / 127, mapping.min, mapping.max)}


def note_changes(mapping: NoteMapping, session: Session) -> dict[str, Any]:
    if mapping.set is not None:
        return dict(mapping.set)
    name = mapping.toggle
    assert name is not None  # a note mapping has `set` or `toggle` (checked when the file was read)
    if param_schema(session.pipeline.params_model, name).get("type") != "boolean":
        raise StreamError(ErrorCode.BAD_PARAMS, f"{name}: only a boolean parameter can be toggled", field=name)
    return {name: not getattr(session.params, name)}


class MidiInput:
    """An opened MIDI port and its mapping; `start` routes what arrives to a `RemoteControl`."""

    def __init__(self, spec: str, mapping: MidiMap, *, rtmidi_port: Any = None, tcp_socket: socket.socket | None = None):
        self.spec = spec
        self.mapping = mapping
        self._rtmidi_port = rtmidi_port
        self._tcp_socket = tcp_socket
        self._tcp_server: asyncio.Server | None = None
        self._clients: dict[asyncio.Task, asyncio.StreamWriter] = {}  # connected MIDI-over-TCP clients
        self._remote: RemoteControl | None = None
        self._warned: set[tuple[str, str]] = set()

    @property
    def port_name(self) -> str:
        """The port as `--midi-port` would name it now (`tcp:` with the port actually bound)."""
        if self._tcp_socket is not None:
            host, port = self._tcp_socket.getsockname()[:2]
            return f"tcp:{host}:{port}"
        return self.spec

    async def start(self, remote: RemoteControl) -> None:
        self._remote = remote
        loop = asyncio.get_running_loop()
        if self._tcp_socket is not None:
            self._tcp_server = await asyncio.start_server(self._serve_tcp_client, sock=self._tcp_socket)
        else:
            self._rtmidi_port.callback = lambda message: loop.call_soon_threadsafe(self.dispatch, message)

    async def close(self) -> None:
        if self._rtmidi_port is not None:
            self._rtmidi_port.close()
        if self._tcp_server is not None:
            self._tcp_server.close()
            # Hang up rather than cancel: each client's reader ends on the EOF (asyncio logs a cancelled client task).
            for writer in list(self._clients.values()):
                writer.close()
            await asyncio.gather(*self._clients, return_exceptions=True)
            await self._tcp_server.wait_closed()
        elif self._tcp_socket is not None:
            self._tcp_socket.close()

    async def _serve_tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._clients) >= MAX_TCP_CLIENTS:
            log.warning("MIDI over TCP: a client from %s refused, %d are connected", writer.get_extra_info("peername"), MAX_TCP_CLIENTS)
            writer.close()
            return
        self._clients[task] = writer
        parser = mido.Parser()
        try:
            while data := await reader.read(READ_BYTES):
                parser.feed(data)
                for message in parser:
                    self.dispatch(message)
        except ConnectionError:
            pass  # the client went away; what it sent before counts
        finally:
            self._clients.pop(task, None)
            writer.close()

    def dispatch(self, message: mido.Message) -> None:
        """One MIDI message (on the event loop): its mapped update, if it has one."""
        remote = self._remote
        if remote is None:
            return
        channel = getattr(message, "channel", 0) + 1
        if message.type == "control_change" and (cc := self.mapping.cc_for(channel, message.control)) is not None:
            value = message.value
            remote.submit(RemoteUpdate(None, lambda session: cc_changes(cc, value, session), f"param:{cc.param}",
                                       self._reporter(f"CC {cc.control} -> {cc.param}")))
        elif message.type == "note_on" and message.velocity > 0 and (note := self.mapping.note_for(channel, message.note)) is not None:
            what = f"note {note.note} -> " + (f"toggle {note.toggle}" if note.toggle else ", ".join(note.set or {}))
            remote.submit(RemoteUpdate(None, lambda session: note_changes(note, session), None, self._reporter(what)))

    def _reporter(self, what: str):
        async def report(session: Session | None, outcome: Outcome) -> None:
            if isinstance(outcome, StreamError):
                first = (what, outcome.code.value) not in self._warned
                self._warned.add((what, outcome.code.value))
                log.log(logging.WARNING if first else logging.DEBUG, "MIDI %s refused: %s: %s%s", what, outcome.code.value,
                        outcome.message, " (repeats of this are logged at debug level)" if first else "")
            else:
                log.debug("MIDI %s on session %s: %s", what, session.id if session else "?", {k: outcome.params[k] for k in outcome.applied})

        return report


def open_midi_input(spec: str, mapping: MidiMap) -> MidiInput:
    """Open the port `spec` names (see the module docstring); MidiPortError says why it cannot be."""
    if spec.startswith("tcp:"):
        host, _, port = spec.removeprefix("tcp:").rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise MidiPortError(f"--midi-port {spec!r}: write tcp:HOST:PORT, e.g. tcp:127.0.0.1:7001")
        try:
            sock = socket.create_server((host.strip("[]"), int(port)))
        except OSError as err:
            raise MidiPortError(f"cannot listen for MIDI over TCP on {host}:{port}: {err.strerror or err}") from None
        sock.setblocking(False)
        return MidiInput(spec, mapping, tcp_socket=sock)
    virtual = spec.startswith("virtual:")
    name = spec.removeprefix("virtual:")
    try:
        if not virtual:
            name = _input_named(name)
        port = mido.open_input(name, virtual=virtual)
    except (OSError, SystemError, RuntimeError) as err:  # rtmidi says SystemError when there is no MIDI system at all
        raise MidiPortError(f"cannot open the MIDI port {spec!r}: {_explain(err)}") from None
    return MidiInput(spec, mapping, rtmidi_port=port)


def _input_named(name: str) -> str:
    """The input port called `name`, or the only one whose name starts with it."""
    names = mido.get_input_names()
    if name in names:
        return name
    matches = [n for n in names if n.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    listing = ", ".join(repr(n) for n in names) or "none"
    raise OSError(f"{'several' if matches else 'no'} input ports match; this machine has: {listing}")


def _explain(err: BaseException) -> str:
    text = str(err)
    if "ALSA" in text:
        return f"{text} (no ALSA sequencer: /dev/snd/seq is missing; MIDI over tcp:HOST:PORT works without one)"
    return text
