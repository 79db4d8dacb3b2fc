"""What the WebRTC, WHIP and WHEP routes share: the server's peers and how a route makes one.

The registry lives as long as the app (a router lifespan), so shutting the server down hangs up
every connection before the sessions and the worker go.
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
    app.state.peers = PeerRegistry()
    try:
        yield
    finally:
        await app.state.peers.close_all()


router = APIRouter(lifespan=_registry_lifetime)


def peer_registry(request: Request) -> PeerRegistry:
    """FastAPI dependency."""
    return request.app.state.peers


def new_peer(context: ServerContext, peers: PeerRegistry, role: str, *, receive: bool, send: bool) -> SessionPeer:
    """A registered peer with the server's limits; StreamError(busy) when there are too many."""
    if len(peers.peers) >= PEERS_PER_SESSION_SLOT * context.sessions.max_sessions:
        raise StreamError(ErrorCode.BUSY, f"server busy: {len(peers.peers)} WebRTC connections are open; retry later")
    settings = context.settings
    peer = SessionPeer(role, receive=receive, send=send, codec_pool=context.codec_pool,
                       max_frame_size=(settings.max_frame_width, settings.max_frame_height))
    peers.add(peer)
    return peer
