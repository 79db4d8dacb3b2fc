"""What the WebRTC, WHIP and WHEP routes share: the server's peers and how a route makes one.

The registry lives in the server context; a router lifespan hangs up every connection when the
server shuts down, before the sessions and the worker go.

A route makes a peer only once the offer and everything else in the request has been checked
(`streaming.webrtc.offer.check_offer`), and `answer_or_close` tears the peer down, with whatever
it was bound to, the moment anything after that fails: no refused or abandoned offer holds a
connection or a session slot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request

from app.context import ServerContext
from streaming.errors import ErrorCode, StreamError
from streaming.webrtc.peer import PeerRegistry, SessionPeer

PEERS_PER_SESSION_SLOT = 4  # players and not-yet-started demo peers: bounded by the admission limit


@asynccontextmanager
async def _registry_lifetime(app: FastAPI) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await app.state.context.peers.close_all()


router = APIRouter(lifespan=_registry_lifetime)


def peer_registry(request: Request) -> PeerRegistry:
    """FastAPI dependency."""
    return request.app.state.context.peers


def check_room_for_peer(context: ServerContext) -> None:
    """StreamError(busy) when the server holds as many connections as it allows."""
    open_peers = len(context.peers.peers)
    if open_peers >= PEERS_PER_SESSION_SLOT * context.sessions.max_sessions:
        raise StreamError(ErrorCode.BUSY, f"server busy: {open_peers} WebRTC connections are open; retry later")


def new_peer(context: ServerContext, role: str, *, receive: bool, send: bool, owner: str | None = None) -> SessionPeer:
    """A registered peer with the server's limits; StreamError(busy) when there are too many."""
    check_room_for_peer(context)
    settings = context.settings
    peer = SessionPeer(role, receive=receive, send=send, codec_pool=context.codec_pool,
                       max_frame_size=(settings.max_frame_width, settings.max_frame_height),
                       connect_timeout_s=settings.webrtc_connect_timeout_s, owner=owner)
    context.peers.add(peer)
    return peer


async def answer_or_close(peer: SessionPeer, offer: str, request: Request) -> str:
    """The peer's answer to a checked offer. If aiortc refuses it, the client has gone before its
    answer could reach it, or the request is cancelled, the peer closes at once, and with it the
    session or place it was bound to."""
    try:
        answer = await peer.answer(offer)
        if await request.is_disconnected():
            raise StreamError(ErrorCode.BAD_MESSAGE, "the client left before its answer was sent; nothing was kept")
        return answer
    except BaseException:
        await peer.close()
        raise
