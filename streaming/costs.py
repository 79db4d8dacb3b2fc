"""Measured step costs: per pipeline, per batch composition (how many streams of which cost shape).

The worker's warm-up fills the table with a profile (batch sizes 1, 2, 4 of the default shape);
every step served afterwards updates its entry as a moving average. A composition never measured
is estimated from a per-pipeline line, cost = fixed + per_unit * work, fitted to the table, where
`work` sums the streams' shape products: on a GPU most of a step is the fixed part (batching is
nearly free), on a CPU almost all of it is per stream, and the fit learns which.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

# A cost shape: numbers whose product is a stream's relative work. Pipelines give whole numbers
# (steps, pixels: pipelines.scheduling.Shape); the simulator gives fractional work per frame.
Shape = tuple[float, ...]
Composition = tuple[tuple[Shape, int], ...]

EMA = 0.2  # weight of a new measurement: about the last five steps


def shape_work(shape: Shape) -> float:
    """Relative amount of work of a cost shape (its product), for shapes never measured together."""
    return float(math.prod(shape)) if shape else 1.0


def composition(shapes: Iterable[Shape]) -> Composition:
    return tuple(sorted(Counter(shapes).items()))


def work_of(comp: Composition) -> float:
    return sum(shape_work(shape) * count for shape, count in comp)


@dataclass(frozen=True, slots=True)
class LinearCost:
    """cost = fixed + per_unit * work; `work` of one stream is its shape's product."""

    fixed: float
    per_unit: float

    def __call__(self, work: float) -> float:
        return self.fixed + self.per_unit * work


class CostModel:
    """Written by the compute worker, read by admission control on the event loop: hence the lock."""

    def __init__(self) -> None:
        self._table: dict[str, dict[Composition, float]] = {}
        self._fits: dict[str, LinearCost | None] = {}
        self._lock = threading.Lock()

    def observe(self, pipeline: str, shapes: Iterable[Shape], seconds: float) -> None:
        comp = composition(shapes)
        with self._lock:
            entries = self._table.setdefault(pipeline, {})
            previous = entries.get(comp)
            entries[comp] = seconds if previous is None else (1 - EMA) * previous + EMA * seconds
            self._fits.pop(pipeline, None)

    def estimate(self, pipeline: str, shapes: Iterable[Shape]) -> float | None:
        """Seconds one step over streams of these shapes takes; None before any measurement."""
        comp = composition(shapes)
        with self._lock:
            measured = self._table.get(pipeline, {}).get(comp)
        if measured is not None:
            return measured
        line = self.line(pipeline)
        return None if line is None else line(work_of(comp))

    def line(self, pipeline: str) -> LinearCost | None:
        """Least-squares fit of the pipeline's table; with one distinct work value, all per unit."""
        with self._lock:
            if pipeline not in self._fits:
                self._fits[pipeline] = _fit([(work_of(c), t) for c, t in self._table.get(pipeline, {}).items()])
            return self._fits[pipeline]

    def snapshot(self) -> dict[str, dict[str, float]]:
        """The table for logs and /health: `WxH*count + ...` -> milliseconds."""
        with self._lock:
            return {p: {" + ".join(f"{'x'.join(map(str, s)) or '-'}*{n}" for s, n in comp): round(t * 1000, 2)
                        for comp, t in entries.items()} for p, entries in self._table.items()}


def _fit(points: list[tuple[float, float]]) -> LinearCost | None:
    if not points:
        return None
    n = len(points)
    mean_w = sum(w for w, _ in points) / n
    mean_t = sum(t for _, t in points) / n
    spread = sum((w - mean_w) ** 2 for w, _ in points)
    if spread <= 1e-12 * max(mean_w, 1.0) ** 2:
        return LinearCost(0.0, mean_t / max(mean_w, 1e-12))
    slope = sum((w - mean_w) * (t - mean_t) for w, t in points) / spread
    slope = max(slope, 0.0)
    return LinearCost(max(mean_t - slope * mean_w, 0.0), slope)
