"""What the slow path's job reports to its relay, one event per step, in the order it happened.

The job thread appends these to the answer's outbox (a deque: appending on one thread and popping
on another is safe); the worker thread reads them each tick (`Relay._collect`) into the turn's
record, the conversation and the playout, so no job ever touches those itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.speech.asr import Transcript


@dataclass(frozen=True, slots=True)
class FinalTranscript:
    """The beam-search transcript of the whole utterance."""

    transcript: Transcript


@dataclass(frozen=True, slots=True)
class UserTurn:
    """The user's words as they enter the conversation: the final transcript, or the fast one when
    the final heard no speech."""

    text: str


@dataclass(frozen=True, slots=True)
class FirstToken:
    """The LLM's first piece of the continuation came, `seconds` after it was asked."""

    seconds: float


@dataclass(frozen=True, slots=True)
class SeamFragment:
    """The word-piece that extended the prefix's last word, dropped at the seam (see text.seam_join)."""

    text: str


@dataclass(frozen=True, slots=True)
class ContinuationText:
    """A piece of the continuation's text, as the LLM produced it."""

    text: str


@dataclass(frozen=True, slots=True)
class LlmFinished:
    """The LLM's whole continuation took `seconds` (its last clause may still be voicing)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class ContinuationAudio:
    """One clause of the continuation, voiced."""

    samples: np.ndarray   # (frames,) int16 at the output rate, as played (see relay.speech_audio)
    text: str             # the words it says
    tts_s: float          # wall time the synthesis took


@dataclass(frozen=True, slots=True)
class SlowPathFailed:
    """The turn fails with this message; the conversation goes on."""

    message: str


@dataclass(frozen=True, slots=True)
class SlowPathDone:
    """The job ended (answered, cancelled or failed): nothing more comes for this answer."""


SlowPathEvent = (FinalTranscript | UserTurn | FirstToken | SeamFragment | ContinuationText | LlmFinished | ContinuationAudio
                 | SlowPathFailed | SlowPathDone)
