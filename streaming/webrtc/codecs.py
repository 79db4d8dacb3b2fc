"""Video codecs and bitrates: what an offer must carry for us to decode it, and how many bits
the encoders of generated video start with.

aiortc decodes and encodes VP8 and H.264 (packetization-mode 1, baseline or constrained
baseline in the SDP; the stream itself may use any profile its decoder reads). Nothing else:
an encoder set to HEVC or AV1 (OBS offers both) has to switch to H.264.
"""

from __future__ import annotations

from aiortc import sdp
from aiortc.codecs import h264, vpx

from streaming.errors import ErrorCode, StreamError

SUPPORTED = {"video": "VP8 or H.264", "audio": "Opus, G.722, PCMU or PCMA"}
_NOT_MEDIA = {"rtx", "red", "ulpfec", "flexfec-03"}

# Generated pictures are detailed everywhere, so they get more bits per pixel than camera
# footage usually does: 512x512 at 30 fps starts near 1.2 Mbit/s, 1280x720 near 4 Mbit/s.
# aiortc's own defaults (VP8 0.5, H.264 1 Mbit/s) smear both. REMB feedback from the receiver
# then moves the rate within the bounds.
BITS_PER_PIXEL = 0.15
VP8_BOUNDS = (300_000, 5_000_000)
H264_BOUNDS = (500_000, 6_000_000)


def offered_codecs(description: sdp.SessionDescription) -> dict[str, list[str]]:
    """Codec names per media kind in a parsed SDP offer, in the offer's order (retransmission and
    error-correction formats left out)."""
    codecs: dict[str, list[str]] = {}
    for media in description.media:
        if media.kind in SUPPORTED:
            names = [c.name for c in media.rtp.codecs if c.name.lower() not in _NOT_MEDIA]
            codecs.setdefault(media.kind, []).extend(n for n in names if n not in codecs.get(media.kind, []))
    return codecs


def unsupported_offer(description: sdp.SessionDescription, kind: str) -> StreamError:
    """The refusal (unsupported_format, 422) of an offer whose `kind` section has no codec aiortc
    handles: what was offered and what to change."""
    names = offered_codecs(description).get(kind) or ["none"]
    message = f"the offer's {kind} codecs ({', '.join(names)}) are none this server decodes; send {SUPPORTED[kind]}"
    if kind == "video":
        message += (". In OBS: Settings > Output > Output Mode: Advanced > Streaming > Video Encoder: x264 "
                    "(or NVENC/QuickSync/AMF H.264), not HEVC or AV1")
    return StreamError(ErrorCode.UNSUPPORTED_FORMAT, message, field="sdp")


def configure_encoder_bounds() -> None:
    """Let the encoders' rate go as high as 720p needs (aiortc caps VP8 at 1.5 Mbit/s)."""
    vpx.MIN_BITRATE, vpx.MAX_BITRATE = VP8_BOUNDS
    h264.MIN_BITRATE, h264.MAX_BITRATE = H264_BOUNDS


def start_bitrate(width: int, height: int, fps: float, bounds: tuple[int, int]) -> int:
    low, high = bounds
    return max(low, min(high, round(width * height * fps * BITS_PER_PIXEL)))


def use_start_bitrate(width: int, height: int, fps: float) -> None:
    """Set the rate the next video encoder starts at, sized for the frames it will get.

    aiortc builds a sender's encoder right after its track returns the first frame, from the
    codec module's DEFAULT_BITRATE and without an await in between, so a track that calls this
    just before returning its first frame sizes its own encoder.
    """
    vpx.DEFAULT_BITRATE = start_bitrate(width, height, fps, VP8_BOUNDS)
    h264.DEFAULT_BITRATE = start_bitrate(width, height, fps, H264_BOUNDS)
