"""Error codes shared by every transport, so a client sees the same code over REST and the stream.

A `StreamError` names what went wrong in one line a person can act on; transports turn it into an
HTTP status with a JSON body or a WebSocket `error` message. Nothing here closes a session.
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    BAD_JSON = "bad_json"                        # a text message that is not a JSON object
    BAD_MESSAGE = "bad_message"                  # JSON with a missing or ill-typed field
    UNKNOWN_TYPE = "unknown_type"                # a control message type the server does not know
    UNSUPPORTED_VERSION = "unsupported_version"  # protocol version the server does not speak
    NOT_STARTED = "not_started"                  # media or update before `start`
    ALREADY_STARTED = "already_started"          # a second `start` on one connection
    UNKNOWN_PIPELINE = "unknown_pipeline"
    UNKNOWN_SESSION = "unknown_session"
    SESSION_ATTACHED = "session_attached"        # the session already has a stream connected
    BAD_PARAMS = "bad_params"                    # a parameter out of bounds or of the wrong type
    BUSY = "busy"                                # admission control: no room for another session
    NOT_READY = "not_ready"                      # models still loading
    BAD_HEADER = "bad_header"                    # binary header too short, wrong magic, wrong lengths
    UNSUPPORTED_FORMAT = "unsupported_format"
    FRAME_TOO_LARGE = "frame_too_large"          # width or height above the server's limit
    MESSAGE_TOO_LARGE = "message_too_large"
    BAD_IMAGE = "bad_image"                      # payload that does not decode to the announced picture
    INPUT_REJECTED = "input_rejected"            # the pipeline could not use this input (say, far too small)
    AUDIO_OVERFLOW = "audio_overflow"            # audio buffer full: the chunk was refused, not dropped silently
    IDLE_TIMEOUT = "idle_timeout"
    UNAUTHORIZED = "unauthorized"
    AUTH_DISABLED = "auth_disabled"
    INTERNAL = "internal"                        # a pipeline failed on this stream's input


class StreamError(Exception):
    """A request or input the server refuses; `field` names the offending parameter if there is one."""

    def __init__(self, code: ErrorCode, message: str, field: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def to_dict(self) -> dict:
        body = {"code": self.code.value, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body
