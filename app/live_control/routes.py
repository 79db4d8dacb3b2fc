"""REST for live control: where a session's OSC address is (the demo shows it) and what listens.

The router's lifespan starts the OSC listener and the MIDI input with the server and stops them
before the sessions go (router lifespans run inside the app's).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, Field

from app.context import ServerContext, server_context
from app.live_control.addresses import ACK_ADDRESS, ERROR_ADDRESS, LATEST_ADDRESS, session_address
from app.live_control.service import LiveControl


@asynccontextmanager
async def _lifetime(app: FastAPI) -> AsyncIterator[None]:
    live: LiveControl = app.state.live_control
    await live.start(app.state.context)
    try:
        yield
    finally:
        await live.close()


router = APIRouter(lifespan=_lifetime, tags=["live control"])


def live_control(request: Request) -> LiveControl:
    """FastAPI dependency."""
    return request.app.state.live_control


class OscListenerInfo(BaseModel):
    host: str
    port: int
    require_session_id: bool = Field(description="Only /latentcast/session/<id>/... is taken; /latentcast/latest/... is refused.")
    session_address: str = Field(description="Address of a session's parameter: replace <id> and <param>.")
    latest_address: str | None = Field(description="Address of the latest session's parameter; null when ids are required.")
    ack_address: str
    error_address: str


class MidiInputInfo(BaseModel):
    port: str = Field(description="The port read, as --midi-port names it (tcp: with the port bound).")
    cc_mappings: int
    note_mappings: int


class LiveControlInfo(BaseModel):
    osc: OscListenerInfo | None = Field(description="null: no OSC listener (serve --osc-port).")
    midi: MidiInputInfo | None = Field(description="null: no MIDI input (serve --midi-port and --midi-map).")


class SessionOscAddress(BaseModel):
    enabled: bool = Field(description="Whether this server listens for OSC at all.")
    host: str | None = None
    port: int | None = None
    address: str | None = Field(None, description="This session's address prefix: send <address>/<param> <value>.")


@router.get("/v1/live-control", response_model=LiveControlInfo)
async def live_control_info(live: LiveControl = Depends(live_control)) -> LiveControlInfo:
    """The OSC listener and the MIDI input of this server (docs/live-control.md)."""
    osc = live.osc
    midi = live.midi
    return LiveControlInfo(
        osc=None if osc is None else OscListenerInfo(
            host=osc.host, port=osc.port, require_session_id=osc.require_session_id,
            session_address=session_address("<id>") + "/<param>",
            latest_address=None if osc.require_session_id else f"{LATEST_ADDRESS}/<param>", ack_address=ACK_ADDRESS, error_address=ERROR_ADDRESS),
        midi=None if midi is None else MidiInputInfo(port=midi.port_name, cc_mappings=len(midi.mapping.cc),
                                                     note_mappings=len(midi.mapping.note)),
    )


@router.get("/v1/sessions/{session_id}/osc", response_model=SessionOscAddress,
            responses={404: {"description": "unknown_session"}})
async def session_osc_address(session_id: str, live: LiveControl = Depends(live_control),
                              context: ServerContext = Depends(server_context)) -> SessionOscAddress:
    """Where to send OSC to change this session's parameters (`enabled` false when the server has no OSC listener)."""
    session = context.sessions.get(session_id)
    osc = live.osc
    if osc is None:
        return SessionOscAddress(enabled=False)
    return SessionOscAddress(enabled=True, host=osc.host, port=osc.port, address=session_address(session.id))
