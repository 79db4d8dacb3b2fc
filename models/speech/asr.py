"""Speech to text: Whisper through faster-whisper (CTranslate2), int8 on CPU.

The fast path asks for a greedy transcript (beam 1) of the audio heard so far; the slow path asks
for a beam-search transcript of the finished utterance. Both come with Whisper's own confidence,
which the prefix verifier reads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Transcript:
    text: str
    avg_logprob: float = 0.0     # mean token log-probability over the segments (0: certain)
    no_speech_prob: float = 0.0  # Whisper's probability that the audio holds no speech
    audio_s: float = 0.0         # seconds of audio transcribed
    seconds: float = 0.0         # wall time it took


class Transcriber(Protocol):
    def transcribe(self, audio16k: np.ndarray, beam_size: int = 1) -> Transcript: ...


class WhisperTranscriber:
    """One CTranslate2 Whisper model serving `workers` calls at once: a streaming partial still
    running must not hold up the fast path's transcript behind it."""

    def __init__(self, model_dir: Path | str, threads: int = 2, compute_type: str = "int8", device: str = "cpu", workers: int = 2):
        from faster_whisper import WhisperModel

        self._model = WhisperModel(str(model_dir), device=device, compute_type=compute_type, cpu_threads=threads,
                                   num_workers=workers, local_files_only=True)

    def transcribe(self, audio16k: np.ndarray, beam_size: int = 1) -> Transcript:
        started = time.perf_counter()
        segments, _ = self._model.transcribe(
            audio16k.astype(np.float32, copy=False), language="en", beam_size=beam_size, condition_on_previous_text=False,
            without_timestamps=True, vad_filter=False)
        segments = list(segments)  # decoding happens while iterating
        words = sum((len(s.text.split()) for s in segments), 0)
        # Whisper scores each segment; weigh them by their length in words.
        avg = sum(s.avg_logprob * max(1, len(s.text.split())) for s in segments) / max(1, words) if segments else 0.0
        no_speech = max((s.no_speech_prob for s in segments), default=1.0)
        return Transcript(" ".join(s.text.strip() for s in segments).strip(), float(avg), float(no_speech),
                          audio16k.size / 16000, time.perf_counter() - started)
