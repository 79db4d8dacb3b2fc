"""Sample conversions shared by the speech components: mono float32 and streaming resampling."""

from __future__ import annotations

import av
import numpy as np

ASR_RATE = 16000  # what the VAD and Whisper take


def mono_float(samples: np.ndarray) -> np.ndarray:
    """(frames, channels) int16 -> (frames,) float32 in [-1, 1], channels averaged."""
    return (samples.astype(np.float32).mean(axis=1) / 32768.0).astype(np.float32)


def to_int16(audio: np.ndarray) -> np.ndarray:
    """(frames,) float32 in [-1, 1] -> (frames,) int16, clipped."""
    return np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)


class StreamResampler:
    """Mono float32 from one rate to another, across chunk boundaries (libswresample keeps the
    filter state, so consecutive chunks join without clicks)."""

    def __init__(self, source_rate: int, target_rate: int):
        self.source_rate = source_rate
        self.target_rate = target_rate
        self._resampler = None if source_rate == target_rate else av.AudioResampler(format="flt", layout="mono", rate=target_rate)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        if self._resampler is None or audio.size == 0:
            return audio.astype(np.float32, copy=False)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio, dtype=np.float32)[None], format="flt", layout="mono")
        frame.sample_rate = self.source_rate
        return _joined(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        """The samples still inside the filter (at the end of a stream or utterance)."""
        return np.zeros(0, np.float32) if self._resampler is None else _joined(self._resampler.resample(None))


def resample(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """A whole clip at another rate."""
    resampler = StreamResampler(source_rate, target_rate)
    return np.concatenate([resampler(audio), resampler.flush()])


def _joined(frames) -> np.ndarray:
    parts = [f.to_ndarray().reshape(-1) for f in frames]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)
