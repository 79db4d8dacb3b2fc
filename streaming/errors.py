"""Error codes shared by every transport, so a client sees the same code over REST and the stream.

A `StreamError` names what went wrong in one line a person can act on; transports turn it into an
HTTP status with a JSON body or a WebSocket `error` message. Nothing here closes a session.

`HTTP_STATUS` is the one table of which status a code gets over HTTP (docs/protocol.md, "Error
codes", shows the same table; a test holds them equal). A code has one status wherever it is
raised, so a client can branch on either.
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    BAD_JSON = "bad_json"                        # a text message or request body that is not a JSON object (or too deep)
    BAD_MESSAGE = "bad_message"                  # JSON with a missing or ill-typed field
    BAD_SDP = "bad_sdp"                          # an offer that is not a usable SDP offer
    UNKNOWN_TYPE = "unknown_type"                # a control message type the server does not know
    UNSUPPORTED_VERSION = "unsupported_version"  # protocol version the server does not speak
    NOT_STARTED = "not_started"                  # media or update before `start`
    ALREADY_STARTED = "already_started"          # a second `start` on one connection
    UNKNOWN_PIPELINE = "unknown_pipeline"
    UNKNOWN_SESSION = "unknown_session"
    SESSION_ATTACHED = "session_attached"        # the session already has a stream connected
    BAD_PARAMS = "bad_params"                    # a parameter out of bounds or of the wrong type
    BUSY = "busy"                                # admission control: no room for another session
    TOO_MANY_SESSIONS = "too_many_sessions"      # this token already holds as many sessions as one token may
    NOT_READY = "not_ready"                      # models still loading
    OUT_OF_MEMORY = "out_of_memory"              # the device ran out of memory for this session
    PIPELINE_FAILED = "pipeline_failed"          # a process the pipeline runs on died
    WORKER_FAILED = "worker_failed"              # cluster: the worker that held the session died (docs/cluster.md)
    BAD_HEADER = "bad_header"                    # binary header too short, wrong magic, wrong lengths
    UNSUPPORTED_FORMAT = "unsupported_format"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"  # an HTTP body of another content type than the route takes
    FRAME_TOO_LARGE = "frame_too_large"          # width or height above the server's limit
    MESSAGE_TOO_LARGE = "message_too_large"
    BAD_IMAGE = "bad_image"                      # payload that does not decode to the announced picture
    INPUT_REJECTED = "input_rejected"            # the pipeline could not use this input (say, far too small)
    AUDIO_OVERFLOW = "audio_overflow"            # audio buffer full: the chunk was refused, not dropped silently
    IDLE_TIMEOUT = "idle_timeout"
    UNAUTHORIZED = "unauthorized"
    AUTH_DISABLED = "auth_disabled"
    NOT_FOUND = "not_found"                      # no such HTTP route or file
    METHOD_NOT_ALLOWED = "method_not_allowed"    # the route exists, not with this method
    NOT_IMPLEMENTED = "not_implemented"          # WHIP/WHEP PATCH: neither trickle ICE nor ICE restarts
    INTERNAL = "internal"                        # a pipeline failed on this stream's input


# The HTTP status of each code a REST, WHIP or WHEP route can answer with.
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_JSON: 400,
    ErrorCode.BAD_SDP: 400,
    ErrorCode.UNKNOWN_PIPELINE: 400,
    ErrorCode.BAD_PARAMS: 400,
    ErrorCode.AUTH_DISABLED: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.UNKNOWN_SESSION: 404,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.SESSION_ATTACHED: 409,
    ErrorCode.MESSAGE_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.BAD_MESSAGE: 422,
    ErrorCode.UNSUPPORTED_FORMAT: 422,
    ErrorCode.TOO_MANY_SESSIONS: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.NOT_IMPLEMENTED: 501,
    ErrorCode.WORKER_FAILED: 502,
    ErrorCode.BUSY: 503,
    ErrorCode.NOT_READY: 503,
    ErrorCode.OUT_OF_MEMORY: 503,
    ErrorCode.PIPELINE_FAILED: 503,
}


class StreamError(Exception):
    """A request or input the server refuses; `field` names the offending parameter if there is one."""

    def __init__(self, code: ErrorCode, message: str, field: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    @property
    def http_status(self) -> int:
        """The status this error gets over HTTP (400 for a code that is never meant to reach a route)."""
        return HTTP_STATUS.get(self.code, 400)

    def to_dict(self) -> dict:
        body = {"code": self.code.value, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body
