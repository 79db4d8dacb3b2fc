"""Small media files for tests, made with PyAV at test time (nothing is committed), and a way to
read back what a file holds."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def moving_picture(index: int, width: int, height: int) -> np.ndarray:
    """An RGB test picture that changes every frame: a gradient with a bright bar moving across."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                      np.full_like(x, (index * 37) % 256)], axis=-1).astype(np.uint8)
    bar = (index * 5) % width
    image[:, bar:bar + 4] = 255
    return image


def noisy_tone(seconds: float, rate: int = 48000, hz: float = 440.0, seed: int = 0) -> np.ndarray:
    """A mono sine with a little noise (detectors must not cheat on exact zeros), float32 in [-1, 1]."""
    t = np.arange(round(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0.0, 0.02, t.shape)
    return (0.3 * np.sin(2 * np.pi * hz * t) + noise).astype(np.float32)


def make_clip(path: Path, *, width: int = 96, height: int = 64, frames: int = 12, fps: int | Fraction = 12,
              frame_times: list[float] | None = None, display_rotation: int = 0, video_codec: str = "libx264",
              audio_codec: str | None = "aac", audio_rate: int = 48000) -> Path:
    """Write a short clip: moving pictures and, when `audio_codec` is given, a noisy tone as long as the video.

    Frames are `1/fps` apart, or at `frame_times` (seconds, for variable frame rate; `frames` is
    then their count and the last one lasts 1/fps). `display_rotation` (counter-clockwise
    degrees) tags the stream the way phones tag portrait video stored sideways.
    """
    period = 1 / Fraction(fps)
    if frame_times is None:
        time_base, ticks = period, list(range(frames))
    else:
        time_base, ticks = Fraction(1, 1000), [round(t * 1000) for t in frame_times]
    duration = ticks[-1] * time_base + period if ticks else 0
    with av.open(str(path), "w") as container:
        video = container.add_stream(video_codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.time_base = time_base
        if display_rotation:
            video.set_display_rotation(display_rotation)
        if audio_codec is not None:
            write_tone(container, container.add_stream(audio_codec, rate=audio_rate, layout="mono"), duration)
        for index, tick in enumerate(ticks):
            frame = av.VideoFrame.from_ndarray(moving_picture(index, width, height), format="rgb24")
            frame.pts, frame.time_base = tick, time_base
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
    return path


def make_tone_file(path: Path, seconds: float = 1.0, codec: str = "pcm_s16le", rate: int = 48000) -> Path:
    """An audio-only file (e.g. .wav): something that is media but not video."""
    with av.open(str(path), "w") as container:
        write_tone(container, container.add_stream(codec, rate=rate, layout="mono"), seconds)
    return path


def write_tone(container: av.container.OutputContainer, stream: av.AudioStream, seconds: float) -> None:
    """Encode `seconds` of noisy tone into `stream` (the container interleaves it with the rest)."""
    rate = stream.codec_context.sample_rate
    samples = noisy_tone(seconds, rate)
    for start in range(0, len(samples), 1024):
        frame = av.AudioFrame.from_ndarray(samples[np.newaxis, start:start + 1024], format="flt", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


@dataclass
class MediaSummary:
    """What a file holds, measured by decoding it."""

    frames: list[np.ndarray]
    frame_times: list[float]
    frame_rate: Fraction | None
    video_codec: str
    video_duration: float
    audio_codec: str | None
    audio_duration: float | None

    @property
    def frame_count(self) -> int:
        return len(self.frames)


def read_media(path: Path) -> MediaSummary:
    """Decode every video frame (RGB) and measure the audio by its decoded samples."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames, times = [], []
        for frame in container.decode(video):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(frame.time)
        frame_rate = video.average_rate
        period = float(1 / frame_rate) if frame_rate else 0.0
        video_duration = (times[-1] - times[0] + period) if times else 0.0
        video_codec = video.codec_context.name
    audio_codec = audio_duration = None
    with av.open(str(path)) as container:
        if container.streams.audio:
            audio = container.streams.audio[0]
            audio_codec = audio.codec_context.name
            samples = sum(frame.samples for frame in container.decode(audio))
            audio_duration = samples / audio.rate
    return MediaSummary(frames, times, frame_rate, video_codec, video_duration, audio_codec, audio_duration)
