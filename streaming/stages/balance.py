"""The block scheduler's policy: how many consecutive units (transformer layers, UNet rows) each
stage gets, from measured times, and when moving them is worth it.

A stage's time is its fixed work (rank 0 also encodes and decodes) plus its units times its
measured cost per unit (devices may differ). The split that minimises the slowest stage sets the
pipeline's throughput. Moving units costs a transfer of their cached state, and measurements are
noisy, so a move is made only when it shortens the slowest stage by more than `threshold`, after
`warmup` steps and at least `min_interval` steps after the previous move; each stage's time is the
minimum over the last `window` steps (the least disturbed, as upstream takes it, but recent, so a
device that slows down for good is noticed).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field


def stage_times(counts: Sequence[int], unit_s: Sequence[float], fixed_s: Sequence[float]) -> list[float]:
    return [f + n * u for n, u, f in zip(counts, unit_s, fixed_s)]


def balanced_split(units: int, unit_s: Sequence[float], fixed_s: Sequence[float], first_min: int = 1) -> list[int]:
    """Units per stage, contiguous and in order, minimising the slowest stage; stage 0 keeps at
    least `first_min` (it places new frames in the caches). Exact, by dynamic programming."""
    stages = len(unit_s)
    best: dict[tuple[int, int], tuple[float, list[int]]] = {}

    def solve(stage: int, left: int) -> tuple[float, list[int]]:
        if stage == stages - 1:
            return fixed_s[stage] + left * unit_s[stage], [left]
        key = (stage, left)
        if key not in best:
            low = first_min if stage == 0 else 0
            options = []
            for n in range(low, left + 1):
                rest, counts = solve(stage + 1, left - n)
                options.append((max(fixed_s[stage] + n * unit_s[stage], rest), [n, *counts]))
            best[key] = min(options, key=lambda o: (o[0], [-c for c in o[1]]))
        return best[key]

    return solve(0, units)[1]


@dataclass
class Rebalancer:
    units: int
    counts: list[int]
    threshold: float = 0.10
    warmup: int = 8
    min_interval: int = 32
    window: int = 16
    _seen: int = 0
    _since_move: int = 0
    _recent: deque[tuple[Sequence[float], Sequence[float]]] = field(default_factory=deque)

    def observe(self, unit_s: Sequence[float], fixed_s: Sequence[float]) -> None:
        """One step's measured cost per unit and fixed time of every stage."""
        self._seen += 1
        self._since_move += 1
        self._recent.append((list(unit_s), list(fixed_s)))
        while len(self._recent) > self.window:
            self._recent.popleft()

    def propose(self) -> list[int] | None:
        """A new split when it is clearly better than the current one; None otherwise."""
        if self._seen < self.warmup or self._since_move < self.min_interval:
            return None
        unit_s = [min(col) for col in zip(*(u for u, _ in self._recent))]
        fixed_s = [min(col) for col in zip(*(f for _, f in self._recent))]
        now = max(stage_times(self.counts, unit_s, fixed_s))
        split = balanced_split(self.units, unit_s, fixed_s)
        then = max(stage_times(split, unit_s, fixed_s))
        if split == self.counts or then > (1 - self.threshold) * now:
            return None
        return split

    def moved(self, counts: list[int]) -> None:
        self.counts = list(counts)
        self._since_move = 0
        self._recent.clear()  # times measured under the old split say little about the new one
