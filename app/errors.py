"""Every HTTP error in one shape: `{"error": {"code", "message", "field"?}}` with the status the
code has in `streaming.errors.HTTP_STATUS` (docs/protocol.md, "Error codes").

That covers what the routes raise (`StreamError`) and also what FastAPI and Starlette answer on
their own, which would otherwise be `{"detail": ...}` or an empty body: a body that fails
validation (422 `bad_message`), a body that is not JSON at all, not UTF-8, or nested too deep
(400 `bad_json`), an unknown path (404 `not_found`), a known path with the wrong method (405
`method_not_allowed`, also where the static files' catch-all mount hides the route), and, as a
last resort, an unexpected exception (500 `internal`, logged with its traceback).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match, Mount

from streaming.errors import ErrorCode, StreamError

log = logging.getLogger(__name__)

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

# What Starlette's own HTTP errors mean, as our codes.
_HTTP_CODES = {400: ErrorCode.BAD_JSON, 401: ErrorCode.UNAUTHORIZED, 404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED,
               413: ErrorCode.MESSAGE_TOO_LARGE, 415: ErrorCode.UNSUPPORTED_MEDIA_TYPE}


def error_response(err: StreamError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The documented error body with its code's status (and Retry-After on a 503)."""
    if err.http_status == 503:
        headers = {**(headers or {}), "Retry-After": "1"}
    return JSONResponse({"error": err.to_dict()}, status_code=err.http_status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StreamError, _stream_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)


async def _stream_error(request: Request, err: StreamError) -> JSONResponse:
    return error_response(err)


async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    first = err.errors()[0]
    if first.get("type") == "json_invalid":
        return error_response(StreamError(ErrorCode.BAD_JSON, f"the request body is not valid JSON: {first.get('msg', '')}"))
    where = ".".join(str(p) for p in first["loc"])
    return error_response(StreamError(ErrorCode.BAD_MESSAGE, f"{where}: {first['msg']}", field=where))


async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    status = err.status_code
    if status == 404:
        allowed = _methods_at(request)
        if allowed:  # an API route lives here, only not for this method; the static files' mount said 404
            return _not_allowed(request, ", ".join(sorted(allowed)))
        return error_response(StreamError(ErrorCode.NOT_FOUND, f"nothing at {request.url.path}: see /docs for the routes"))
    if status == 405:  # Starlette's Allow names the methods of the first route that matched the path only
        return _not_allowed(request, ", ".join(sorted(_methods_at(request))) or (err.headers or {}).get("Allow", ""))
    if status == 400:  # FastAPI could not read the body: not UTF-8, or a JSON reader's failure
        return error_response(StreamError(ErrorCode.BAD_JSON, f"the request body is not JSON in UTF-8: {err.detail}"))
    code = _HTTP_CODES.get(status)
    if code is None:  # none known to happen; the status is kept, with the body of an unexpected error
        return JSONResponse({"error": {"code": ErrorCode.INTERNAL.value, "message": str(err.detail)}}, status_code=status,
                            headers=err.headers)
    return error_response(StreamError(code, str(err.detail)), headers=err.headers)


async def _unexpected_error(request: Request, err: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=err)
    return error_response(StreamError(ErrorCode.INTERNAL, f"server error: {type(err).__name__}"))


def _not_allowed(request: Request, allowed: str) -> JSONResponse:
    message = f"{request.method} is not allowed on {request.url.path}" + (f"; it takes {allowed}" if allowed else "")
    return error_response(StreamError(ErrorCode.METHOD_NOT_ALLOWED, message), headers={"Allow": allowed} if allowed else None)


def _methods_at(request: Request) -> set[str]:
    """The methods the app's own routes (not the static files) take at this request's path, found by
    asking each route whether it would take the request with each method."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Mount):
            continue
        for method in _METHODS:
            if route.matches({**request.scope, "method": method})[0] is Match.FULL:
                methods.add(method)
    return methods
