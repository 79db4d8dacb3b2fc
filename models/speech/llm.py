"""Language-model interfaces of the relay: one chat session per conversation.

A session keeps what the model has already read of its conversation (a local model's attention
cache), so each call reads only what is new: the history once, the user's words while they are
spoken, the answer's opening once. The fast path drafts the first words of an answer with the
per-token confidence signals the prefix verifier reads; the slow path streams an answer that
continues a given prefix word for word (forced-prefix decoding), or starts from scratch when the
prefix is empty. With the same model on both paths the continuation finds the draft already read:
a kept draft costs nothing more, a discarded one a few tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

Message = dict[str, str]          # {"role": "system" | "user" | "assistant", "content": ...}
Cancelled = Callable[[], bool]    # polled between tokens: True stops the generation


@dataclass(frozen=True)
class TokenScores:
    """How sure the model was of one generated token."""

    logprob: float   # log-probability of the token it chose
    entropy: float   # entropy of its next-token distribution (nats)
    margin: float    # top-1 minus top-2 logit


@dataclass(frozen=True)
class Draft:
    text: str                                  # whole words only, as they will be spoken
    scores: Sequence[TokenScores] = field(default_factory=tuple)
    finished: bool = False                     # the answer ended inside the draft
    seconds: float = 0.0
    new_tokens: int = 0                        # prompt tokens the model had to read for it (the rest it had already)


class AnswerSession(Protocol):
    """One conversation's view of the slow path's model. Calls come one at a time (the relay's model lane)."""

    def prefill(self, messages: Sequence[Message], open_end: bool = False, max_new: int | None = None) -> bool:
        """Read `messages` ahead of need (at most `max_new` new tokens); `open_end`: the last message
        is still being spoken, so read it without its end. True once all of it is read."""

    def respond(self, messages: Sequence[Message], prefix: str, max_tokens: int,
                cancelled: Cancelled | None = None) -> Iterator[str]:
        """Text pieces of the answer that follow `prefix` (which is not repeated)."""

    def close(self) -> None:
        """Release what the session holds (its attention cache)."""


class ChatSession(AnswerSession, Protocol):
    """A session of a model that also drafts (the fast path's)."""

    def draft(self, messages: Sequence[Message], max_words: int, cancelled: Cancelled | None = None) -> Draft: ...


class ChatModel(Protocol):
    def session(self) -> ChatSession: ...


class AnswerModel(Protocol):
    def session(self) -> AnswerSession: ...


def token_scores(logits: np.ndarray, chosen: int) -> TokenScores:
    """The verifier's three signals from one step's logits over the vocabulary."""
    logits = logits.astype(np.float64, copy=False)
    top = np.max(logits)
    shifted = logits - top
    log_norm = np.log(np.sum(np.exp(shifted)))
    logprobs = shifted - log_norm
    probs = np.exp(logprobs)
    second = np.partition(logits, -2)[-2]
    return TokenScores(float(logprobs[chosen]), float(-np.sum(probs * logprobs)), float(top - second))


def words_in(text: str) -> int:
    return len(text.split())


def drop_repeated_overlap(prefix: str, continuation: str) -> str:
    """Remove words at the start of `continuation` that repeat the end of `prefix` (an endpoint
    told to continue a prefix sometimes restates part of it)."""
    spoken = [_norm(w) for w in prefix.split()]
    words = continuation.split()
    best = 0
    for n in range(1, min(len(spoken), len(words)) + 1):
        if spoken[-n:] == [_norm(w) for w in words[:n]]:
            best = n
    if not best:
        return continuation
    return " " + " ".join(words[best:]) if len(words) > best else ""


def _norm(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())
