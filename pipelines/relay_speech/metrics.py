"""Per-turn timestamps and what they add up to, per stream and for the whole pipeline.

Anchors (all `time.monotonic()` on the server):
- speech end: arrival of the audio holding the user's last voiced 32 ms window;
- pause: the first pause (`pause_s` of silence) that started the fast path used for the turn;
- turn decision: the moment the hangover with the turn model's verdict (or the length cap) ended the user's turn;
- first audio: release of the answer's first sample (it plays then: the listener plays what it gets);
- seam gap: from the end of the spoken prefix to the start of its continuation at the listener;
- barge-in stop: from the arrival of the interrupting voice to the end of the last answer audio sent.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np

# Durations reported as percentiles, with the TurnRecord property each comes from.
DURATIONS = ("speech_end_to_first_audio", "decision_to_first_audio", "speech_end_to_pause", "speech_end_to_decision",
             "speech_end_to_fast_done", "seam_gap", "asr", "asr_wait", "turn_model", "llm_draft", "llm_first_token", "llm_total", "tts_first",
             "barge_in_stop")
_WINDOW = 256


@dataclass
class TurnRecord:
    turn: int
    mode: str
    speech_start_at: float | None = None
    speech_end_at: float | None = None
    pause_at: float | None = None                        # the pause that started the fast path used (relay)
    decision_at: float | None = None
    fast_done_at: float | None = None                    # the fast path used had its transcript, draft, verdict and voice (relay)
    first_audio_at: float | None = None
    forced_end: bool = False
    speculations: int = 0                                # fast paths started (those the user spoke on after were cancelled)
    fast_start: float | None = None                      # start of the fast path used, from the decision (< 0: speculative)
    partials: list[str] = field(default_factory=list)   # streaming partial transcripts, in order
    final_transcript: str | None = None                  # the turn's transcript (made at the pause in relay mode)
    turn_probability: float | None = None                # the turn model's P(complete) at the last pause
    draft: str | None = None
    keep_probability: float | None = None
    kept: bool | None = None                             # None: no draft was made
    prefix: str = ""                                     # spoken prefix: the kept draft, or the slow path's opening when discarded
    continuation: str = ""
    seam_fragment: str = ""                              # a word-piece dropped at the seam (see text.seam_join)
    heard: str | None = None                             # what reached the listener (set when the turn ends)
    interrupted: bool = False
    seam_gap: float | None = None
    asr: float | None = None                             # the turn's transcript
    asr_wait: float | None = None                        # ... and its wait for the recognizer (a partial still running; relay)
    turn_model: float | None = None                      # the turn model's last verdict
    llm_draft: float | None = None
    draft_read_tokens: int | None = None                 # prompt tokens the draft had to read (the rest was read ahead)
    llm_first_token: float | None = None
    llm_total: float | None = None
    tts_first: float | None = None
    barge_in_stop: float | None = None
    error: str | None = None

    @property
    def reply(self) -> str:
        return (self.prefix + self.continuation).strip()

    @property
    def speech_end_to_first_audio(self) -> float | None:
        return _between(self.speech_end_at, self.first_audio_at)

    @property
    def decision_to_first_audio(self) -> float | None:
        return _between(self.decision_at, self.first_audio_at)

    @property
    def speech_end_to_pause(self) -> float | None:
        return _between(self.speech_end_at, self.pause_at)

    @property
    def speech_end_to_decision(self) -> float | None:
        return _between(self.speech_end_at, self.decision_at)

    @property
    def speech_end_to_fast_done(self) -> float | None:
        return _between(self.speech_end_at, self.fast_done_at)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["reply"] = self.reply
        out["speech_end_to_first_audio"] = self.speech_end_to_first_audio
        out["decision_to_first_audio"] = self.decision_to_first_audio
        out["speech_end_to_pause"] = self.speech_end_to_pause
        out["speech_end_to_decision"] = self.speech_end_to_decision
        out["speech_end_to_fast_done"] = self.speech_end_to_fast_done
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def _between(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else end - start


class TurnStats:
    """Recent finished turns and their percentiles. Written by the compute worker, read by the
    event loop (stats messages) and the metrics scrape, hence the lock."""

    def __init__(self) -> None:
        self._turns: deque[TurnRecord] = deque(maxlen=_WINDOW)
        self._lock = threading.Lock()
        self.total = 0

    def add(self, record: TurnRecord) -> None:
        with self._lock:
            self._turns.append(record)
            self.total += 1

    def records(self) -> list[TurnRecord]:
        with self._lock:
            return list(self._turns)

    def snapshot(self, last: int = 0) -> dict:
        turns = self.records()
        drafted = [t for t in turns if t.kept is not None]
        out: dict = {"turns": self.total, "interrupted": sum(t.interrupted for t in turns),
                     "keep_rate": round(sum(bool(t.kept) for t in drafted) / len(drafted), 3) if drafted else None}
        for name in DURATIONS:
            values = [v for v in (getattr(t, name) for t in turns) if v is not None]
            out[f"{name}_ms"] = _percentiles(values)
        if last:
            out["last_turns"] = [t.to_dict() for t in turns[-last:]]
        return out


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None}
    found = np.percentile(np.asarray(values), (50, 90, 99))
    return {f"p{q}": round(float(v) * 1000, 1) for q, v in zip((50, 90, 99), found)}


def prometheus_families(stats: TurnStats, pipeline: str) -> list:
    """The pipeline's turns as Prometheus series: a turn counter, the keep rate, and each
    duration's quantiles over the recent turns of all streams."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    snap = stats.snapshot()
    turns = CounterMetricFamily("latentcast_speech_turns", "Spoken turns answered (or interrupted).", labels=["pipeline"])
    turns.add_metric([pipeline], snap["turns"])
    keep = GaugeMetricFamily("latentcast_speech_keep_rate", "Share of recent drafts the verifier kept.", labels=["pipeline"])
    if snap["keep_rate"] is not None:
        keep.add_metric([pipeline], snap["keep_rate"])
    durations = GaugeMetricFamily("latentcast_speech_seconds", "Per-turn durations over the recent turns: speech end and turn "
                                  "decision to first audio, speech end to the pause and to the decision, seam gap, ASR, turn model, "
                                  "LLM and TTS times, barge-in stop.",
                                  labels=["pipeline", "measure", "quantile"])
    for name in DURATIONS:
        for q, ms in snap[f"{name}_ms"].items():
            if ms is not None:
                durations.add_metric([pipeline, name, f"0.{q[1:]}"], ms / 1000)
    return [turns, keep, durations]
