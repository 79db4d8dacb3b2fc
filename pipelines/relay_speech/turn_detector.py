"""Turn-taking from voice activity: when the user starts speaking, pauses, resumes and is done.

Pure logic over the VAD's 32 ms windows (no audio, no clock of its own), so it is tested window
by window. Speech starts after `min_speech_s` of voice; a pause is `pause_s` of silence (the
fast path may start drafting); the turn ends after `end_of_turn_s` of silence (the hangover) or
when the utterance reaches `max_utterance_s`. Silence needs the probability to fall clearly
below the voice threshold (hysteresis), so a wavering probability does not end a turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

WINDOW_S = 512 / 16000
_HYSTERESIS = 0.15


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


class TurnDetector:
    def __init__(self, threshold: float = 0.5, min_speech_s: float = 0.1, pause_s: float = 0.15,
                 end_of_turn_s: float = 0.5, max_utterance_s: float = 15.0):
        self.configure(threshold, min_speech_s, pause_s, end_of_turn_s, max_utterance_s)
        self.window = -1
        self.speaking = False
        self._voiced_run = 0
        self._silent_run = 0
        self._start = 0
        self._last_voiced = 0
        self._paused = False

    def configure(self, threshold: float, min_speech_s: float, pause_s: float, end_of_turn_s: float, max_utterance_s: float) -> None:
        self.threshold = threshold
        self.start_windows = max(1, round(min_speech_s / WINDOW_S))
        self.pause_windows = max(1, round(pause_s / WINDOW_S))
        self.end_windows = max(self.pause_windows + 1, round(end_of_turn_s / WINDOW_S))
        self.max_windows = max(self.end_windows, round(max_utterance_s / WINDOW_S))

    def push(self, probability: float) -> Detection | None:
        self.window += 1
        w = self.window
        voiced = probability >= self.threshold
        silent = probability < self.threshold - _HYSTERESIS
        if not self.speaking:
            self._voiced_run = self._voiced_run + 1 if voiced else 0
            if self._voiced_run >= self.start_windows:
                self.speaking, self._paused = True, False
                self._start = w - self._voiced_run + 1
                self._last_voiced, self._silent_run = w, 0
                return Detection(TurnEvent.SPEECH_STARTED, w, self._start)
            return None
        if not silent:
            self._silent_run = 0
            if voiced:
                self._last_voiced = w
            if self._paused and voiced:
                self._paused = False
                return Detection(TurnEvent.RESUMED, w, self._last_voiced)
        else:
            self._silent_run += 1
        if self._silent_run >= self.end_windows:
            return self._end(w, forced=False)
        if w - self._start + 1 >= self.max_windows:
            return self._end(w, forced=True)
        if self._silent_run == self.pause_windows and not self._paused:
            self._paused = True
            return Detection(TurnEvent.PAUSED, w, self._last_voiced)
        return None

    def _end(self, w: int, forced: bool) -> Detection:
        self.speaking, self._paused, self._voiced_run, self._silent_run = False, False, 0, 0
        return Detection(TurnEvent.ENDED, w, self._last_voiced, forced)
