"""Speech to text: Whisper through faster-whisper (CTranslate2), int8 on CPU.

The relay asks for a greedy transcript (beam 1) at the user's first pause, and that transcript
is the turn's final one: a second, beam-search pass would cost as much again for the same words
on our test questions. Partial transcripts during speech are greedy too. Each comes with
Whisper's own confidence, which the prefix verifier reads.
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
    def transcribe(self, audio16k: np.ndarray, beam_size: int = 1, features: np.ndarray | None = None) -> Transcript:
        """`features`: the audio's log-mel frames if already computed (a `LogMelStream`'s)."""

    def log_mel_stream(self) -> LogMelStream | None:
        """A feature stream for an utterance being spoken, or None if this recognizer takes none."""


class LogMelStream:
    """Whisper's log-mel features of an utterance, computed while it is spoken.

    The features of a whole utterance cost a few milliseconds more on the critical path at the
    pause; frame by frame as the audio arrives they cost nothing there. A frame (400 samples,
    hop 160, centred) is final once the audio 200 samples past its centre has arrived; at the
    end only the last few frames, which see the end's padding, are computed, and the whole is
    scaled as Whisper scales it (a floor 8 below the loudest frame). The result equals
    faster-whisper's extractor on the same audio.
    """

    HOP, FFT = 160, 400

    def __init__(self, mel_filters: np.ndarray):
        self._filters = mel_filters
        self._window = np.hanning(self.FFT + 1)[:-1].astype(np.float32)
        self._padded = np.zeros(16000, np.float32)   # reflected start (200 samples), then the audio
        self._size = 0                                # samples of audio held
        self._frames = np.zeros((mel_filters.shape[0], 0), np.float32)   # log10 mel of the final frames

    def push(self, audio16k: np.ndarray) -> None:
        half = self.FFT // 2
        end = half + self._size + audio16k.size
        if end > self._padded.size:
            self._padded = np.concatenate([self._padded, np.zeros(max(end, 2 * self._padded.size) - self._padded.size, np.float32)])
        self._padded[half + self._size:end] = audio16k
        before = self._size
        self._size += audio16k.size
        if before <= half < self._size:
            self._padded[:half] = self._padded[2 * half:half:-1]   # numpy's "reflect" padding of the start
        if self._size > half:
            final = (self._size - half) // self.HOP + 1   # frames whose samples have all arrived
            if final > self._frames.shape[1]:
                self._frames = np.concatenate([self._frames, self._log_mel(self._padded, self._frames.shape[1], final)], axis=1)

    def _log_mel(self, padded: np.ndarray, first: int, last: int) -> np.ndarray:
        frames = np.lib.stride_tricks.sliding_window_view(padded[first * self.HOP:(last - 1) * self.HOP + self.FFT], self.FFT)[::self.HOP]
        power = np.abs(np.fft.rfft(frames * self._window, axis=-1).astype(np.complex64)) ** 2
        return np.log10(np.clip(self._filters @ power.T, 1e-10, None)).astype(np.float32)

    def features(self, samples: int) -> np.ndarray | None:
        """Features of the first `samples` samples, scaled, as Whisper reads them; None if fewer
        samples than that have arrived."""
        if samples > self._size or samples <= self.FFT // 2:
            return None
        half = self.FFT // 2
        count = (samples + self.HOP) // self.HOP                 # frames of the audio plus the 160 samples of padding after it
        kept = min(self._frames.shape[1], (samples - half) // self.HOP + 1)
        tail = np.concatenate([self._padded[:half + samples], np.zeros(self.HOP, np.float32)])
        tail = np.concatenate([tail, tail[-2:-half - 2:-1]])     # the end's reflection
        log = np.concatenate([self._frames[:, :kept], self._log_mel(tail, kept, count)], axis=1) if kept < count else self._frames[:, :count]
        log = np.maximum(log, log.max() - 8.0)
        return (log + 4.0) / 4.0


class WhisperTranscriber:
    """One CTranslate2 Whisper model; the relay calls it from one thread (its lane), critical
    calls first.

    An utterance is encoded in a window just longer than itself (a second of silence after it)
    instead of Whisper's 30 s: the encoder's cost grows with the window (tiny.en: 0.81 s for 30 s,
    0.11 s for 10 s) while the text of a short utterance does not change (CTranslate2 takes
    windows under 3000 frames). Whisper in so short a window often says the utterance again after
    it ("What is the capital of France? What is the"): that restart is cut (`cut_restart`); a
    transcript that still ends in a repeat is made again in 30 s. The 15 benchmark questions
    (Piper's voice, 30 dB SNR): greedy in audio + 1 s, restarts cut, reads them as a 10 s window
    does, in 64 ms instead of 120 ms (one thread). Longer audio goes through faster-whisper's
    own 30-second windows.
    """

    MIN_WINDOW_S = 0.0    # the window follows the utterance
    MARGIN_S = 1.0        # silence kept after the speech inside the window
    TOKENS_PER_S = 8      # decoding budget per second of audio (speech is about 3-5): cuts a restart or a loop short

    def __init__(self, model_dir: Path | str, threads: int = 1, compute_type: str = "int8", device: str = "cpu", workers: int = 1):
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

    def log_mel_stream(self) -> LogMelStream:
        return LogMelStream(self._model.feature_extractor.mel_filters)

    def transcribe(self, audio16k: np.ndarray, beam_size: int = 1, features: np.ndarray | None = None) -> Transcript:
        started = time.perf_counter()
        audio = audio16k.astype(np.float32, copy=False)
        audio_s = audio.size / 16000
        window_s = max(self.MIN_WINDOW_S, audio_s + self.MARGIN_S)
        if window_s > self._longest_window_s:
            text, avg, no_speech = self._transcribe_long(audio, beam_size)
        else:
            text, avg, no_speech, tokens = self._transcribe_window(audio, window_s, beam_size, features)
            cut = cut_restart(text)
            if cut != text:
                text = cut
            elif ends_in_repeat(tokens):
                # A short window sometimes makes Whisper say the utterance twice; 30 s does not.
                text, avg, no_speech = self._transcribe_long(audio, beam_size)
        return Transcript(text, avg, no_speech, audio_s, time.perf_counter() - started)

    def _transcribe_window(self, audio: np.ndarray, window_s: float, beam_size: int,
                           features: np.ndarray | None) -> tuple[str, float, float, list[int]]:
        import ctranslate2

        if features is None:
            features = self._model.feature_extractor(audio)
        frames = int(window_s * self._frames_per_s)
        # After the speech, silence: the log-mel floor, as Whisper's own padding of the audio gives.
        window = np.full((1, features.shape[0], frames), features.min(), np.float32)
        window[0, :, :min(frames, features.shape[1])] = features[:, :frames]
        encoded = self._model.model.encode(ctranslate2.StorageView.from_array(window))
        result = self._model.model.generate(
            encoded, [self._prompt], beam_size=beam_size, max_length=len(self._prompt) + 4 + int(self.TOKENS_PER_S * audio.size / 16000),
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


def cut_restart(text: str) -> str:
    """The transcript without Whisper's restart of it: "What is the capital of France? What is
    the" -> "What is the capital of France?". A restart is a tail whose words are the transcript's
    first words (in a short window Whisper starts the utterance again where its audio would have
    gone on), after a punctuation mark, or of two words or more ("who wrote Hamlet who wrote")."""
    words = text.split()
    folded = [w.lower().strip(".,?!;:\"'") for w in words]
    for i, word in enumerate(words[:-1]):
        rest = folded[i + 1:]
        if (word[-1:] in ".?!,;:" or len(rest) >= 2) and rest == folded[:len(rest)]:
            return " ".join(words[:i + 1]).rstrip(",;:")
    return text


def ends_in_repeat(tokens: list[int], shortest: int = 3) -> bool:
    """Whether the transcript ends with a run of at least `shortest` tokens said twice in a row
    ("How do I boil an egg? How do I boil an egg?"): Whisper's looping, not something people say."""
    return any(tokens[-k:] == tokens[-2 * k:-k] for k in range(shortest, len(tokens) // 2 + 1))
