"""Spacing output frames by their capture pts, so a burst from the model leaves as smooth video."""

from __future__ import annotations


class PtsPacer:
    """Maps pts to the wall clock through an anchor and says how long to hold each frame.

    A late frame is never held back to keep the old rhythm: it re-anchors the clock, so pacing
    smooths bursts without ever adding a backlog. The wait per frame is capped (`max_wait`, about
    a frame interval), and every wait pulls the anchor a little earlier, so latency added by one
    slow frame decays instead of staying.
    """

    DRIFT_BACK = 0.1  # share of each wait removed from the anchor

    def __init__(self, max_wait: float):
        self.max_wait = max_wait
        self._anchor_wall: float | None = None
        self._anchor_pts = 0.0
        self._last_pts: float | None = None

    def delay(self, pts: float | None, now: float) -> float:
        """Seconds to wait before sending the frame captured at `pts` (0 for no wait)."""
        if pts is None:
            return 0.0
        in_order = self._last_pts is not None and pts > self._last_pts
        self._last_pts = pts
        if self._anchor_wall is None or not in_order:
            return self._anchor(pts, now)
        wait = self._anchor_wall + (pts - self._anchor_pts) - now
        if wait <= 0 or wait > self.max_wait:
            return self._anchor(pts, now)
        self._anchor_wall -= wait * self.DRIFT_BACK
        return wait * (1 - self.DRIFT_BACK)

    def _anchor(self, pts: float, now: float) -> float:
        self._anchor_wall, self._anchor_pts = now, pts
        return 0.0
