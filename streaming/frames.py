"""Media units that travel between transports, the scheduler and pipelines.

Every frame carries its identity (stream, frame id, capture pts) and a timestamp per stage it
passed, so latency metrics come from the frames themselves rather than from guesses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

# Stage names used in `VideoFrame.timestamps`, in the order a frame meets them.
STAGES = ("received", "queued", "started", "finished", "sent")


@dataclass(slots=True)
class VideoFrame:
    """One RGB picture with where it came from.

    `image` is (height, width, 3) uint8 RGB. `pts` is the capture time in seconds on the
    sender's clock (None when the sender gave none). `timestamps` maps a stage name to
    `time.monotonic()` on this machine.
    """

    image: np.ndarray
    frame_id: int
    pts: float | None = None
    stream_id: str = ""
    timestamps: dict[str, float] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    def stamp(self, stage: str, at: float | None = None) -> None:
        self.timestamps[stage] = time.monotonic() if at is None else at

    def with_image(self, image: np.ndarray) -> VideoFrame:
        """A frame generated from this one: same identity and timing so far, new pixels."""
        return VideoFrame(image, self.frame_id, self.pts, self.stream_id, dict(self.timestamps))


@dataclass(slots=True)
class AudioChunk:
    """A run of interleaved PCM samples with where it came from.

    `samples` is (frames, channels) int16. `pts` is the capture time of the first sample in
    seconds on the sender's clock. Audio is never dropped on the way, so chunks keep their order.
    """

    samples: np.ndarray
    sample_rate: int
    chunk_id: int
    pts: float | None = None
    stream_id: str = ""
    timestamps: dict[str, float] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration(self) -> float:
        return self.samples.shape[0] / self.sample_rate

    def stamp(self, stage: str, at: float | None = None) -> None:
        self.timestamps[stage] = time.monotonic() if at is None else at


@dataclass(slots=True)
class EncodedFrame:
    """A picture as it arrived, before decoding: the transport checked its header, a codec thread
    turns it into a VideoFrame. `format` is jpeg, webp or rgb24."""

    payload: bytes | memoryview
    format: str
    width: int
    height: int
    frame_id: int
    pts: float | None = None
    stream_id: str = ""
    timestamps: dict[str, float] = field(default_factory=dict)
