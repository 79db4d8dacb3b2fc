"""The stream-diffusion pipeline split across processes by denoising step groups.

A stream batch already puts every denoising step of a different frame in one UNet call (row j
of a stream is its frame at step j), so the natural stages are groups of those rows: rank r
computes its contiguous share of the rows at the same time as the others, and a frame's latent
moves on to the next group's rows between calls. The UNet keeps no per-stream state, so nothing
has to stay on a rank and the split can follow the measured time per row at every call.
(Splitting the UNet by blocks instead would send every down block's skip activations across
devices for no gain in memory that matters at these model sizes.)

Rank 0 runs the pipeline and its own rows; the later ranks' rows travel along the ring
(each takes its share and passes the rest on), and their outputs come back the same way.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from models.diffusion import PromptEmbeds
from models.loading import load_diffusion_models
from models.source import ModelSource
from streaming.stages.balance import balanced_split
from streaming.stages.group import Link, StageGroup

EMA = 0.2


class StagedUNet:
    """Stands in for `DiffusionModels.predict` on rank 0 (`StreamDiffusionPipeline.denoiser`)."""

    def __init__(self, pipeline: Any, group: StageGroup, program: str):
        self.models = pipeline.models
        self.link = group.link
        self.program = program
        self.row_s = [1.0] * group.world  # measured seconds per row on each rank (relative until measured)
        self.last_counts: list[int] = []

    def __call__(self, latents: torch.Tensor, timesteps: torch.Tensor, embeds: PromptEmbeds) -> torch.Tensor:
        counts = balanced_split(latents.shape[0], self.row_s, [0.0] * self.link.world, first_min=0)
        self.last_counts = counts
        mine = counts[0]
        pooled = [] if embeds.pooled is None else [embeds.pooled[mine:]]
        self.link.send({"op": "rows", "program": self.program, "counts": counts},
                       [latents[mine:], timesteps[mine:], embeds.hidden[mine:], *pooled], self.link.next)
        started = time.perf_counter()
        own = self.models.predict(latents[:mine], timesteps[:mine], embeds.map(lambda t: t[:mine])) if mine else None
        self._measure(0, mine, time.perf_counter() - started)
        header, (rest,) = self.link.recv(self.link.prev)
        for rank, seconds in enumerate(header["times"], start=1):
            self._measure(rank, counts[rank], seconds)
        return rest if own is None else torch.cat([own, rest])

    def _measure(self, rank: int, rows: int, seconds: float) -> None:
        if rows:
            self.row_s[rank] = seconds / rows if self.row_s[rank] == 1.0 else (1 - EMA) * self.row_s[rank] + EMA * seconds / rows


class RowStageHost:
    """A later rank: a copy of the models, computing its share of each call's rows."""

    def __init__(self, link: Link, source: ModelSource, counts: list[int] | None = None):
        self.models = load_diffusion_models(**source.on_device(str(link.device)))
        self.link = link

    def handle(self, header: dict[str, Any], tensors: list[torch.Tensor]) -> None:
        counts, rank, link = header["counts"], self.link.rank, self.link
        mine = counts[rank]
        x, t, hidden, *pooled = tensors
        last = link.next == 0
        if not last:  # the rows of the ranks after this one go on at once
            link.send(header, [x[mine:], t[mine:], hidden[mine:], *(p[mine:] for p in pooled)], link.next)
        started = time.perf_counter()
        with torch.no_grad():
            embeds = PromptEmbeds(hidden[:mine], pooled[0][:mine] if pooled else None)
            own = self.models.predict(x[:mine], t[:mine], embeds)
        seconds = time.perf_counter() - started
        times, outputs = [seconds], [own]
        if rank > 1:  # what the ranks before this one computed comes after their rows
            before, (earlier,) = link.recv(link.prev)
            times, outputs = [*before["times"], seconds], [earlier, own]
        link.send({"times": times}, [torch.cat(outputs)], link.next)


def split_rows(pipeline: Any, group: StageGroup, counts: list[int] | None, program: str, rebalancer: Any = None) -> StagedUNet:
    """Run `pipeline`'s UNet calls split over `group` by rows (step groups)."""
    staged = StagedUNet(pipeline, group, program)
    pipeline.denoiser = staged
    return staged
