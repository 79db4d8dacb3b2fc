"""How a server splits the pipelines that declare stages across devices.

A pipeline's `SchedulingProfile.stages` (`pipelines.scheduling.StageDeclaration`) names the
units it divides among stages (transformer layers), the host every later rank builds for it and
what that host needs, and how rank 0's part attaches to the pipeline. `place_stages` starts one
group for all declared pipelines (one process per device), gives each an even split to begin
with, and lets its block scheduler move units from measured stage times.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipelines.base import Pipeline
from pipelines.scheduling import StageDeclaration
from streaming.stages.balance import Rebalancer, balanced_split
from streaming.stages.group import HostSpec, StageGroup


def place_stages(pipelines: Mapping[str, Pipeline], devices: Sequence[str]) -> StageGroup | None:
    """Split every pipeline that declares stages across `devices` (rank r on devices[r])."""
    declared: dict[str, tuple[Pipeline, StageDeclaration]] = {
        name: (p, p.scheduling.stages) for name, p in pipelines.items() if p.scheduling.stages is not None}
    if not declared:
        return None
    world = len(devices)
    counts = {name: None if stages.units is None else balanced_split(stages.units, [1.0] * world, [0.0] * world)
              for name, (_, stages) in declared.items()}
    hosts = {name: HostSpec(stages.host, {**stages.host_args, "counts": counts[name]}) for name, (_, stages) in declared.items()}
    group = StageGroup(devices, hosts)
    for name, (pipeline, stages) in declared.items():
        split = counts[name]
        rebalancer = None if stages.units is None or split is None else Rebalancer(stages.units, split)
        stages.attach(pipeline, group, split, name, rebalancer)
    return group
