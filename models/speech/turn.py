"""End of turn from the voice itself: Smart Turn v3.2, the ONNX file inside `pipecat-ai` (BSD-2).

Silence alone cannot tell "Paris," from "Paris.": a hangover long enough not to cut people off
at a comma (0.5 s) is most of a turn's latency. Smart Turn reads the last 8 seconds of the
user's audio (a Whisper-tiny encoder and a classifier over its log-mel features) and says how
likely the turn is complete, so a short hangover can end the turn when it is and a long one
waits when it is not (the relay's turn detector). About 50 ms on one thread here.

Only the ONNX file is used, found by path: `pipecat-ai` is installed without its dependencies
(it would bring a whole voice-agent framework), and its package is never imported. The features
are computed as its reference (transformers' WhisperFeatureExtractor, chunk_length 8) computes
them: the 8-second window zero-padded at its start, normalised to zero mean and unit variance,
80 log-mel bins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

RATE = 16000
WINDOW_S = 8


class TurnModel(Protocol):
    def probability(self, audio16k: np.ndarray) -> float:
        """P(the speaker has finished their turn), from their audio up to now."""


class SmartTurn:
    def __init__(self, onnx_path: Path, threads: int = 1):
        import onnxruntime
        from faster_whisper.feature_extractor import FeatureExtractor

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._features = FeatureExtractor(feature_size=80, chunk_length=WINDOW_S)

    def features(self, audio16k: np.ndarray) -> np.ndarray:
        """(80, 800) log-mel features of the last 8 s, as the model was trained on them."""
        size = WINDOW_S * RATE
        audio = np.asarray(audio16k[-size:], np.float32)
        audio = np.concatenate([np.zeros(size - audio.size, np.float32), audio])
        audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
        # faster-whisper pads 160 samples at the end and drops the last frame, as Whisper's reference does.
        return self._features(audio, padding=0)[:, : size // 160].astype(np.float32)

    def probability(self, audio16k: np.ndarray) -> float:
        out = self._session.run(None, {self._input: self.features(audio16k)[None]})[0]
        return float(np.asarray(out).reshape(-1)[0])
