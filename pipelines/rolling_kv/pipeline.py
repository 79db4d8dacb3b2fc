"""Rolling-KV causal video generation (StreamDiffusionV2 on CausVid / Self-Forcing models).

A stream is cut into chunks: the first is `first_chunk_latents` latent frames (2: 5 pictures, the
VAE encodes the first picture alone), every later one `chunk_latents` (1: 4 pictures). The loops
follow the upstream ones of the checkpoint's family exactly (docs/video.md; the reference tests in
tests/test_video_upstream.py re-implement them). Video-to-video takes one picture per
step and runs the model when a chunk is complete; text-to-video makes a chunk from noise when it
has no picture left to hand out. Finished pictures leave one per step (a chunk at the pace its
pictures came in; at most 3 wait), and all at once when the input ends.

A chunk's latent frames attend to everything the stream's KV cache holds (sink frames plus a
rolling window) and are written into it. How steps and caches relate is the `kv_mode`:
- stream-batch: chunk n+i sits at step i; one forward serves every step at once, row i attending
  over cache row i, which therefore holds keys computed at step i's noise level. One forward
  per chunk; a chunk leaves `steps` chunks after it entered.
- single-slot: a chunk's steps run one after another on one cache row; each step rewrites the
  chunk's own slot, so the cache keeps the last step's keys (`step_rewrite: same-slot`), or, once
  the cache is full, the next ring slot as StreamDiffusionV2's `inference_wo_batch` does
  (`next-slot`). `steps` forwards per chunk, no pipeline latency.
- clean-context: single-slot plus one pass at t=0 on the denoised chunk, so the cache keeps clean
  keys (CausVid, Self-Forcing's context pass).
These keep different keys, so they give different videos: they are not interchangeable.

The first chunk of every mode runs its steps one after another right away, on one cache row whose
writes every stream-batch row mirrors (StreamDiffusionV2's `prepare`: one sequence, then its cache
copied to every row), so the first pictures come out after one chunk, not `steps` chunks.

Across streams: every row of every stream (all steps of all stream-batch streams, or step i of
all sequential streams) goes into one transformer call per latent size; only the attention over
each stream's own cache is computed per stream. The VAE runs per stream (its causal state is).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

import numpy as np
import torch

from models.video.bundle import VideoModels
from models.video.eviction import AdaptiveSinkRefresh, EvictionPolicy, FifoEviction, ImportanceKeep
from models.video.flow_match import sigma_at
from models.video.positions import AbsolutePositions, CacheRelative, PeriodicReset, PositionPolicy, SinkRealign
from models.video.transformer import CachedRows, TextKV
from models.video.vae import pixel_frames
from pipelines.base import ParamError, Pipeline, PipelineKind, StepOutput, with_defaults
from pipelines.pictures import picture_render_params, picture_to_tensor, tensor_to_pictures
from pipelines.rolling_kv.params import RollingKVParams
from pipelines.rolling_kv.sampler import add_noise, condition_timestep, keyed_noise, predicted_x0, step_timesteps
from pipelines.rolling_kv.scheduling import profile_for
from pipelines.rolling_kv.state import Chunk, PromptTransition, RollingKVState
from streaming.frames import VideoFrame


@dataclass
class _Rows:
    """Consecutive cache rows of one stream in a transformer call, and what they compute."""

    state: RollingKVState
    rows: range
    chunks: list[Chunk]
    timesteps: list[float]  # one per row
    mirror: range = range(0)  # rows that take the same writes as `rows` (a first chunk's)
    step_copy: bool = False   # later steps of single-slot next-slot
    x0: torch.Tensor = field(default=None)


@dataclass
class _Job:
    """One stream's work this tick."""

    index: int
    state: RollingKVState
    entering: Chunk | None  # the chunk that enters the pipe (None: only advance what is in flight)
    until_output: bool  # keep advancing until a chunk leaves (txt2img, draining)
    exits: list[Chunk] = field(default_factory=list)


class RollingKVPipeline(Pipeline[RollingKVState]):
    name = "rolling-kv-video"
    kind = PipelineKind.VIDEO_TO_VIDEO

    def __init__(self, models: VideoModels):
        self.models = models
        self.params_model = with_defaults(RollingKVParams, models.preset.defaults, f"RollingKVParams_{models.preset.name}")
        self.scheduling = profile_for(models)
        self.size_multiple = models.pixel_multiple
        self.denoiser = models.transformer  # what a stage split replaces (streaming.stages)

    # ---- per-stream state ------------------------------------------------------------------

    def in_flight(self, state: RollingKVState) -> int:
        """Input pictures accepted and not handed out yet; txt2img takes no inputs, so none."""
        if state.params.mode == "txt2img":
            return 0
        return self._pictures_in_pipe(state) + len(state.ready)

    def _pictures_in_pipe(self, state: RollingKVState) -> int:
        """Input pictures still being collected or denoised."""
        return len(state.pending) + sum(c.real_frames for c in state.slots if c is not None)

    def needs_input(self, params: RollingKVParams) -> bool:
        return params.mode == "img2img"

    def render_params(self, given: Mapping[str, Any], *, has_input: bool, size: tuple[int, int] | None) -> dict[str, Any]:
        return picture_render_params(given, has_input, size)

    def apply_hot(self, state: RollingKVState, new: RollingKVParams, changed: list[str]) -> None:
        """A new prompt blends in over `transition_chunks` (at once before the first chunk)."""
        if "prompt" in changed:
            target = self.models.prompt_states(new.prompt)
            if new.transition_chunks > 0 and state.started:
                state.transition = PromptTransition(state.text_states, target, new.transition_chunks)
            else:
                text = self.models.text_kv(target)
                state.text_states, state.text, state.transition = target, text, None

    def build_state(self, params: RollingKVParams, stream_id: str) -> RollingKVState:
        m = self.models
        if params.width % m.pixel_multiple or params.height % m.pixel_multiple:
            raise ParamError(f"width and height must be multiples of {m.pixel_multiple} for this preset", field="width")
        rows = params.steps if params.kv_mode == "stream-batch" else 1
        frame_tokens = m.transformer.tokens_per_frame(*m.latent_size(params.width, params.height))
        cache = m.new_cache(rows, params.width, params.height, params.sink_frames, params.window_frames,
                            eviction_policy(params, frame_tokens), position_policy(params))
        states = m.prompt_states(params.prompt)
        return RollingKVState(
            params=params,
            stream_id=stream_id,
            timesteps=step_timesteps(params),
            cache=cache,
            vae=m.vae.new_state(),
            text_states=states,
            text=m.text_kv(states),
            slots=[None] * params.steps if params.kv_mode == "stream-batch" else [],
        )

    # ---- the batched step ----------------------------------------------------------------------

    @torch.no_grad()
    def step(self, batch: Sequence[tuple[RollingKVState, VideoFrame | None]]) -> list[StepOutput]:
        outputs = [StepOutput() for _ in batch]
        jobs = [job for index, (state, frame) in enumerate(batch) if (job := self._admit(index, state, frame, outputs)) is not None]
        for job in jobs:
            self._advance_transition(job.state)
        active = jobs
        while active:
            firsts = [j for j in active if j.entering is not None and j.entering.first]
            self._run(firsts, first=True)
            self._run([j for j in active if j not in firsts], first=False)
            active = [j for j in active if j.until_output and not j.exits and self._refill(j)]
        for job in jobs:
            job.state.ready.extend(self._decode(job))
        for (state, frame), output in zip(batch, outputs):
            if output.error is None:  # a rejected input leaves its stream as it was
                output.frames.extend(self._hand_out(state, draining=frame is None and state.params.mode == "img2img"))
        return outputs

    def _hand_out(self, state: RollingKVState, draining: bool) -> list[VideoFrame]:
        """One picture per tick, so a chunk leaves at the pace its pictures came in (and a
        latest-wins output never sees a burst), but never more than a chunk's worth less one
        waiting; all of them when the input has ended."""
        held_back = held_back_pictures(state.params)
        count = len(state.ready) if draining else min(len(state.ready), max(1, len(state.ready) - held_back))
        return [state.ready.popleft() for _ in range(count)]

    def _admit(self, index: int, state: RollingKVState, frame: VideoFrame | None, outputs: list[StepOutput]) -> _Job | None:
        """What a stream does this tick: hand out a ready picture, collect, run a chunk, or drain."""
        if state.params.mode == "txt2img":
            return None if state.ready else _Job(index, state, self._noise_chunk(state), until_output=True)
        if frame is None:
            if self.in_flight(state) == 0:
                outputs[index].consumed = False
                return None
            if self._pictures_in_pipe(state) == 0:  # only finished pictures wait: hand them out
                return None
            entering = self._padded_chunk(state) if state.pending else None
            return _Job(index, state, entering, until_output=True)
        try:
            picture = picture_to_tensor(frame.image, state.params.width, state.params.height, self.models.device, self.models.dtype)[0]
        except ValueError as err:
            outputs[index] = StepOutput(consumed=True, error=str(err))
            return None
        state.pending.append((frame, picture))
        if len(state.pending) < pixel_frames(self._next_chunk_latents(state), not state.started):
            return None
        return _Job(index, state, self._input_chunk(state), until_output=False)

    def _refill(self, job: _Job) -> bool:
        """Another advance for a stream that must produce output this tick; False when done."""
        state = job.state
        if state.params.mode == "txt2img":
            job.entering = self._noise_chunk(state)
            return True
        job.entering = None
        return self._pictures_in_pipe(state) > 0

    # ---- chunks entering the pipe --------------------------------------------------------------

    def _next_chunk_latents(self, state: RollingKVState) -> int:
        return state.params.chunk_latents if state.started else state.params.first_chunk_latents

    def _take_frames(self, state: RollingKVState, latents: int) -> list[int]:
        frames = list(range(state.next_latent_frame, state.next_latent_frame + latents))
        state.next_latent_frame += latents
        return frames

    def _noise_chunk(self, state: RollingKVState) -> Chunk:
        m, p = self.models, state.params
        first = not state.started
        frames = self._take_frames(state, self._next_chunk_latents(state))
        h, w = m.latent_size(p.width, p.height)
        noise = keyed_noise(p.seed, frames[0], 0, (1, m.latent_channels, len(frames), h, w), m.device, m.dtype)
        outputs = []
        for _ in range(pixel_frames(len(frames), first)):
            outputs.append(VideoFrame(np.empty((0, 0, 3), np.uint8), state.next_frame_id, state.next_frame_id / p.fps, state.stream_id))
            state.next_frame_id += 1
        return Chunk(frames, noise, state.timesteps[0], outputs, first)

    def _input_chunk(self, state: RollingKVState) -> Chunk:
        """Encode the collected pictures and inject noise, at a level set by their motion."""
        m, p = self.models, state.params
        first = not state.started
        pictures = torch.stack([picture for _, picture in state.pending])  # (F, 3, H, W)
        outputs = [frame for frame, _ in state.pending]
        state.pending = []
        latents = m.vae.encode(pictures.transpose(0, 1)[None], state.vae, normalise=m.preset.normalise_encoded)
        frames = self._take_frames(state, latents.shape[2])
        sigma = state.controller.next_sigma(pictures, p.strength, p.motion_aware)
        noise = keyed_noise(p.seed, frames[0], 0, latents.shape, m.device, m.dtype)
        # The first chunk starts at the list's first step (StreamDiffusionV2's `prepare`), the
        # later ones at the timestep of their motion-aware noise level.
        first_t = state.timesteps[0] if first else condition_timestep(sigma)
        return Chunk(frames, add_noise(latents, noise, sigma), first_t, outputs, first)

    def _padded_chunk(self, state: RollingKVState) -> Chunk:
        """The partial chunk at the end of an input, completed with copies of its last picture
        (padding: encoded, never sent)."""
        need = pixel_frames(self._next_chunk_latents(state), not state.started) - len(state.pending)
        state.pending.extend([(None, state.pending[-1][1])] * need)
        return self._input_chunk(state)

    # ---- denoising ----------------------------------------------------------------------------

    def _run(self, jobs: list[_Job], first: bool) -> None:
        """Advance `jobs` by one chunk each; every forward batches all of them per latent size."""
        key = lambda j: (j.state.params.height, j.state.params.width)  # noqa: E731
        for _, group in groupby(sorted(jobs, key=key), key=key):
            group = list(group)
            if first:
                self._run_sequential(group, first=True)
                continue
            self._run_stream_batch([j for j in group if j.state.params.kv_mode == "stream-batch"])
            self._run_sequential([j for j in group if j.state.params.kv_mode != "stream-batch"], first=False)

    def _run_stream_batch(self, jobs: list[_Job]) -> None:
        """One forward: every occupied slot of every stream, slot i at step i on cache row i."""
        if not jobs:
            return
        calls: list[_Rows] = []
        for job in jobs:
            s = job.state
            s.slots[0] = job.entering
            job.entering = None
            run: list[int] = []
            for i in range(s.num_steps + 1):  # consecutive occupied slots form one run of rows
                if i < s.num_steps and s.slots[i] is not None:
                    run.append(i)
                    continue
                if run:
                    chunks = [s.slots[r] for r in run]
                    calls.append(_Rows(s, range(run[0], run[-1] + 1), chunks, [self._timestep(s, r, c) for r, c in zip(run, chunks)]))
                    run = []
        if not calls:
            return
        self._forward(calls)
        job_of = {id(j.state): j for j in jobs}
        for call in calls:
            s = call.state
            for row, chunk, x0 in zip(call.rows, call.chunks, call.x0.split(1)):
                if row == s.num_steps - 1:
                    chunk.latents = x0
                    job_of[id(s)].exits.append(chunk)
                else:
                    chunk.latents = self._renoise(s, chunk, x0, row + 1)
        for job in jobs:  # every chunk moves one step on
            s = job.state
            s.slots = [None] + s.slots[:-1]

    def _run_sequential(self, jobs: list[_Job], first: bool) -> None:
        """A chunk's steps one after another (single-slot, clean-context, and every first chunk)."""
        jobs = [j for j in jobs if j.entering is not None]
        if not jobs:
            return
        steps = jobs[0].state.num_steps
        if any(j.state.num_steps != steps for j in jobs):  # different step counts: separate calls
            for j in jobs:
                self._run_sequential([j], first)
            return
        for i in range(steps):
            calls = [_Rows(j.state, range(1), [j.entering], [self._timestep(j.state, i, j.entering)],
                           mirror=range(1, j.state.cache.rows) if first else range(0), step_copy=i > 0 and _copies_steps(j.state))
                     for j in jobs]
            self._forward(calls)
            for call, job in zip(calls, jobs):
                last = i == steps - 1
                job.entering.latents = call.x0 if last else self._renoise(job.state, job.entering, call.x0, i + 1)
        clean = [j for j in jobs if j.state.params.kv_mode == "clean-context"]
        if clean:  # write the clean chunk's keys at t=0; the output is not needed
            self._forward([_Rows(j.state, range(1), [j.entering], [0.0]) for j in clean])
        for job in jobs:
            job.exits.append(job.entering)
            job.entering = None

    def _timestep(self, state: RollingKVState, step: int, chunk: Chunk) -> float:
        return chunk.first_timestep if step == 0 else state.timesteps[step]

    def _renoise(self, state: RollingKVState, chunk: Chunk, x0: torch.Tensor, step: int) -> torch.Tensor:
        m = self.models
        sigma = float(sigma_at(state.timesteps[step], m.preset.scheduler_shift))
        noise = keyed_noise(state.params.seed, chunk.frames[0], step, tuple(x0.shape), m.device, m.dtype)
        return add_noise(x0, noise, sigma)

    def _forward(self, calls: list[_Rows]) -> None:
        """One transformer call over the rows of every call; sets each call's x0."""
        m = self.models
        groups, start = [], 0
        for call in calls:
            frames = [c.frames for c in call.chunks]
            plan = call.state.cache.begin_write(call.rows, frames, call.mirror, call.step_copy)
            groups.append(CachedRows(call.state.cache, plan, start, call.state.text))
            start += len(call.rows)
        latents = torch.cat([c.latents for call in calls for c in call.chunks])
        per_frame = latents.shape[2]
        told = torch.tensor([t for call in calls for t in call.timesteps], dtype=torch.float64)
        sigma = sigma_at(told, m.preset.scheduler_shift)
        timesteps = told.float()[:, None].expand(-1, per_frame)  # the model is told the timestep itself
        text = TextKV.cat([call.state.text.expand(len(call.rows)) for call in calls])
        flow = self.denoiser.forward_cached(latents, timesteps, text, groups)
        x0 = predicted_x0(latents, flow, sigma.to(latents.device, torch.float32).view(-1, 1, 1, 1, 1))
        start = 0
        for call in calls:
            call.x0 = x0[start : start + len(call.rows)]
            start += len(call.rows)

    def _advance_transition(self, state: RollingKVState) -> None:
        t = state.transition
        if t is None:
            return
        t.done += 1
        states = t.target if t.done >= t.chunks else torch.lerp(t.start.float(), t.target.float(), t.done / t.chunks).to(t.target.dtype)
        state.text_states, state.text = states, self.models.text_kv(states)
        if t.done >= t.chunks:
            state.transition = None

    # ---- pictures in and out ------------------------------------------------------------------

    def _decode(self, job: _Job) -> list[VideoFrame]:
        frames = []
        for chunk in job.exits:
            pictures = self.models.vae.decode(chunk.latents, job.state.vae)[0].transpose(0, 1)  # (P, 3, H, W)
            images = tensor_to_pictures(pictures)
            frames.extend(meta.with_image(image) for meta, image in zip(chunk.outputs, images) if meta is not None)
        return frames



def _copies_steps(state: RollingKVState) -> bool:
    """Later steps write a step copy (StreamDiffusionV2's single-slot loop)."""
    return state.params.kv_mode == "single-slot" and state.params.step_rewrite == "next-slot"


def held_back_pictures(params: RollingKVParams) -> int:
    """Finished pictures that may wait to be handed out: a chunk's worth less one."""
    return pixel_frames(params.chunk_latents, False) - 1


def eviction_policy(params: RollingKVParams, frame_tokens: int) -> EvictionPolicy:
    """A stream's eviction policy (a fresh object per stream: some keep per-stream settings)."""
    if params.eviction == "adaptive-sink":
        return AdaptiveSinkRefresh(params.sink_refresh_threshold)
    if params.eviction == "importance":
        return ImportanceKeep(params.importance_pool_frames * frame_tokens)
    return FifoEviction()


def position_policy(params: RollingKVParams) -> PositionPolicy:
    if params.positions == "periodic-reset":
        reset_to = params.reset_to if params.reset_to is not None else params.kv_cache_frames - 1
        return PeriodicReset(params.reset_at, min(reset_to, params.reset_at - 1))
    return {"absolute": AbsolutePositions, "cache-relative": CacheRelative, "sink-realign": SinkRealign}[params.positions]()
