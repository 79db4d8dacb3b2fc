"""What a pipeline declares to be split across devices, and how a server splits it.

A pipeline's `SchedulingProfile.stages` names the units it divides among stages (transformer
layers), the host every later rank builds for it, and how rank 0's part attaches to the pipeline.
`place_stages` starts one group for all declared pipelines (one process per device), gives each
an even split to begin with, and lets its block scheduler move units from measured stage times.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.scheduling import scheduling_profile
from streaming.stages.balance import Rebalancer, balanced_split
from streaming.stages.group import HostSpec, StageGroup


@dataclass(frozen=True)
class StageDeclaration:
    units: Callable[[Any], int] | None
    """How many units (layers) the stages divide among themselves and keep state for; None when
    the split is made anew at every call (rows of a stateless model)."""
    host: str
    """"module:function" that builds a later rank's host: (link, source=(name, ModelOptions), counts)."""
    attach: Callable[..., Any]
    """(pipeline, group, counts, program, rebalancer) -> rank 0's part, installed in the pipeline."""


def place_stages(pipelines: Mapping[str, Any], devices: Sequence[str]) -> StageGroup | None:
    """Split every pipeline that declares stages across `devices` (rank r on devices[r])."""
    declared = {name: p for name, p in pipelines.items() if scheduling_profile(p).stages is not None}
    if not declared:
        return None
    world = len(devices)
    counts: dict[str, list[int] | None] = {}
    for name, p in declared.items():
        units = scheduling_profile(p).stages.units
        counts[name] = None if units is None else balanced_split(units(p), [1.0] * world, [0.0] * world)
    hosts = {name: HostSpec(scheduling_profile(p).stages.host, {"source": p.source, "counts": counts[name]})
             for name, p in declared.items()}
    group = StageGroup(devices, hosts)
    for name, p in declared.items():
        declaration = scheduling_profile(p).stages
        rebalancer = None if counts[name] is None else Rebalancer(declaration.units(p), counts[name])
        declaration.attach(p, group, counts[name], name, rebalancer)
    return group
