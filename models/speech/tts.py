"""Text to speech behind one interface: a Piper neural voice, or espeak-ng as the fallback.

Both engines are GPL-licensed, so each runs as a separate program that the server talks to over
pipes; nothing of theirs is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Speech:
    audio: np.ndarray   # (frames,) float32 in [-1, 1], mono
    sample_rate: int
    seconds: float      # wall time the synthesis took


class Synthesizer(Protocol):
    name: str

    def synthesize(self, text: str) -> Speech: ...

    def close(self) -> None: ...
