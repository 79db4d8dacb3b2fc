"""What the routes of one server share: settings, the worker, the sessions, the WebRTC peers, metrics, auth."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from app.auth import TokenAuthority
from app.settings import Settings
from streaming.metrics import ServerMetrics
from streaming.sessions import SessionManager
from streaming.webrtc.peer import PeerRegistry
from streaming.worker import ComputeWorker


@dataclass
class ServerContext:
    settings: Settings
    worker: ComputeWorker
    sessions: SessionManager
    metrics: ServerMetrics
    auth: TokenAuthority
    codec_pool: ThreadPoolExecutor  # picture decode and encode, off the event loop and off the worker
    peers: PeerRegistry             # the open WebRTC, WHIP and WHEP connections


def server_context(connection: HTTPConnection) -> ServerContext:
    """FastAPI dependency (works for requests and sockets alike)."""
    return connection.app.state.context
