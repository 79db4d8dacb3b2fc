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
    running must not hold up the fast path's transcript behind it.

    An utterance is encoded in a window just longer than itself instead of Whisper's 30 s: the
    encoder's cost grows with the window (tiny.en on two cores: 0.81 s for 30 s, 0.21 s for 10 s)
    and was most of a turn's transcript time, while the text of a short utterance does not change
    (CTranslate2 takes windows under 3000 frames; Whisper degrades when the window is cut to the
    speech itself, so a margin of silence stays). Longer audio goes through faster-whisper's own
    30-second windows.
    """

    MIN_WINDOW_S = 10.0   # shortest window: below about this, Whisper starts to misread or loop
    MARGIN_S = 2.0        # silence kept after the speech inside the window
    TOKENS_PER_S = 8      # decoding budget (speech is about 3 tokens a second): stops a runaway loop

    def __init__(self, model_dir: Path | str, threads: int = 2, compute_type: str = "int8", device: str = "cpu", workers: int = 2):
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self._model = WhisperModel(str(model_dir), device=device, compute_type=compute_type, cpu_threads=threads,
                                   num_workers=workers, local_files_only=True)
        self._tokenizer = Tokenizer(self._model.hf_tokenizer, self._model.model.is_multilingual, task="transcribe", language="en")
        self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
        self._suppressed = list(get_suppressed_tokens(self._tokenizer, [-1]))
        extractor = self._model.feature_extractor
        self._frames_per_s = extractor.sampling_rate / extractor.hop_length
        self._longest_window_s = float(extractor.chunk_length)

    def transcribe(self, audio16k: np.ndarray, beam_size: int = 1) -> Transcript:
        started = time.perf_counter()
        audio = audio16k.astype(np.float32, copy=False)
        audio_s = audio.size / 16000
        window_s = max(self.MIN_WINDOW_S, audio_s + self.MARGIN_S)
        if window_s > self._longest_window_s:
            text, avg, no_speech = self._transcribe_long(audio, beam_size)
        else:
            text, avg, no_speech, tokens = self._transcribe_window(audio, window_s, beam_size)
            if ends_in_repeat(tokens):
                # A short window sometimes makes Whisper say the utterance twice; 30 s does not.
                text, avg, no_speech = self._transcribe_long(audio, beam_size)
        return Transcript(text, avg, no_speech, audio_s, time.perf_counter() - started)

    def _transcribe_window(self, audio: np.ndarray, window_s: float, beam_size: int) -> tuple[str, float, float, list[int]]:
        import ctranslate2

        features = self._model.feature_extractor(audio)
        frames = int(window_s * self._frames_per_s)
        # After the speech, silence: the log-mel floor, as Whisper's own padding of the audio gives.
        window = np.full((1, features.shape[0], frames), features.min(), np.float32)
        window[0, :, :min(frames, features.shape[1])] = features[:, :frames]
        encoded = self._model.model.encode(ctranslate2.StorageView.from_array(window))
        result = self._model.model.generate(
            encoded, [self._prompt], beam_size=beam_size, max_length=len(self._prompt) + int(self.TOKENS_PER_S * window_s),
            return_scores=True, return_no_speech_prob=True, suppress_blank=True, suppress_tokens=self._suppressed)[0]
        tokens = result.sequences_ids[0]
        # The score is the log-probability per token (length penalty 1); Whisper's average counts the end token too.
        avg = result.scores[0] * len(tokens) / (len(tokens) + 1)
        return self._tokenizer.decode(tokens).strip(), float(avg), float(result.no_speech_prob), tokens

    def _transcribe_long(self, audio: np.ndarray, beam_size: int) -> tuple[str, float, float]:
        segments, _ = self._model.transcribe(audio, language="en", beam_size=beam_size, condition_on_previous_text=False,
                                             without_timestamps=True, vad_filter=False)
        segments = list(segments)  # decoding happens while iterating
        words = sum((len(s.text.split()) for s in segments), 0)
        # Whisper scores each segment; weigh them by their length in words.
        avg = sum(s.avg_logprob * max(1, len(s.text.split())) for s in segments) / max(1, words) if segments else 0.0
        no_speech = max((s.no_speech_prob for s in segments), default=1.0)
        return " ".join(s.text.strip() for s in segments).strip(), float(avg), float(no_speech)


def ends_in_repeat(tokens: list[int], shortest: int = 3) -> bool:
    """Whether the transcript ends with a run of at least `shortest` tokens said twice in a row
    ("How do I boil an egg? How do I boil an egg?"): Whisper's looping, not something people say."""
    return any(tokens[-k:] == tokens[-2 * k:-k] for k in range(shortest, len(tokens) // 2 + 1))
