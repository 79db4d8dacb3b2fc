"""Turn-taking from voice activity and a turn model's verdict: when the user starts speaking,
pauses, resumes and is done.

Pure logic over the VAD's 32 ms windows (no audio, no clock of its own), so it is tested window
by window. Speech starts after `min_speech_s` of voice; a pause is `pause_s` of silence (the
fast path starts, and the relay asks the turn model whether the turn is complete, and asks
again as the silence grows: the model hears the pause lengthen). The turn ends after
`end_of_turn_s` of silence once the turn model is sure it is complete (P ≥ `turn_threshold`; its
verdict may come later than that: the turn then ends when it comes), after twice that once it
thinks so (P ≥ 0.5), after `incomplete_end_of_turn_s` of silence whatever it says, or when the
utterance reaches `max_utterance_s`. Without a turn model (`guarded` off) the short hangover
alone ends the turn. Silence needs the probability to fall clearly below the voice threshold
(hysteresis), so a wavering probability does not end a turn.

Why two thresholds, measured on the benchmark's questions in Piper's voice: a finished question
reaches P ≥ 0.7 by 0.3 s of silence (most ≥ 0.9), but "My favourite colours are red," scores
0.79 in its 0.47 s pause, and ends there with one threshold of 0.5; waiting twice as long for an
unsure verdict costs a few turns 0.3 s and cuts nobody off at a comma.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

WINDOW_S = 512 / 16000
_HYSTERESIS = 0.15
UNSURE = 0.5   # P(complete) that ends the turn after twice the short hangover


class TurnEvent(str, Enum):
    SPEECH_STARTED = "speech_started"
    PAUSED = "paused"
    RESUMED = "resumed"
    ENDED = "ended"


@dataclass(frozen=True)
class Detection:
    event: TurnEvent
    window: int          # index of the window that produced it
    speech_window: int   # for SPEECH_STARTED: first voiced window; for ENDED/PAUSED: last voiced window
    forced: bool = False  # ENDED by max_utterance_s rather than silence
    pause: int = 0        # PAUSED / ENDED: which pause of the utterance (the verdict asked for it is tagged with it)


class TurnDetector:
    def __init__(self, threshold: float = 0.5, min_speech_s: float = 0.1, pause_s: float = 0.064,
                 end_of_turn_s: float = 0.3, max_utterance_s: float = 15.0, incomplete_end_of_turn_s: float = 1.2,
                 guarded: bool = False, turn_threshold: float = 0.9):
        self.configure(threshold, min_speech_s, pause_s, end_of_turn_s, max_utterance_s, incomplete_end_of_turn_s, guarded, turn_threshold)
        self.window = -1
        self.speaking = False
        self._voiced_run = 0
        self._silent_run = 0
        self._start = 0
        self._last_voiced = 0
        self._paused = False
        self._pauses = 0
        self._complete: float | None = None   # the turn model's latest P(complete) in the current pause

    def configure(self, threshold: float, min_speech_s: float, pause_s: float, end_of_turn_s: float, max_utterance_s: float,
                  incomplete_end_of_turn_s: float, guarded: bool, turn_threshold: float = 0.9) -> None:
        self.threshold = threshold
        self.start_windows = max(1, round(min_speech_s / WINDOW_S))
        self.pause_windows = max(1, round(pause_s / WINDOW_S))
        self.end_windows = max(self.pause_windows + 1, round(end_of_turn_s / WINDOW_S))
        self.incomplete_windows = max(self.end_windows, round(incomplete_end_of_turn_s / WINDOW_S))
        self.max_windows = max(self.end_windows, round(max_utterance_s / WINDOW_S))
        self.guarded = guarded
        self.turn_threshold = turn_threshold

    @property
    def silence_windows(self) -> int | None:
        """Windows of silence so far in the current pause; None when not in a pause."""
        return self._silent_run if self.speaking and self._paused else None

    def verdict(self, pause: int, probability: float) -> None:
        """The turn model's P(complete) for pause number `pause`; ignored if the user spoke since."""
        if self.speaking and self._paused and pause == self._pauses:
            self._complete = probability

    def _may_end(self) -> bool:
        if not self.guarded:
            return self._silent_run >= self.end_windows
        p = self._complete if self._complete is not None else 0.0
        return (self._silent_run >= self.end_windows and p >= self.turn_threshold
                or self._silent_run >= 2 * self.end_windows and p >= UNSURE
                or self._silent_run >= self.incomplete_windows)

    def push(self, probability: float) -> Detection | None:
        self.window += 1
        w = self.window
        voiced = probability >= self.threshold
        silent = probability < self.threshold - _HYSTERESIS
        if not self.speaking:
            self._voiced_run = self._voiced_run + 1 if voiced else 0
            if self._voiced_run >= self.start_windows:
                self.speaking, self._paused, self._complete = True, False, None
                self._start = w - self._voiced_run + 1
                self._last_voiced, self._silent_run = w, 0
                return Detection(TurnEvent.SPEECH_STARTED, w, self._start)
            return None
        if not silent:
            self._silent_run = 0
            if voiced:
                self._last_voiced = w
            if self._paused and voiced:
                self._paused, self._complete = False, None
                return Detection(TurnEvent.RESUMED, w, self._last_voiced)
        else:
            self._silent_run += 1
        if self._may_end():
            return self._end(w, forced=False)
        if w - self._start + 1 >= self.max_windows:
            return self._end(w, forced=True)
        if self._silent_run == self.pause_windows and not self._paused:
            self._paused = True
            self._pauses += 1
            return Detection(TurnEvent.PAUSED, w, self._last_voiced, pause=self._pauses)
        return None

    def _end(self, w: int, forced: bool) -> Detection:
        pause = self._pauses if self._paused else 0
        self.speaking, self._paused, self._voiced_run, self._silent_run, self._complete = False, False, 0, 0, None
        return Detection(TurnEvent.ENDED, w, self._last_voiced, forced, pause)
