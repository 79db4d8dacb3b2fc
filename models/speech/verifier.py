"""The prefix verifier: a small learned gate that keeps or discards the fast path's draft.

It reads confidence signals only (RelayS2S also feeds its fast model's hidden states; ours is a
plain LLM fed by ASR, so the signals are the LLM's per-token scores and how settled the
transcript was): token log-probability, entropy and top-2 margin over the draft, Whisper's own
confidence in the transcript the draft answers, and whether the streaming partials agreed with
it. A two-layer perceptron maps them to P(the slow path would accept this prefix). Its weights
are trained by `python -m models.speech.train_verifier` and ship in `weights/verifier.json`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from models.speech.asr import Transcript
from models.speech.llm import Draft

FEATURES = (
    "logprob_mean", "logprob_min", "entropy_mean", "entropy_max", "margin_mean", "margin_min",
    "first_logprob", "first_margin", "draft_finished", "draft_words",
    "asr_avg_logprob", "asr_no_speech_prob", "transcript_words", "partial_agreement", "has_partial",
)


@dataclass(frozen=True)
class DraftEvidence:
    """What the gate sees of one draft."""

    draft: Draft
    transcript: Transcript                 # the (fast, greedy) transcript the draft answers
    earlier_partial: str | None = None     # the streaming partial before it, if the user spoke long enough for one


def normalized_words(text: str) -> list[str]:
    return ["".join(ch for ch in w.lower() if ch.isalnum() or ch == "'") for w in text.split()]


def partial_agreement(earlier: str, latest: str) -> float:
    """Share of the earlier partial's words that the latest transcript kept, in order from the start:
    a transcript whose beginning keeps changing is not settled."""
    a, b = normalized_words(earlier), normalized_words(latest)
    if not a:
        return 1.0
    same = 0
    for x, y in zip(a, b):
        if x != y:
            break
        same += 1
    return same / len(a)


def features(evidence: DraftEvidence) -> np.ndarray:
    scores = evidence.draft.scores
    if scores:
        lp = np.array([s.logprob for s in scores])
        ent = np.array([s.entropy for s in scores])
        mar = np.array([s.margin for s in scores])
        llm = [lp.mean(), lp.min(), ent.mean(), ent.max(), mar.mean(), mar.min(), lp[0], mar[0]]
    else:  # no draft at all: as unsure as it gets
        llm = [-10.0, -10.0, 10.0, 10.0, 0.0, 0.0, -10.0, 0.0]
    t = evidence.transcript
    partial = evidence.earlier_partial
    values = [*llm, float(evidence.draft.finished), float(len(evidence.draft.text.split())),
              t.avg_logprob, t.no_speech_prob, float(np.log1p(len(t.text.split()))),
              partial_agreement(partial, t.text) if partial is not None else 1.0, float(partial is not None)]
    return np.asarray(values, np.float64)


class PrefixVerifier:
    """`probability(evidence)`: P(keep). Standardised features -> tanh layer -> sigmoid."""

    def __init__(self, weights: dict):
        if tuple(weights["features"]) != FEATURES:
            raise ValueError(f"verifier weights were trained on other features: {weights['features']}")
        self.weights = weights
        self._mean = np.asarray(weights["mean"])
        self._scale = np.asarray(weights["scale"])
        self._w1 = np.asarray(weights["w1"])
        self._b1 = np.asarray(weights["b1"])
        self._w2 = np.asarray(weights["w2"])
        self._b2 = float(weights["b2"])

    @classmethod
    def load(cls, path: Path | None = None) -> PrefixVerifier:
        """The shipped weights, or a file written by the training script."""
        text = Path(path).read_text() if path else (resources.files("models.speech") / "weights" / "verifier.json").read_text()
        return cls(json.loads(text))

    def probability(self, evidence: DraftEvidence) -> float:
        if not evidence.draft.text:
            return 0.0
        return float(self.probabilities([features(evidence)])[0])

    def probabilities(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        x = (np.asarray(rows, np.float64) - self._mean) / self._scale
        hidden = np.tanh(x @ self._w1 + self._b1)
        return 1.0 / (1.0 + np.exp(-(hidden @ self._w2 + self._b2)))
