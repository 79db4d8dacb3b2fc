"""The HTTP shape WHIP (RFC 9725) and WHEP share: an SDP offer POSTed to an endpoint, a 201 with
the answer and the resource's Location, DELETE on the resource, CORS on both, and the answers
the RFC asks of a server without trickle ICE or ICE restarts.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from app.errors import error_response
from app.peers import peer_registry
from streaming.errors import ErrorCode, StreamError
from streaming.webrtc.offer import MAX_SDP_BYTES, bad_sdp
from streaming.webrtc.peer import PeerRegistry

SDP = "application/sdp"
# The offer POSTed to an endpoint, as the OpenAPI page shows it (FastAPI does not read it: read_offer does).
SDP_BODY = {"requestBody": {"required": True, "description": "A complete SDP offer (ICE gathered: no trickle).",
                            "content": {SDP: {"schema": {"type": "string", "maxLength": MAX_SDP_BYTES}}}}}
_ENDPOINT_METHODS = "POST, OPTIONS"
_RESOURCE_METHODS = "DELETE, PATCH, OPTIONS"

# Bearer tokens travel in a header, never in cookies, so any origin may call (a player page or
# WHIP client hosted elsewhere); the token is what guards the server.
_CORS = {"Access-Control-Allow-Origin": "*",
         "Access-Control-Expose-Headers": "Location, Link, Latentcast-Session-Id"}


async def read_offer(request: Request) -> str:
    """The SDP offer in the body; StreamError (415, 413 or 400) when it is not one."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != SDP:
        raise StreamError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"the offer must be sent as {SDP}, not {content_type or 'no content type'}")
    body = await request.body()
    if len(body) > MAX_SDP_BYTES:
        raise StreamError(ErrorCode.MESSAGE_TOO_LARGE, f"the offer is {len(body)} bytes; the limit is {MAX_SDP_BYTES}", field="sdp")
    try:
        return body.decode()
    except UnicodeDecodeError:
        raise bad_sdp("the offer is not UTF-8 text") from None


def refusal(err: StreamError) -> JSONResponse:
    """A refused WHIP/WHEP request: the REST error body, its status, and CORS so a page on another
    origin can read why."""
    return error_response(err, headers=_CORS)


def created(answer: str, location: str, session_id: str) -> Response:
    """201 Created: the SDP answer, and where the resource lives for DELETE."""
    return Response(answer, status_code=201, media_type=SDP,
                    headers={**_CORS, "Location": location, "Latentcast-Session-Id": session_id})


def preflight(methods: str, accept_post: bool) -> Response:
    """CORS answer to OPTIONS (which carries no token: the AuthMiddleware lets OPTIONS through)."""
    headers = {**_CORS, "Access-Control-Allow-Methods": methods, "Allow": methods,
               "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
               "Access-Control-Max-Age": "86400"}
    if accept_post:
        headers["Accept-Post"] = SDP
    return Response(status_code=204, headers=headers)


def deleted() -> Response:
    return Response(status_code=200, headers=_CORS)


def no_trickle() -> Response:
    """PATCH on a resource: neither trickle ICE nor ICE restarts are supported (our answer carries
    every candidate; clients send complete offers), which RFC 9725 answers with 501."""
    return refusal(StreamError(ErrorCode.NOT_IMPLEMENTED, "this server supports neither trickle ICE nor ICE restarts: "
                               "send a complete offer, and POST a new one to reconnect"))


def not_allowed(methods: str) -> Response:
    """Other methods on an endpoint or resource are reserved by the RFC: 405, with the methods it takes."""
    response = refusal(StreamError(ErrorCode.METHOD_NOT_ALLOWED, f"this resource takes {methods}"))
    response.headers["Allow"] = methods
    return response


def add_endpoint_routes(router: APIRouter, path: str) -> None:
    """OPTIONS and the reserved methods of an endpoint whose POST the caller defines."""

    async def endpoint_options() -> Response:
        return preflight(_ENDPOINT_METHODS, accept_post=True)

    async def endpoint_other() -> Response:
        return not_allowed(_ENDPOINT_METHODS)

    router.add_api_route(path, endpoint_options, methods=["OPTIONS"], include_in_schema=False)
    router.add_api_route(path, endpoint_other, methods=["GET", "HEAD", "PUT", "PATCH", "DELETE"], include_in_schema=False)


def add_resource_routes(router: APIRouter, path: str, kind: str, name: str, ends: str) -> None:
    """DELETE, PATCH, OPTIONS and the reserved methods of the resources a `kind` ("whip" or
    "whep") POST creates; `path` ends in `{resource_id}`, the peer's id, and the DELETE route is
    called `name` (for `url_for` when the POST makes the Location). `ends` documents the DELETE."""

    async def end(resource_id: str, peers: PeerRegistry = Depends(peer_registry)) -> Response:
        try:
            peer = peers.get(resource_id, kind)
        except StreamError as err:
            return refusal(err)
        await peer.close()
        return deleted()

    async def patch(resource_id: str, peers: PeerRegistry = Depends(peer_registry)) -> Response:
        try:
            peers.get(resource_id, kind)  # 404 for an unknown resource before the 501
        except StreamError as err:
            return refusal(err)
        return no_trickle()

    async def resource_options() -> Response:
        return preflight(_RESOURCE_METHODS, accept_post=False)

    async def resource_other() -> Response:
        return not_allowed(_RESOURCE_METHODS)

    # Path segments before the resource id only place it (the peer id is unique): documented, unread.
    placing = [{"name": segment[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
               for segment in path.split("/") if segment.startswith("{") and segment != "{resource_id}"]
    router.add_api_route(path, end, methods=["DELETE"], name=name, summary=ends, description=ends,
                         responses={404: {"description": f"no such {kind.upper()} resource"}},
                         openapi_extra={"parameters": placing} if placing else None)
    router.add_api_route(path, patch, methods=["PATCH"], include_in_schema=False)
    router.add_api_route(path, resource_options, methods=["OPTIONS"], include_in_schema=False)
    router.add_api_route(path, resource_other, methods=["GET", "HEAD", "POST", "PUT"], include_in_schema=False)
