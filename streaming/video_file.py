"""Video files in and out with PyAV: the file side of offline rendering.

`VideoFileReader` decodes a file's first video stream into `VideoFrame`s (RGB, pts in seconds).
`VideoFileWriter` encodes frames back with the timing they carry and copies a source file's
audio along, interleaved by time. A written file appears at its path only once it is complete:
the writer works on a hidden temporary file next to it and renames it at the end, so a failed or
interrupted render never leaves a partial file behind.
"""

from __future__ import annotations

import itertools
import math
import os
import secrets
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np

from streaming.frames import VideoFrame

# Used when a file does not say its frame rate.
FALLBACK_FRAME_RATE = Fraction(24)


class MediaFileError(Exception):
    """A media file cannot be read or written; the message names the file and says why."""


class NoAudioError(MediaFileError):
    """Audio was asked for in a container that has no place for it (GIF)."""


@dataclass(frozen=True)
class VideoFileInfo:
    """What a file says about its first video stream. `width` and `height` are the upright
    picture's, as a player shows it. `frame_count` and `duration` may be estimates (containers
    do not always store them) and are None when nothing tells them."""

    width: int
    height: int
    frame_rate: Fraction
    time_base: Fraction
    frame_count: int | None
    duration: float | None
    has_audio: bool
    rotation: int = 0
    """Counter-clockwise degrees (a multiple of 90) the reader turns each picture to make it
    upright: phones store portrait video sideways with a display rotation."""


class VideoFileReader:
    """Decodes the first video stream of a file into upright RGB frames.

    Opening decodes the first frame, so a file that cannot give a single picture is refused
    before any other work starts.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.exists():
            raise MediaFileError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise MediaFileError(f"{self.path}: is a directory, not a video file")
        try:
            self._container = av.open(str(self.path))
        except (av.FFmpegError, OSError) as err:
            raise MediaFileError(f"{self.path}: not a readable media file ({_reason(err)})") from None
        try:
            if not self._container.streams.video:
                raise MediaFileError(f"{self.path}: has no video stream")
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "AUTO"
            self._decoded = self._decode()
            first = next(self._decoded, None)
            if first is None:
                raise MediaFileError(f"{self.path}: has no video frames")
            self._first = first
            self.info = self._describe(first)
        except BaseException:
            self.close()
            raise

    def _decode(self) -> Iterator[av.VideoFrame]:
        try:
            yield from self._container.decode(self._stream)
        except av.FFmpegError as err:
            raise MediaFileError(f"{self.path}: decoding failed ({_reason(err)})") from None

    def _describe(self, first: av.VideoFrame) -> VideoFileInfo:
        stream, container = self._stream, self._container
        rate = stream.average_rate or stream.guessed_rate or FALLBACK_FRAME_RATE
        time_base = stream.time_base or 1 / rate
        if stream.duration:
            duration = float(stream.duration * time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        else:
            duration = None
        frame_count = stream.frames or (round(duration * rate) if duration else None)
        rotation = first.rotation if first.rotation % 90 == 0 else 0
        sideways = rotation % 180 != 0
        return VideoFileInfo(
            width=first.height if sideways else first.width,
            height=first.width if sideways else first.height,
            frame_rate=Fraction(rate),
            time_base=Fraction(time_base),
            frame_count=frame_count,
            duration=duration,
            has_audio=bool(container.streams.audio),
            rotation=rotation,
        )

    def frames(self, width: int, height: int) -> Iterator[VideoFrame]:
        """Every decoded frame, upright, scaled to width x height, numbered from 0, pts in seconds.

        The file is decoded once: iterate this once."""
        turns = self.info.rotation // 90
        stored_width, stored_height = (height, width) if turns % 2 else (width, height)
        period = float(1 / self.info.frame_rate)
        pts: float | None = None
        for index, decoded in enumerate(itertools.chain([self._first], self._decoded)):
            # Frames without a timestamp follow the previous one by one frame period.
            pts = decoded.time if decoded.time is not None else (0.0 if pts is None else pts + period)
            image: np.ndarray = decoded.to_ndarray(format="rgb24", width=stored_width, height=stored_height)
            if turns:
                image = np.ascontiguousarray(np.rot90(image, turns))
            yield VideoFrame(image, index, pts)

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoFileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resample_frame_rate(frames: Iterator[VideoFrame], rate: Fraction, duration: float | None = None) -> Iterator[VideoFrame]:
    """Frames on a regular grid of `rate` per second from frames with any timing, keeping the duration.

    Each grid time shows the latest input frame at or before it, so a lower rate skips inputs
    and a higher one repeats them. `duration` (the file's, counted from the first frame) says
    when the last frame stops showing; without it the last frame lasts one grid period.
    """
    period = 1 / rate
    index = 0
    start = 0.0
    current: VideoFrame | None = None
    for frame in frames:
        if current is None:
            start = frame.pts or 0.0
        else:
            index = yield from _fill_grid(current, start, period, index, until=_timed(frame))
        current = frame
    if current is not None:
        end = start + duration if duration else -math.inf
        until = end if end > _timed(current) else float(start + (index + 1) * period)
        yield from _fill_grid(current, start, period, index, until)


def _timed(frame: VideoFrame) -> float:
    """The pts of a frame placed on the grid (VideoFileReader gives every frame one)."""
    assert frame.pts is not None, f"frame {frame.frame_id} has no pts to resample it by"
    return frame.pts


def _fill_grid(frame: VideoFrame, start: float, period: Fraction, index: int, until: float) -> Generator[VideoFrame, None, int]:
    """Copies of `frame` at the grid times before `until`, numbered on from `index`; returns the next index."""
    while float(start + index * period) < until - 1e-9:
        yield VideoFrame(frame.image, index, float(start + index * period), frame.stream_id, dict(frame.timestamps))
        index += 1
    return index


class VideoFileWriter:
    """Encodes RGB frames into a file with their own timestamps, plus another file's audio.

    The video codec is H.264 (yuv420p) when the container takes it, else the container's usual
    codec (VP9 for WebM). The picture size is set by the first frame. Audio from `audio_from` is
    copied packet for packet when the container accepts its codec, else re-encoded to the
    container's usual audio codec. Use as a context manager: leaving on an exception aborts.
    """

    def __init__(self, path: Path, *, frame_rate: Fraction, time_base: Fraction,
                 audio_from: Path | None = None, crf: int | None = None):
        self.path = Path(path)
        self._frame_rate = Fraction(frame_rate)
        self._time_base = Fraction(time_base)
        self._crf = crf
        self._video: av.VideoStream | None = None
        self._last_pts: int | None = None
        self.frames_written = 0
        directory = self.path.parent
        if not directory.is_dir():
            raise MediaFileError(f"{self.path}: the folder {directory} does not exist")
        # Hidden, unique, and with the final extension so the container is guessed the same way;
        # created with the usual permissions (umask), unlike mkstemp's owner-only file.
        self._temp = directory / f".{self.path.stem}.{secrets.token_hex(4)}.partial{self.path.suffix}"
        try:
            os.close(os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except OSError as err:
            raise MediaFileError(f"{self.path}: cannot write there ({_reason(err)})") from None
        try:
            self._container = av.open(str(self._temp), "w")
        except ValueError:
            self._temp.unlink(missing_ok=True)
            raise MediaFileError(f"{self.path}: unknown container for {self.path.suffix or 'a name without extension'!r}; "
                                 "use .mp4, .mkv, .mov or .webm") from None
        except (av.FFmpegError, OSError) as err:
            self._temp.unlink(missing_ok=True)
            raise MediaFileError(f"{self.path}: cannot write there ({_reason(err)})") from None
        self._audio = None
        if audio_from is not None:
            try:
                self._audio = _AudioCopy(Path(audio_from), self._container)
            except BaseException as err:
                self.abort()
                if isinstance(err, MediaFileError):
                    raise type(err)(f"{self.path}: {err}") from None
                raise

    @property
    def audio_codec(self) -> str | None:
        """The output's audio codec, None when there is no audio."""
        return self._audio.codec if self._audio is not None else None

    def write(self, image: np.ndarray, pts: float) -> None:
        """Encode one (height, width, 3) uint8 RGB picture shown from `pts` seconds on."""
        if self._video is None:
            self._video = self._add_video_stream(width=image.shape[1], height=image.shape[0])
            if self._audio is not None:
                self._audio.add_stream()  # after the video, so the video is the first stream
        ticks = round(pts / self._time_base)
        if self._last_pts is not None and ticks <= self._last_pts:
            ticks = self._last_pts + 1  # encoders refuse repeated timestamps; keep the order
        self._last_pts = ticks
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = ticks
        frame.time_base = self._time_base
        try:
            self._container.mux(self._video.encode(frame))
            if self._audio is not None:
                self._audio.mux_until(pts)
        except av.FFmpegError as err:
            raise MediaFileError(f"{self.path}: writing failed ({_reason(err)})") from None
        self.frames_written += 1

    def _add_video_stream(self, width: int, height: int) -> av.VideoStream:
        container = self._container
        # MPEG-TS carries H.264 although FFmpeg does not list it among the TS codecs.
        takes_h264 = "h264" in container.supported_codecs or container.format.name == "mpegts"
        codec = "h264" if takes_h264 else container.default_video_codec
        stream = container.add_stream(codec, rate=self._frame_rate)
        assert isinstance(stream, av.VideoStream)  # a video codec; PyAV's stubs give a str codec name any kind of stream
        formats = [f.name for f in stream.codec_context.codec.video_formats or []]
        stream.pix_fmt = "yuv420p" if not formats or "yuv420p" in formats else formats[0]
        if stream.pix_fmt == "yuv420p" and (width % 2 or height % 2):
            raise MediaFileError(f"{self.path}: {stream.codec_context.codec.name} needs an even width and height, got {width}x{height}")
        stream.width, stream.height = width, height
        stream.codec_context.time_base = self._time_base
        stream.time_base = self._time_base
        if self._crf is not None and stream.codec_context.codec.name in ("libx264", "libx265", "libvpx-vp9"):
            # VP9 follows crf only with the bitrate target switched off.
            stream.options = {"crf": str(self._crf), **({"b": "0"} if "vpx" in stream.codec_context.codec.name else {})}
        return stream

    def close(self) -> None:
        """Flush the encoders, finish the file and move it to its final name."""
        try:
            if self._video is None:
                raise MediaFileError(f"{self.path}: no frames to write")
            self._container.mux(self._video.encode(None))
            if self._audio is not None:
                self._audio.finish()
            self._container.close()
        except av.FFmpegError as err:
            self.abort()
            raise MediaFileError(f"{self.path}: writing failed ({_reason(err)})") from None
        except BaseException:
            self.abort()
            raise
        os.replace(self._temp, self.path)

    def abort(self) -> None:
        """Stop and remove the unfinished file; the final path is left as it was."""
        for closable in (self._audio, self._container):
            try:
                if closable is not None:
                    closable.close()
            except (av.FFmpegError, OSError):
                pass  # the file is being thrown away
        self._temp.unlink(missing_ok=True)

    def __enter__(self) -> VideoFileWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _AudioCopy:
    """Carries a source file's first audio stream into an output container, in time order.

    Reads the source on its own (a second demuxer), so the video side never has to hand audio
    packets over; `mux_until` keeps the audio level with the video written so far, which keeps
    the file interleaved.
    """

    def __init__(self, source: Path, output: av.container.OutputContainer):
        self._output = output
        self._reencode = False
        if output.default_audio_codec == "none":
            raise NoAudioError(f"the {output.format.name} container cannot hold audio")
        self._input = av.open(str(source))
        self._source_stream = self._input.streams.audio[0]
        source_codec = self._source_stream.codec_context.name
        self._reencode = source_codec not in output.supported_codecs
        self.codec = output.default_audio_codec if self._reencode else source_codec
        self._stream: av.AudioStream | None = None
        self._packets = (p for p in self._input.demux(self._source_stream) if p.dts is not None)
        self._next = next(self._packets, None)

    def add_stream(self) -> None:
        if self._reencode:
            source = self._source_stream
            stream = self._output.add_stream(self.codec, rate=source.rate, layout=source.layout.name)
            assert isinstance(stream, av.AudioStream)  # an audio codec; PyAV's stubs give a str codec name any kind of stream
            self._stream = stream
        else:
            self._stream = self._output.add_stream_from_template(self._source_stream)

    @property
    def _stream_added(self) -> av.AudioStream:
        """The output stream: VideoFileWriter adds it with the first frame, before any audio is written."""
        assert self._stream is not None, "audio written before add_stream()"
        return self._stream

    def mux_until(self, seconds: float) -> None:
        """Write the audio packets that start before `seconds`."""
        while self._next is not None and _packet_time(self._next) < seconds:
            self._mux(self._next)
            self._next = next(self._packets, None)

    def finish(self) -> None:
        """Write the rest of the audio (it may run past the last video frame) and flush."""
        self.mux_until(math.inf)
        if self._reencode:
            stream = self._stream_added
            for frame in self._source_stream.codec_context.decode(None):
                self._output.mux(stream.encode(frame))
            self._output.mux(stream.encode(None))

    def _mux(self, packet: av.Packet[av.AudioStream]) -> None:
        if self._reencode:
            for frame in packet.decode():
                self._output.mux(self._stream_added.encode(frame))
        else:
            packet.stream = self._stream_added
            self._output.mux(packet)

    def close(self) -> None:
        self._input.close()


def _packet_time(packet: av.Packet) -> float:
    ts = packet.pts if packet.pts is not None else packet.dts
    assert ts is not None  # _AudioCopy keeps only packets with a dts
    return float(ts * packet.time_base)


def _reason(err: BaseException) -> str:
    """The useful part of an OS or FFmpeg error, on one line."""
    text = getattr(err, "strerror", None) or str(err)
    return " ".join(text.split())
