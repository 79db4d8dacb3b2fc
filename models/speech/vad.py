"""Voice activity: Silero VAD v6 through onnxruntime, one recurrent state per stream.

The ONNX model is shared by every stream; what belongs to one stream (LSTM state, the last 64
samples of context, samples short of a whole window) lives in its `VadStream`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

import numpy as np

WINDOW = 512    # samples at 16 kHz: 32 ms, the model's step
_CONTEXT = 64   # samples of the previous window the model sees before each window


class VoiceActivity(Protocol):
    """Speech probability per 32 ms window of 16 kHz audio, for one stream: all the relay asks of
    its voice activity detector (a `VadStream` here, a loudness gate in the tests)."""

    def __call__(self, audio16k: np.ndarray) -> np.ndarray:
        """Probabilities of the whole windows completed by `audio16k` (samples short of a window wait)."""


class SileroVad:
    def __init__(self, onnx_path: Path):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # a 32 ms window is far too small to share out
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"], sess_options=options)
        self._lock = threading.Lock()

    def stream(self) -> VadStream:
        return VadStream(self)

    def run(self, windows: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n, 64 + 512) windows with context, in order, through the recurrent model."""
        with self._lock:
            out, h, c = self._session.run(None, {"input": windows, "h": h, "c": c})
        return np.asarray(out, np.float32).reshape(-1), h, c


class VadStream:
    def __init__(self, model: SileroVad):
        self._model = model
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(_CONTEXT, np.float32)
        self._pending = np.zeros(0, np.float32)

    def __call__(self, audio16k: np.ndarray) -> np.ndarray:
        audio = np.concatenate([self._pending, audio16k.astype(np.float32, copy=False)])
        count = audio.size // WINDOW
        self._pending = audio[count * WINDOW:]
        if count == 0:
            return np.zeros(0, np.float32)
        windows = audio[: count * WINDOW].reshape(count, WINDOW)
        contexts = np.concatenate([self._context[None], windows[:-1, -_CONTEXT:]])
        self._context = windows[-1, -_CONTEXT:].copy()
        probabilities, self._h, self._c = self._model.run(np.concatenate([contexts, windows], axis=1), self._h, self._c)
        return probabilities
