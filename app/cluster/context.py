"""What the front door's routes share, and how they send a client to a worker.

Clients reach a worker directly once placed: the front door answers with the worker's URL (a 307, REST URLs,
a WebSocket `redirect` message) and carries no media. With an API token set, a URL it hands out carries a
short-lived token (the one the client came with, or a new one for an API-token client): HTTP clients drop the
Authorization header when a redirect leaves the host, and every worker checks tokens with the same key.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
from fastapi import Request, Response
from prometheus_client import CollectorRegistry
from starlette.requests import HTTPConnection

from app.auth import TokenAuthority, token_owner
from app.cluster.pool import Worker, WorkerPool
from app.cluster.settings import ClusterSettings
from app.settings import Settings

# A redirect a page on another origin may follow and read (WHIP/WHEP clients in a browser).
REDIRECT_CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "Location"}


@dataclass
class FrontDoor:
    settings: Settings
    options: ClusterSettings
    pool: WorkerPool
    auth: TokenAuthority
    metrics: CollectorRegistry
    http: httpx.AsyncClient   # forwards REST calls to workers

    def forwarded_credentials(self, connection: HTTPConnection) -> dict[str, str]:
        """The Authorization a worker gets for a call made on a client's behalf: the client's short-lived token
        (so its sessions count against it there too), else the API token."""
        if not self.auth.enabled:
            return {}
        return {"Authorization": f"Bearer {token_owner(connection) or self.auth.api_token}"}

    def worker_url(self, worker: Worker, path: str, connection: HTTPConnection, query: dict[str, str] | None = None,
                   scheme: str | None = None) -> str:
        """`path` on the worker, with `query` and, when tokens are on, a short-lived token."""
        assert worker.status is not None, "only workers that answered are placed on"
        base = urlsplit(worker.status.url)
        query = {k: v for k, v in (query or {}).items() if k != "token"}
        if self.auth.enabled:
            query["token"] = token_owner(connection) or self.auth.issue(self.settings.browser_token_ttl_s)[0]
        return urlunsplit((scheme or base.scheme, base.netloc, path, urlencode(query), ""))


def front_door(connection: HTTPConnection) -> FrontDoor:
    """FastAPI dependency (requests and sockets alike)."""
    return connection.app.state.front_door


def redirect(location: str) -> Response:
    """307: the same method and body again, at the worker (RFC 9725 §4.5 allows it for WHIP)."""
    return Response(status_code=307, headers={**REDIRECT_CORS, "Location": location})


def same_request_on(door: FrontDoor, worker: Worker, request: Request) -> Response:
    """307 to the same path and query on the worker."""
    return redirect(door.worker_url(worker, request.url.path, request, dict(request.query_params)))
