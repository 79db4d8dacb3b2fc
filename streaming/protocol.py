"""The WebSocket wire protocol, version 1: a fixed binary header for media, JSON for control.

Shared by the server and the Python client so both sides read the same layout; docs/protocol.md
is the reference for other languages. Header (32 bytes, little-endian):

    offset size  field
    0      2     magic b"LC"
    2      1     version (1)
    3      1     kind: 1 video, 2 audio
    4      1     format: video 1 jpeg, 2 webp, 3 rgb24; audio 16 pcm_s16le
    5      1     flags: bit 0 = output reused the previous one (similarity filter)
    6      2     reserved, 0
    8      8     frame id (u64)
    16     8     capture pts in seconds (f64; NaN when the sender has none)
    24     4     video: width;  audio: sample rate
    28     4     video: height; audio: channels
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streaming.errors import ErrorCode, StreamError

PROTOCOL_VERSION = 1
MAGIC = b"LC"
HEADER = struct.Struct("<2sBBBBHQdII")
HEADER_SIZE = HEADER.size  # 32
FLAG_REUSED = 0x01
# Arrays and objects nest at most this deep in a control message or a REST body: no message needs
# more, and Python's JSON reader would fail with a RecursionError long before the size limit.
MAX_JSON_DEPTH = 32


class MediaKind(IntEnum):
    VIDEO = 1
    AUDIO = 2


class MediaFormat(IntEnum):
    JPEG = 1
    WEBP = 2
    RGB24 = 3
    PCM_S16LE = 16


VIDEO_FORMATS = {"jpeg": MediaFormat.JPEG, "webp": MediaFormat.WEBP, "rgb24": MediaFormat.RGB24}
AUDIO_FORMATS = {"pcm_s16le": MediaFormat.PCM_S16LE}
FORMAT_NAMES = {v: k for k, v in {**VIDEO_FORMATS, **AUDIO_FORMATS}.items()}


@dataclass(frozen=True, slots=True)
class MediaHeader:
    kind: MediaKind
    format: MediaFormat
    frame_id: int
    pts: float | None
    width: int = 0        # audio: sample rate
    height: int = 0       # audio: channels
    flags: int = 0

    @property
    def format_name(self) -> str:
        return FORMAT_NAMES[self.format]

    def pack(self) -> bytes:
        pts = math.nan if self.pts is None else float(self.pts)
        return HEADER.pack(MAGIC, PROTOCOL_VERSION, self.kind, self.format, self.flags, 0,
                           self.frame_id, pts, self.width, self.height)


def pack_media(header: MediaHeader, payload: bytes) -> bytes:
    return header.pack() + payload


def unpack_media(message: bytes) -> tuple[MediaHeader, memoryview]:
    """Split a binary message into header and payload; StreamError(bad_header) names what is off."""
    if len(message) < HEADER_SIZE:
        raise StreamError(ErrorCode.BAD_HEADER, f"binary message of {len(message)} bytes is shorter than the {HEADER_SIZE}-byte header")
    magic, version, kind, fmt, flags, _reserved, frame_id, pts, width, height = HEADER.unpack_from(message)
    if magic != MAGIC:
        raise StreamError(ErrorCode.BAD_HEADER, f"header magic is {magic!r}, expected {MAGIC!r}")
    if version != PROTOCOL_VERSION:
        raise StreamError(ErrorCode.UNSUPPORTED_VERSION, f"media header version {version}; this server speaks {PROTOCOL_VERSION}")
    try:
        kind = MediaKind(kind)
    except ValueError:
        raise StreamError(ErrorCode.BAD_HEADER, f"unknown media kind {kind}; 1 is video, 2 is audio") from None
    try:
        fmt = MediaFormat(fmt)
    except ValueError:
        raise StreamError(ErrorCode.UNSUPPORTED_FORMAT, f"unknown media format {fmt}") from None
    header = MediaHeader(kind, fmt, frame_id, None if math.isnan(pts) else pts, width, height, flags)
    return header, memoryview(message)[HEADER_SIZE:]


# ---- control messages (JSON text) ---------------------------------------------------------


class SloSpec(BaseModel):
    """What a stream asks of the server: a frame rate, how late a frame may come back, and which
    quality knobs the server may turn down when it is short of compute. A session's rate or budget
    left out of its request takes its pipeline's default (`streaming.sessions.resolve_slo`); the
    defaults here stand for pipelines that declare none."""

    model_config = ConfigDict(extra="forbid")
    target_fps: float = Field(default=30.0, gt=0, le=240)
    latency_budget_ms: float = Field(default=500.0, gt=0, le=60_000)
    degrade: list[Literal["steps", "resolution", "chunk"]] = Field(
        default_factory=list, exclude_if=lambda knobs: not knobs,
        description="Quality the server may lower under load, in order of preference (fewer denoising steps, "
        "smaller pictures, longer video chunks), and raise again when load falls. Empty: never.")


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["jpeg", "webp", "rgb24"] = "jpeg"
    quality: int = Field(default=85, ge=1, le=100)


class StartMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["start"]
    version: int = PROTOCOL_VERSION
    request_id: str | None = None
    session_id: str | None = Field(None, description="Attach to a session created over REST instead of creating one.")
    pipeline: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    slo: SloSpec = Field(default_factory=SloSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    queue: bool = Field(False, description="When admission control has no room, wait in line (`queued` messages "
                        "with the position) instead of being refused with `busy`.")


class UpdateMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["update"]
    request_id: str = Field(min_length=1, max_length=200)
    params: dict[str, Any] = Field(default_factory=dict)
    slo: SloSpec | None = None


class StatsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["stats"]
    request_id: str | None = None


class StopMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["stop"]
    request_id: str | None = None


ControlMessage = StartMessage | UpdateMessage | StatsRequest | StopMessage
_MESSAGE_MODELS: dict[str, type[ControlMessage]] = {
    "start": StartMessage, "update": UpdateMessage, "stats": StatsRequest, "stop": StopMessage}


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in JSON text, read without parsing it (brackets inside
    strings do not count), so that too deep a text is refused before a parser recurses into it."""
    depth = deepest = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def load_json_object(text: str, what: str) -> dict[str, Any]:
    """`text` as a JSON object; StreamError(bad_json) when it is not one or nests deeper than MAX_JSON_DEPTH."""
    if json_depth(text) > MAX_JSON_DEPTH:
        raise StreamError(ErrorCode.BAD_JSON, f"{what} nests arrays and objects deeper than {MAX_JSON_DEPTH} levels")
    try:
        raw = json.loads(text)
    except ValueError as err:
        raise StreamError(ErrorCode.BAD_JSON, f"{what} is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise StreamError(ErrorCode.BAD_JSON, f"{what} must be a JSON object")
    return raw


def parse_control(text: str) -> ControlMessage:
    """A validated control message, or StreamError with the code a client can branch on."""
    raw = load_json_object(text, "control message")
    kind = raw.get("type")
    model = _MESSAGE_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise StreamError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind!r}; expected one of {', '.join(_MESSAGE_MODELS)}")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise StreamError(ErrorCode.BAD_MESSAGE, f"{kind}: {where}: {first['msg']}", field=where or None) from None


def request_id_of(text: str) -> str | None:
    """Best-effort request id of a message that failed to parse, so its error can be matched."""
    try:
        raw = load_json_object(text, "control message")
    except StreamError:
        return None
    rid = raw.get("request_id")
    return rid if isinstance(rid, str) else None
