"""How the relay-speech pipeline presents itself to the scheduler: stepped every 20 ms (the
playout's chunk), each step costing well under a millisecond, since the models run on the
pipeline's own job threads; nothing to degrade."""

from __future__ import annotations

from pipelines.scheduling import SchedulingProfile

PROFILE = SchedulingProfile(slo_defaults={"target_fps": 50.0, "latency_budget_ms": 100.0})
