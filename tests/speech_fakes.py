"""Fake speech components for testing the relay's orchestration without models.

Voice activity follows the signal's loudness; the recognizer, the LLM, the turn model and the
voice follow a script and record how they were called, so a test can see exactly what was
drafted, verified, continued and spoken. Jobs and model lanes run inline and time is a fake
clock, so a conversation of several seconds runs in milliseconds and always the same way.
"""

from __future__ import annotations

from concurrent.futures import Executor, Future

import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor

from models.speech.asr import LogMelStream, Transcript
from models.speech.bundle import SpeechModels
from models.speech.llm import Draft, TokenScores
from models.speech.tts import Speech
from pipelines.relay_speech.lanes import Priority
from pipelines.relay_speech.metrics import TurnStats
from pipelines.relay_speech.params import RelaySpeechParams
from pipelines.relay_speech.relay import Relay
from streaming.frames import AudioChunk

RATE = 16000
WORD_S = 0.1  # every fake spoken word lasts this long


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class InlineExecutor(Executor):
    """Runs each job as it is submitted."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - handed to the caller, as a pool would
            future.set_exception(err)
        return future


class ManualExecutor(Executor):
    """Keeps jobs until the test runs them, to stand for jobs still busy."""

    def __init__(self) -> None:
        self.queued: list = []

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        self.queued.append((future, fn, args, kwargs))
        return future

    def run_all(self) -> None:
        while self.queued:
            future, fn, args, kwargs = self.queued.pop(0)
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as err:  # noqa: BLE001
                future.set_exception(err)


class InlineLane:
    """A model lane that runs each call as it is submitted, recording its priority."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[tuple[Priority, str]] = []

    def submit(self, priority: Priority, fn, *args) -> Future:
        self.calls.append((priority, getattr(fn, "__name__", type(fn).__name__)))
        return InlineExecutor().submit(fn, *args)

    def call(self, priority: Priority, fn, *args):
        return self.submit(priority, fn, *args).result()


class InlineLanes:
    def __init__(self) -> None:
        self.asr, self.llm, self.turn, self.tts = (InlineLane(n) for n in ("asr", "llm", "turn", "tts"))

    def close(self) -> None:
        pass


class LoudnessVad:
    def stream(self):
        pending = np.zeros(0, np.float32)

        def probabilities(audio: np.ndarray) -> np.ndarray:
            nonlocal pending
            audio = np.concatenate([pending, audio])
            n = audio.size // 512
            pending = audio[n * 512:]
            rms = np.sqrt(np.mean(audio[: n * 512].reshape(n, 512) ** 2, axis=1)) if n else np.zeros(0)
            return np.where(rms > 0.05, 0.95, 0.02)

        return probabilities


class ScriptedAsr:
    """`features`: take Whisper's features as computed during speech (and record them)."""

    def __init__(self, fast: str = "what is the capital of france", final: str | None = None, features: bool = False):
        self.fast, self.final = fast, final if final is not None else fast
        self.calls: list[tuple[float, int]] = []  # (seconds of audio, beam size)
        self.features: list[tuple[np.ndarray, np.ndarray | None]] = []   # (audio, features passed)
        self._mel = FeatureExtractor().mel_filters if features else None

    def log_mel_stream(self) -> LogMelStream | None:
        return LogMelStream(self._mel) if self._mel is not None else None

    def transcribe(self, audio16k: np.ndarray, beam_size: int = 1, features=None) -> Transcript:
        self.calls.append((audio16k.size / RATE, beam_size))
        self.features.append((audio16k, features))
        return Transcript(self.final if beam_size > 1 else self.fast, -0.2, 0.01, audio16k.size / RATE, 0.0)


class ScriptedChat:
    """Drafts the first words of `answer`; continues any prefix with the rest of it. Its own
    session for every conversation (it keeps no state); records what it read ahead."""

    def __init__(self, answer: str = "The capital of France is Paris. It is a big city.", continuation: str | None = None):
        self.answer = answer
        self.continuation = continuation  # what `respond` says after a non-empty prefix (default: the rest of `answer`)
        self.drafts: list[list[dict]] = []
        self.responses: list[tuple[list[dict], str]] = []
        self.prefills: list[tuple[list[dict], bool]] = []
        self.closed = 0

    def session(self) -> ScriptedChat:
        return self

    def prefill(self, messages, open_end=False, max_new=None) -> bool:
        self.prefills.append((list(messages), open_end))
        return True

    def close(self) -> None:
        self.closed += 1

    def draft(self, messages, max_words, cancelled=None) -> Draft:
        self.drafts.append(list(messages))
        words = self.answer.split()
        text = " ".join(words[:max_words])
        return Draft(text, tuple(TokenScores(-0.1, 0.5, 3.0) for _ in text.split()), len(words) <= max_words, 0.0)

    def respond(self, messages, prefix, max_tokens, cancelled=None):
        self.responses.append((list(messages), prefix))
        if prefix and self.continuation is not None:
            rest = self.continuation
        else:
            rest = self.answer[len(prefix):] if prefix else self.answer
        for piece in _pieces(rest):
            if cancelled and cancelled():
                return
            yield piece


def _pieces(text: str):
    """Text in token-like pieces: each word with its leading space."""
    start = 0
    for i in range(1, len(text) + 1):
        if i == len(text) or (text[i] == " " and i > start):
            yield text[start:i]
            start = i


class FixedVerifier:
    def __init__(self, probability: float):
        self.p = probability
        self.seen = []

    def probability(self, evidence) -> float:
        self.seen.append(evidence)
        return self.p


class FixedTurnModel:
    """P(turn complete): `probability`; or, with `finished_after_s`, 0.95 for audio longer than
    that (the whole sentence heard) and 0.1 for less (a pause inside it)."""

    def __init__(self, probability: float = 0.95, finished_after_s: float | None = None):
        self.p, self.finished_after_s = probability, finished_after_s
        self.queries: list[float] = []   # seconds of audio each query saw

    def probability(self, audio16k) -> float:
        seconds = audio16k.size / RATE
        self.queries.append(seconds)
        if self.finished_after_s is None:
            return self.p
        return 0.95 if seconds > self.finished_after_s else 0.1


class RecordingVoice:
    name = "fake"

    def __init__(self) -> None:
        self.spoken: list[str] = []

    def synthesize(self, text: str) -> Speech:
        self.spoken.append(text)
        n = int(len(text.split()) * WORD_S * RATE)
        audio = 0.3 * np.sin(np.arange(n) * 2 * np.pi * 220 / RATE).astype(np.float32)
        return Speech(audio, RATE, 0.0)

    def close(self) -> None:
        pass


def fake_models(verifier_p: float = 0.9, asr: ScriptedAsr | None = None, chat: ScriptedChat | None = None,
                turn: FixedTurnModel | None = None, responder: ScriptedChat | None = None) -> SpeechModels:
    chat = chat or ScriptedChat()
    return SpeechModels(vad=LoudnessVad(), asr=asr or ScriptedAsr(), drafter=chat, responder=responder or chat,
                        verifier=FixedVerifier(verifier_p), turn=turn, voices={"fake": RecordingVoice()}, default_voice="fake")


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    """A loud stand-in for a voice, with noise on it."""
    t = np.arange(int(seconds * RATE)) / RATE
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * 180 * t) + rng.normal(0, 0.01, t.size)).astype(np.float32)


def quiet(seconds: float, seed: int = 1) -> np.ndarray:
    """Room noise: never digital silence."""
    return np.random.default_rng(seed).normal(0, 0.003, int(seconds * RATE)).astype(np.float32)


class Conversation:
    """Drives a Relay in 20 ms ticks of the fake clock, as the compute worker would."""

    def __init__(self, models: SpeechModels | None = None, jobs: Executor | None = None, **params):
        self.clock = FakeClock()
        self.models = models or fake_models()
        self.turn_stats = TurnStats()
        self.lanes = InlineLanes()
        self.relay = Relay(self.models, RelaySpeechParams(output_sample_rate=16000, **params), jobs or InlineExecutor(), self.lanes,
                           "s", (self.turn_stats,), self.clock)
        self.out: list[tuple[float, AudioChunk]] = []   # (release time, chunk)
        self._ids = 0

    def play(self, audio: np.ndarray) -> None:
        step = 320
        for i in range(0, audio.size, step):
            self.clock.t += 0.02
            piece = audio[i:i + step]
            chunk = AudioChunk((piece * 32767).astype(np.int16)[:, None], RATE, self._ids, None, "s", {"received": self.clock.t})
            self._ids += 1
            self.relay.feed([chunk])
            self.out += [(self.clock.t, c) for c in self.relay.advance()]

    def wait(self, seconds: float) -> None:
        self.play(quiet(seconds, seed=self._ids))

    @property
    def voice(self) -> RecordingVoice:
        return self.models.voices["fake"]

    def output_seconds(self) -> float:
        return sum(c.samples.shape[0] for _, c in self.out) / RATE
