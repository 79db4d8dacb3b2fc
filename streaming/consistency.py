"""Temporal consistency of a video stream, measured live on a sample of its frames.

Flicker, and drift over long runs (StreamDiffusionV2's "blurry after 7-8 seconds", a consistency
metric asked for on comfystream), are what users of every streaming video generator complain
about, and none of them reports it while streaming. Every video stream here gets three measures,
taken on small copies (longer side `MEASURE_SIDE`) of one frame pair in `SAMPLE_EVERY` delivered
frames, on a background thread, so the compute thread only keeps references:

- warp error (video-to-video): output t against output t-1 warped by the optical flow of the
  *input* frames t-1 -> t (OpenCV's DIS flow, backward), occlusions masked where the
  forward and backward flows disagree (the consistency check of Sundaram et al. 2010); the mean
  squared RGB difference in [0, 1] over the unoccluded pixels (E_warp of Lai et al. 2018). The
  same measure of the input against itself is the floor the flow allows (`warp_error_input`).
- flicker: the frame-to-frame change of a 4x4 grid of mean colours (mean absolute difference in
  [0, 1]): moderate motion moves little of it, a flash or a colour pumping moves all of it. For
  video-to-video the input's flicker (its own lighting and motion) is given beside it.
- drift: the output's statistics over the last `WINDOW_S` seconds against its first
  `REFERENCE_S` seconds: mean colour shift, contrast ratio (grey standard deviation) and sharpness
  ratio (variance of the Laplacian; blur shows as a ratio below 1). The input's are given beside
  them when there is an input, so a scene that changed is told apart from a model that drifted.

The measures see frames only (input and output), never a pipeline's internals, so they serve
every video pipeline. `streaming.worker` notes the input a step takes and each delivered output;
`latentcast render --report` measures every frame inline and writes them per frame.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from statistics import fmean
from typing import Any

import numpy as np

from streaming.frames import VideoFrame

log = logging.getLogger(__name__)

SAMPLE_EVERY = 8      # one frame pair measured in this many delivered frames
MEASURE_SIDE = 128    # the longer side of the copies measured
GRID = 4              # flicker: the mean colours of a GRID x GRID grid
RECENT = 8            # warp error and flicker: the mean of the last RECENT samples
REFERENCE_S = 3.0     # drift: the first seconds of the stream ...
WINDOW_S = 3.0        # ... against the last seconds
MAX_INPUTS = 96       # inputs waiting for their output (the deepest rolling-KV pipe holds 79)
_MAX_SAMPLES = 256    # samples kept per window

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_flow_engines = threading.local()  # an optical flow object per thread (they keep buffers)


def _background() -> ThreadPoolExecutor:
    """One thread shared by every stream: a measurement never runs on the compute thread."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(1, thread_name_prefix="consistency")
            atexit.register(_executor.shutdown, wait=False, cancel_futures=True)
        return _executor


# ---- the measures --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameStatistics:
    """What drift compares: mean colour (RGB in [0, 1]), contrast (grey std), sharpness
    (variance of the Laplacian of grey in [0, 1])."""

    color: tuple[float, float, float]
    contrast: float
    sharpness: float


@dataclass(frozen=True)
class PairMeasures:
    warp_error: float | None         # None without inputs (text-to-video)
    warp_error_input: float | None
    flicker: float
    flicker_input: float | None


def measure_size(width: int, height: int, side: int = MEASURE_SIDE) -> tuple[int, int]:
    """(width, height) with the longer side `side` (never larger than the frame), aspect kept."""
    scale = min(1.0, side / max(width, height))
    return max(8, round(width * scale)), max(8, round(height * scale))


def small(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` (H, W, 3) uint8, centre-cropped to the aspect of `size` (as the pipelines crop
    their inputs) and resized to it: float32 RGB in [0, 1]."""
    import cv2

    h, w = image.shape[:2]
    width, height = size
    if w * height > h * width:
        crop = round(h * width / height)
        image = image[:, (w - crop) // 2 : (w - crop) // 2 + crop]
    elif w * height < h * width:
        crop = round(w * height / width)
        image = image[(h - crop) // 2 : (h - crop) // 2 + crop]
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _grey(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def statistics(rgb: np.ndarray) -> FrameStatistics:
    import cv2

    grey = _grey(rgb)
    mean = rgb.reshape(-1, 3).mean(axis=0)
    return FrameStatistics((float(mean[0]), float(mean[1]), float(mean[2])), float(grey.std()),
                           float(cv2.Laplacian(grey, cv2.CV_32F).var()))


def flicker(previous: np.ndarray, current: np.ndarray) -> float:
    import cv2

    a = cv2.resize(previous, (GRID, GRID), interpolation=cv2.INTER_AREA)
    b = cv2.resize(current, (GRID, GRID), interpolation=cv2.INTER_AREA)
    return float(np.abs(a - b).mean())


@dataclass(frozen=True)
class Flow:
    """Where each pixel of frame t was in frame t-1 (remap maps), and which pixels the forward
    and backward flows agree on (not occluded, not out of the picture)."""

    map_x: np.ndarray
    map_y: np.ndarray
    valid: np.ndarray


def _flow_engine() -> Any:
    """DIS optical flow, fast preset: about a millisecond at MEASURE_SIDE where Farnebäck takes
    five to seven, within a tenth of a pixel on smooth motion."""
    import cv2

    engine = getattr(_flow_engines, "dis", None)
    if engine is None:
        engine = _flow_engines.dis = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    return engine


def flow_between(previous: np.ndarray, current: np.ndarray) -> Flow:
    """Optical flow between two RGB frames in [0, 1], both ways, checked against each other."""
    import cv2

    a, b = (np.clip(_grey(x) * 255, 0, 255).astype(np.uint8) for x in (previous, current))
    engine = _flow_engine()
    backward = engine.calc(b, a, None)  # pixel of t -> its place in t-1
    forward = engine.calc(a, b, None)
    h, w = b.shape
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    bx, by = backward[..., 0], backward[..., 1]
    map_x, map_y = xs + bx, ys + by
    fx, fy = cv2.split(cv2.remap(forward, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
    # A round trip t -> t-1 -> t should come back where it started; where it does not, the
    # pixel is occluded or the flow is wrong (Sundaram et al.'s bound, as Ruder et al. use it).
    loop = (bx + fx) ** 2 + (by + fy) ** 2
    bound = 0.01 * (bx * bx + by * by + fx * fx + fy * fy) + 0.5
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    return Flow(map_x, map_y, (loop <= bound) & inside)


def warp_error(flow: Flow, previous: np.ndarray, current: np.ndarray) -> float | None:
    """Mean squared RGB difference between `current` and `previous` warped by `flow`, over the
    pixels the flow is valid on (None when it is valid nowhere)."""
    import cv2

    if not flow.valid.any():
        return None
    warped = cv2.remap(previous, flow.map_x, flow.map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    diff = cv2.absdiff(current, warped)
    per_channel = cv2.mean(cv2.multiply(diff, diff), mask=flow.valid.view(np.uint8))  # over the valid pixels
    return float(np.mean(per_channel[:3]))


def measure_pair(previous_output: np.ndarray, output: np.ndarray, previous_input: np.ndarray | None = None,
                 input_image: np.ndarray | None = None) -> tuple[PairMeasures, FrameStatistics, FrameStatistics | None]:
    """The measures of one consecutive pair of uint8 frames (inputs optional), and the
    statistics of the later output (and input)."""
    size = measure_size(output.shape[1], output.shape[0])
    out_prev, out_now = small(previous_output, size), small(output, size)
    if previous_input is None or input_image is None:
        return PairMeasures(None, None, flicker(out_prev, out_now), None), statistics(out_now), None
    in_prev, in_now = small(previous_input, size), small(input_image, size)
    flow = flow_between(in_prev, in_now)
    pair = PairMeasures(warp_error(flow, out_prev, out_now), warp_error(flow, in_prev, in_now),
                        flicker(out_prev, out_now), flicker(in_prev, in_now))
    return pair, statistics(out_now), statistics(in_now)


# ---- per stream ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One measured pair: the later frame's id and time (seconds, on the meter's clock)."""

    frame_id: int
    at: float
    pair: PairMeasures
    output: FrameStatistics
    input: FrameStatistics | None
    cost_s: float


class ConsistencyMeter:
    """The measures of one stream. `note_input` and `observe_output` are cheap (references and a
    counter); the measurement of a sampled pair runs on the shared background thread, at most one
    at a time per stream (a sample that finds the previous one still running is skipped, so a
    slow machine measures less, never later). `inline` measures on the caller's thread (render)."""

    def __init__(self, every: int = SAMPLE_EVERY, inline: bool = False, keep_all: bool = False):
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.every = every
        self.inline = inline
        self._lock = threading.Lock()
        self._inputs: dict[int, np.ndarray] = {}
        self._previous: tuple[np.ndarray, np.ndarray | None] | None = None
        self._delivered = 0
        self._busy = False
        self.skipped = 0
        self._first_at: float | None = None
        self._reference: list[Sample] = []
        self._recent: deque[Sample] = deque(maxlen=_MAX_SAMPLES)
        self.samples = 0
        self.history: list[Sample] | None = [] if keep_all else None  # every sample, for a per-frame report

    def note_input(self, frame: VideoFrame) -> None:
        """An input a step took: its picture is kept (a reference) until its output is delivered."""
        with self._lock:
            if self._inputs and frame.frame_id < next(reversed(self._inputs)):
                self._inputs.clear()  # the sender restarted its frame ids: the older ones are never coming
            self._inputs[frame.frame_id] = frame.image
            while len(self._inputs) > MAX_INPUTS:
                del self._inputs[next(iter(self._inputs))]

    def observe_output(self, frame: VideoFrame, at: float | None = None) -> None:
        """A delivered output (`at`: when, in seconds; now by default). Every `every`-th one is
        measured against the output delivered before it."""
        at = time.monotonic() if at is None else at
        with self._lock:
            source = self._inputs.pop(frame.frame_id, None)
            for older in [fid for fid in self._inputs if fid < frame.frame_id]:  # dropped, or never coming
                del self._inputs[older]
            previous, self._previous = self._previous, (frame.image, source)
            self._delivered += 1
            if previous is None or self._delivered % self.every:
                return
            if self._busy:
                self.skipped += 1
                return
            self._busy = True
        args = (frame.frame_id, at, previous, (frame.image, source))
        if self.inline:
            self._measure(*args)
        else:
            _background().submit(self._measure, *args)

    def _measure(self, frame_id: int, at: float, previous: tuple[np.ndarray, np.ndarray | None],
                 current: tuple[np.ndarray, np.ndarray | None]) -> None:
        started = time.perf_counter()
        try:
            has_input = previous[1] is not None and current[1] is not None
            pair, output, source = measure_pair(previous[0], current[0], *((previous[1], current[1]) if has_input else ()))
            sample = Sample(frame_id, at, pair, output, source, time.perf_counter() - started)
            with self._lock:
                self._add(sample)
        except Exception:
            if self.inline:
                raise
            log.warning("consistency measurement of frame %s failed", frame_id, exc_info=True)
        finally:
            with self._lock:
                self._busy = False

    def _add(self, sample: Sample) -> None:
        self.samples += 1
        if self._first_at is None:
            self._first_at = sample.at
        if sample.at - self._first_at <= REFERENCE_S and len(self._reference) < _MAX_SAMPLES:
            self._reference.append(sample)
        self._recent.append(sample)
        while self._recent and self._recent[0].at < sample.at - max(WINDOW_S, 1e-9) and len(self._recent) > RECENT:
            self._recent.popleft()
        if self.history is not None:
            self.history.append(sample)

    def snapshot(self) -> dict[str, Any]:
        """The `consistency` section of a stream's stats (docs/protocol.md)."""
        with self._lock:
            recent = list(self._recent)[-RECENT:]
            window = list(self._recent)
            reference = list(self._reference)
            first_at = self._first_at
            samples, skipped = self.samples, self.skipped

        def mean(values: list[float | None]) -> float | None:
            known = [v for v in values if v is not None]
            return round(fmean(known), 6) if known else None

        drift = None
        last = window[-1].at if window else None
        if first_at is not None and last is not None and last - first_at >= REFERENCE_S + WINDOW_S:
            current = [s for s in window if s.at >= last - WINDOW_S and s.at - first_at > REFERENCE_S] or window[-1:]
            drift = drift_between([s.output for s in reference], [s.output for s in current])
            ref_inputs = [s.input for s in reference if s.input is not None]
            now_inputs = [s.input for s in current if s.input is not None]
            if len(ref_inputs) == len(reference) and len(now_inputs) == len(current):
                drift["input"] = drift_between(ref_inputs, now_inputs)
        return {
            "every": self.every,
            "samples": samples,
            "skipped": skipped,
            "warp_error": mean([s.pair.warp_error for s in recent]),
            "warp_error_input": mean([s.pair.warp_error_input for s in recent]),
            "flicker": mean([s.pair.flicker for s in recent]),
            "flicker_input": mean([s.pair.flicker_input for s in recent]),
            "drift": drift,
            "cost_ms": None if not recent else round(1000 * fmean(s.cost_s for s in recent), 3),
        }


def drift_between(reference: list[FrameStatistics], current: list[FrameStatistics]) -> dict[str, Any]:
    """Colour shift (distance between mean RGB), contrast and sharpness ratios (current over reference)."""
    ref_color = np.mean([s.color for s in reference], axis=0)
    now_color = np.mean([s.color for s in current], axis=0)
    ref_contrast, now_contrast = fmean(s.contrast for s in reference), fmean(s.contrast for s in current)
    ref_sharp, now_sharp = fmean(s.sharpness for s in reference), fmean(s.sharpness for s in current)
    return {
        "color_shift": round(float(np.linalg.norm(now_color - ref_color)), 6),
        "contrast_ratio": round(now_contrast / ref_contrast, 4) if ref_contrast > 0 else None,
        "sharpness_ratio": round(now_sharp / ref_sharp, 4) if ref_sharp > 0 else None,
    }
