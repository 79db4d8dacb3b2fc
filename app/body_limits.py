"""Limits on HTTP request bodies, applied before any route reads one.

A body is read whole (it is small by these limits) and refused when it is larger than
`MAX_REQUEST_BYTES` (413 `message_too_large`), or when it is JSON that nests arrays and objects
deeper than `MAX_JSON_DEPTH` (400 `bad_json`): Python's JSON reader recurses, so a deep enough
body under the size limit would otherwise reach it and fail with a RecursionError. Then the
route gets the same body; later reads go to the client, so a route can still notice a client
that has gone (`Request.is_disconnected`).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response
from streaming.errors import ErrorCode, StreamError
from streaming.protocol import MAX_JSON_DEPTH, json_depth

# An SDP offer (64 KiB at most) in a JSON body takes a little more than itself; a JSON session
# request is far smaller.
MAX_REQUEST_BYTES = 128 * 2**10


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int = MAX_REQUEST_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, self._too_large(int(declared)))
            return
        body, complete = await self._read_body(receive)
        if not complete:  # the client left while sending: nobody to answer, nothing to do
            return
        if len(body) > self.max_bytes:
            await self._refuse(scope, receive, send, self._too_large(len(body)))
            return
        if _is_json(headers.get("content-type", "")):
            try:
                depth = json_depth(body.decode())
            except UnicodeDecodeError:
                depth = 0  # FastAPI refuses it as not UTF-8 (bad_json)
            if depth > MAX_JSON_DEPTH:
                error = StreamError(ErrorCode.BAD_JSON, f"the request body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels")
                await self._refuse(scope, receive, send, error)
                return
        await self.app(scope, _replaying(body, receive), send)

    async def _read_body(self, receive: Receive) -> tuple[bytes, bool]:
        """The body (reading stops once it is over the limit), and False if the client left before sending it all."""
        chunks: list[bytes] = []
        size = 0
        while size <= self.max_bytes:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(chunks), False
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), True

    def _too_large(self, size: int) -> StreamError:
        return StreamError(ErrorCode.MESSAGE_TOO_LARGE, f"the request body is {size} bytes; the limit is {self.max_bytes}")

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, error: StreamError) -> None:
        await error_response(error)(scope, receive, send)


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def _replaying(body: bytes, receive: Receive) -> Receive:
    """The body in one message, then whatever the client sends next (its disconnect)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay
