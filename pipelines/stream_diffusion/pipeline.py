"""Stream-batched diffusion over many streams at once.

Stream Batch: a stream with N denoising steps keeps N frames in flight, frame k-j sitting at
step j. Each call adds the newest frame at step 0, runs ONE UNet pass over all N slots (each at
its own timestep), and the frame at step N-1 leaves the pipe. One UNet row per frame per call
instead of N sequential calls; the price is N-1 frames of latency.

Across streams: every stream's rows (with their own timesteps, prompts and guidance rows) are
concatenated into one UNet batch per latent size, so serving several streams costs one forward.
No junk leaves the pipe during warm-up: a slot that holds no real frame produces no output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

import numpy as np
import torch

from models.control.conditioned_unet import NO_CONTROL, RowControl, predict_with_controls
from models.diffusion import DiffusionModels, PromptEmbeds
from models.vocabulary import prompt_notes
from pipelines.base import Pipeline, PipelineKind, StepOutput, with_defaults
from pipelines.pictures import picture_render_params, picture_to_tensor, tensor_to_pictures
from pipelines.stream_diffusion import control
from pipelines.stream_diffusion.blending import blend, seeded_noise
from pipelines.stream_diffusion.control_params import ControlNetChoice, with_choices
from pipelines.stream_diffusion.guidance import cfg_active, guided_noise, next_residual_noise
from pipelines.stream_diffusion.params import StreamDiffusionParams
from pipelines.stream_diffusion.sampler import denoised, make_step_tables, noise_from_model_output
from pipelines.stream_diffusion.scheduling import profile_for
from pipelines.stream_diffusion.similarity_filter import SimilarityFilter
from pipelines.stream_diffusion.state import StreamState
from streaming.frames import VideoFrame

PROMPT_FIELDS = {"prompt", "prompts", "prompt_interpolation"}
SEED_FIELDS = {"seed", "seeds", "seed_interpolation"}


@dataclass
class _Job:
    """One stream's share of a call: its rows in the shared UNet batch and what to do after."""

    index: int
    state: StreamState
    frame: VideoFrame | None  # identity of the entering frame; None while draining
    image: torch.Tensor | None  # preprocessed input for img2img
    control_images: control.FrameImages | None = None  # the entering frame's ControlNet images
    slots: torch.Tensor = field(default=None)  # which steps this job's rows are at
    x: torch.Tensor = field(default=None)
    residual: torch.Tensor = field(default=None)
    cond_rows: slice = field(default=None)
    uncond_rows: slice | None = None


class StreamDiffusionPipeline(Pipeline[StreamState]):
    name = "stream-diffusion"
    kind = PipelineKind.VIDEO_TO_VIDEO
    size_multiple = 8

    def __init__(self, models: DiffusionModels):
        self.models = models
        defaults = with_defaults(StreamDiffusionParams, models.preset.defaults, f"StreamDiffusionParams_{models.preset.name}")
        controls = models.controls
        self.params_model = with_choices(defaults, list(controls.controlnets), controls.lora_names(), controls.ip_adapter is not None)
        self.scheduling = profile_for(models)
        self.denoiser = models.predict  # the UNet call a stage split replaces (streaming.stages)

    # ---- per-stream state ------------------------------------------------------------------

    def in_flight(self, state: StreamState) -> int:
        return sum(frame is not None for frame in state.slots)

    def needs_input(self, params: StreamDiffusionParams) -> bool:
        return params.mode == "img2img"

    def render_params(self, given: Mapping[str, Any], *, has_input: bool, size: tuple[int, int] | None) -> dict[str, Any]:
        params = picture_render_params(given, has_input, size)
        if not has_input and "cfg_type" not in given:
            params["cfg_type"] = "none"  # self and onetime measure their residual against an input image
        return params

    def styles(self) -> list[str]:
        return list(self.models.preset.styles)

    def prompt_notes(self, params: StreamDiffusionParams) -> list[str]:
        preset = self.models.preset
        texts = [p.text for p in params.prompts] if params.prompts else [params.prompt]
        notes = [note for text in texts for note in prompt_notes(self.models.tokenizers[0], text, preset.styles)]
        if params.mode == "txt2img" and not preset.from_text:
            notes.append(f"the {preset.name} model restyles an input picture; from a prompt alone it draws colour noise "
                         "(give it a camera or a video, or use a text-to-image preset such as sd-turbo)")
        return notes

    def apply_hot(self, state: StreamState, new: StreamDiffusionParams, changed: list[str]) -> None:
        """New prompt embeddings and noise; everything is computed before anything is assigned
        (the controls check and embed everything before they assign theirs)."""
        if control.CONTROL_FIELDS & set(changed):
            control.apply_changes(self.models, state.controls, new, set(changed))
        cond = self._prompt_embeds(new) if PROMPT_FIELDS & set(changed) else state.cond
        uncond = self.models.encode_prompt([new.negative_prompt]) if "negative_prompt" in changed else state.uncond
        if SEED_FIELDS & set(changed):
            state.init_noise = self._slot_noise(new, state.num_steps, state.latent_shape)
            state.generator.manual_seed(_main_seed(new))
        state.cond, state.uncond = cond, uncond

    def build_state(self, params: StreamDiffusionParams, stream_id: str) -> StreamState:
        m = self.models
        tables = make_step_tables(params.t_index_list, m.alphas_cumprod, m.preset.boundary_condition, m.device, m.dtype)
        n = len(tables)
        factor = m.vae_scale_factor
        latent_shape = (m.latent_channels, params.height // factor, params.width // factor)
        return StreamState(
            params=params,
            stream_id=stream_id,
            tables=tables,
            cond=self._prompt_embeds(params),
            uncond=m.encode_prompt([params.negative_prompt]),
            init_noise=self._slot_noise(params, n, latent_shape),
            buffer=torch.zeros((n - 1, *latent_shape), device=m.device, dtype=m.dtype),
            residual=torch.zeros((n, *latent_shape), device=m.device, dtype=m.dtype),
            slots=[None] * (n - 1),
            generator=torch.Generator("cpu").manual_seed(_main_seed(params)),
            filter=SimilarityFilter(),
            controls=control.new_controls(m, params, n),
        )

    def stream_pictures(self, state: StreamState) -> dict[str, np.ndarray]:
        """The newest control image of each ControlNet (`control-0`, ...), for the demo."""
        return {name: tensor_to_pictures(image.unsqueeze(0) * 2 - 1)[0] for name, image in state.controls.preview.items()}

    def _prompt_embeds(self, params: StreamDiffusionParams) -> PromptEmbeds:
        prompts = params.prompts or []
        texts = [p.text for p in prompts] or [params.prompt]
        weights = [p.weight for p in prompts] or [1.0]
        embeds = self.models.encode_prompt(texts)
        one = lambda t: t.unsqueeze(0)  # noqa: E731
        hidden = blend(list(embeds.hidden), weights, params.prompt_interpolation)
        pooled = None if embeds.pooled is None else one(blend(list(embeds.pooled), weights, params.prompt_interpolation))
        return PromptEmbeds(one(hidden), pooled)

    def _slot_noise(self, params: StreamDiffusionParams, n: int, latent_shape: tuple[int, ...]) -> torch.Tensor:
        seeds = params.seeds or []
        values = [s.seed for s in seeds] or [params.seed]
        weights = [s.weight for s in seeds] or [1.0]
        noises = [seeded_noise(seed, (n, *latent_shape)) for seed in values]
        mixed = blend(noises, weights, params.seed_interpolation, keep_variance=True)
        return mixed.to(self.models.device, self.models.dtype)

    # ---- the batched step ----------------------------------------------------------------------

    @torch.no_grad()
    def step(self, batch: Sequence[tuple[StreamState, VideoFrame | None]]) -> list[StepOutput]:
        outputs = [StepOutput() for _ in batch]
        jobs: list[_Job] = []
        for index, (state, frame) in enumerate(batch):
            job = self._admit(index, state, frame, outputs)
            if job is not None:
                jobs.append(job)
        self._prepare_controls(jobs)
        # One UNet batch per latent size: rows of different sizes cannot share a tensor.
        jobs.sort(key=lambda j: j.state.latent_shape)
        for _, group in groupby(jobs, key=lambda j: j.state.latent_shape):
            self._run(list(group), outputs)
        return outputs

    def _admit(self, index: int, state: StreamState, frame: VideoFrame | None, outputs: list[StepOutput]) -> _Job | None:
        """Decide what a stream does this tick: drain, skip (similarity filter), or run."""
        params = state.params
        if params.mode == "txt2img":
            if frame is None:
                frame = VideoFrame(np.empty((0, 0, 3), np.uint8), state.next_frame_id, None, state.stream_id)
            state.next_frame_id = frame.frame_id + 1
            return _Job(index, state, frame, None)
        if frame is None:
            if self.in_flight(state) == 0:
                outputs[index] = StepOutput(consumed=False)
                return None
            return _Job(index, state, None, None)
        try:
            image = picture_to_tensor(frame.image, params.width, params.height, self.models.device, self.models.dtype)
        except ValueError as err:
            outputs[index] = StepOutput(consumed=True, error=str(err))
            return None
        if state.filter.should_skip(
            image, params.filter_threshold, params.filter_max_skip, state.generator, can_skip=state.last_output is not None
        ):
            outputs[index] = StepOutput(frames=[frame.with_image(state.last_output.image)], skipped=True)
            return None
        return _Job(index, state, frame, image)

    def _prepare_controls(self, jobs: list[_Job]) -> None:
        """The entering frames' control images, every stream's at once (one preprocessor call per
        kind), and the image prompts waiting for an input frame."""
        requests: list[tuple[ControlNetChoice, torch.Tensor]] = []
        owners: list[_Job] = []
        takers = []
        for job in jobs:
            s = job.state
            if job.frame is None:
                continue
            if s.controls.take_input and job.image is not None:
                takers.append((s.controls, job.image))
            unique = {c.image_key: c for c in s.params.controlnets}
            for choice in unique.values():
                picture = self._previous_output(job) if choice.preprocessor == "previous_output" else job.image
                requests.append((choice, picture))
                owners.append(job)
        for job, (choice, _), image in zip(owners, requests, control.frame_images(requests)):
            job.control_images = {**(job.control_images or {}), choice.image_key: image}
        for job in jobs:
            if job.control_images is not None:
                job.state.controls.preview = {f"control-{i}": job.control_images[c.image_key]
                                              for i, c in enumerate(job.state.params.controlnets)}
        control.take_input_pictures(self.models, takers)

    def _previous_output(self, job: _Job) -> torch.Tensor:
        """The stream's last generated picture, stream-sized in [-1, 1]; before the first one, its
        input (txt2img: black)."""
        s, p, m = job.state, job.state.params, self.models
        if s.last_output is not None:
            return picture_to_tensor(s.last_output.image, p.width, p.height, m.device, m.dtype)
        if job.image is not None:
            return job.image
        return torch.full((1, 3, p.height, p.width), -1.0, device=m.device, dtype=m.dtype)

    def predict_rows(self, latents: torch.Tensor, timesteps: torch.Tensor, embeds: PromptEmbeds, rows: list[RowControl]) -> torch.Tensor:
        """The UNet's output for each row: rows without controls through `denoiser` (the component's
        engine, or a stage split), rows with controls through the eager UNet with their
        per-row controls, one call each (docs/control.md, "Engines")."""
        controlled = [i for i, row in enumerate(rows) if not row.empty]
        if not controlled:
            return self.denoiser(latents, timesteps, embeds)
        if len(controlled) == len(rows):
            return predict_with_controls(self.models, latents, timesteps, embeds, rows)
        plain = torch.tensor([i for i, row in enumerate(rows) if row.empty])
        chosen = torch.tensor(controlled)
        out_plain = self.denoiser(latents[plain], timesteps[plain], embeds.map(lambda t: t[plain]))
        out_controlled = predict_with_controls(self.models, latents[chosen], timesteps[chosen], embeds.map(lambda t: t[chosen]),
                                               [rows[i] for i in controlled])
        out = torch.empty((len(rows), *out_plain.shape[1:]), device=out_plain.device, dtype=out_plain.dtype)
        out[plain], out[chosen] = out_plain, out_controlled
        return out

    def _run(self, jobs: list[_Job], outputs: list[StepOutput]) -> None:
        m = self.models
        to_encode = [j for j in jobs if j.image is not None]
        latents = m.encode_images(torch.cat([j.image for j in to_encode])) if to_encode else None
        encoded = {id(j): latents[k : k + 1] for k, j in enumerate(to_encode)}

        rows_x, rows_t, rows_embeds, rows_control = [], [], [], []
        for job in jobs:
            self._plan_rows(job, encoded.get(id(job)), rows_x, rows_t, rows_embeds, rows_control)
        model_out = self.predict_rows(torch.cat(rows_x), torch.cat(rows_t), PromptEmbeds.cat(rows_embeds), rows_control)

        exits: list[tuple[_Job, VideoFrame, torch.Tensor]] = []
        for job in jobs:
            leaving = self._advance(job, model_out)
            if leaving is not None:
                exits.append((job, *leaving))
        if exits:
            images = tensor_to_pictures(m.decode_latents(torch.cat([latent for _, _, latent in exits])))
            for (job, meta, _), image in zip(exits, images):
                out = meta.with_image(image)
                job.state.last_output = out
                outputs[job.index].frames.append(out)

    def _plan_rows(self, job: _Job, latent: torch.Tensor | None, rows_x, rows_t, rows_embeds, rows_control) -> None:
        """Append this stream's UNet rows: its slots with the prompt, plus guidance rows, and
        what controls each row."""
        s, p = job.state, job.state.params
        tables, n = s.tables, s.num_steps
        if job.frame is None:  # draining: only the frames already in flight move
            job.slots = torch.arange(1, n)
            job.x = s.buffer
        else:
            if latent is None:  # txt2img: fresh noise stands in for the noised input
                newest = torch.randn((1, *s.latent_shape), generator=s.generator).to(s.buffer.device, s.buffer.dtype)
            else:
                newest = tables.alpha[0] * latent + tables.beta[0] * s.init_noise[0:1]
            job.slots = torch.arange(n)
            job.x = torch.cat([newest, s.buffer])
        # S of each slot: the added noise itself at step 0, carried forward from the last call after.
        job.residual = torch.cat([s.init_noise[0:1], s.residual[:-1]])[job.slots]
        rows = len(job.slots)
        timesteps = tables.timesteps[job.slots]

        start = sum(len(x) for x in rows_x)
        rows_x.append(job.x)
        rows_t.append(timesteps)
        rows_embeds.append(s.cond.map(lambda t: t.expand(rows, *t.shape[1:])))
        job.cond_rows = slice(start, start + rows)
        images_in_flight = [job.control_images, *s.controls.slot_images]  # by slot, as the frames
        slot_images = [images_in_flight[j] for j in job.slots.tolist()]
        controlled = control.active(p)

        def controls_of(images: list, guidance: bool) -> list[RowControl]:
            if not controlled:
                return [NO_CONTROL] * len(images)
            return control.row_controls(p, s.controls, images, job.control_images, guidance)

        rows_control.extend(controls_of(slot_images, guidance=False))
        if not cfg_active(p.cfg_type, p.guidance_scale):
            return
        if p.cfg_type == "full":
            extra = (job.x, timesteps)
        elif p.cfg_type == "onetime" and job.frame is not None:
            extra = (job.x[0:1], timesteps[0:1])  # one real negative pass, for the newest frame only
        else:
            return
        rows_x.append(extra[0])
        rows_t.append(extra[1])
        rows_embeds.append(s.uncond.map(lambda t: t.expand(len(extra[0]), *t.shape[1:])))
        rows_control.extend(controls_of(slot_images[: len(extra[0])], guidance=True))
        job.uncond_rows = slice(start + rows, start + rows + len(extra[0]))

    def _advance(self, job: _Job, model_out: torch.Tensor) -> tuple[VideoFrame, torch.Tensor] | None:
        """Guidance, x0 estimates, residual noise and buffer for one stream; returns the frame
        that leaves the pipe (with its latent), if a real one does."""
        s, p = job.state, job.state.params
        m, n = self.models, s.num_steps
        tables = s.tables.rows(job.slots)
        eps = noise_from_model_output(model_out[job.cond_rows], job.x, tables, m.prediction_type)
        residual = job.residual
        if cfg_active(p.cfg_type, p.guidance_scale):
            if p.cfg_type == "full":
                eps_uncond = noise_from_model_output(model_out[job.uncond_rows], job.x, tables, m.prediction_type)
            else:
                if job.uncond_rows is not None:  # onetime: the real negative replaces S of the newest frame
                    first = s.tables.rows(job.slots[:1])
                    real = noise_from_model_output(model_out[job.uncond_rows], job.x[0:1], first, m.prediction_type)
                    residual = torch.cat([real, residual[1:]])
                eps_uncond = p.delta * residual
            eps = guided_noise(eps, eps_uncond, p.guidance_scale)
        x0 = denoised(job.x, eps, tables)

        # Each row j moves on to step j+1 at the next call (the last row leaves).
        ones = torch.ones_like(s.tables.alpha[:1])
        next_alpha = torch.cat([s.tables.alpha[1:], ones])[job.slots]
        next_beta = torch.cat([s.tables.beta[1:], ones])[job.slots]
        next_noise = torch.roll(s.init_noise, -1, dims=0)[job.slots]
        new_residual = torch.zeros_like(s.residual)
        new_residual[job.slots] = next_residual_noise(residual, eps, tables, next_alpha, next_beta, next_noise)
        staying = job.slots < n - 1
        renoised = next_alpha[staying] * x0[staying]
        if p.add_noise:
            renoised = renoised + next_beta[staying] * next_noise[staying]
        new_buffer = torch.zeros_like(s.buffer)
        new_buffer[job.slots[staying]] = renoised
        s.buffer, s.residual = new_buffer, new_residual

        in_flight = [job.frame] + s.slots  # frame at slot 0..N-1 this call
        s.slots = in_flight[: n - 1]
        s.controls.slot_images = [job.control_images, *s.controls.slot_images][: n - 1]
        leaving = in_flight[n - 1]
        if leaving is None:
            return None
        return leaving, x0[job.slots == n - 1]


def _main_seed(params: StreamDiffusionParams) -> int:
    return params.seeds[0].seed if params.seeds else params.seed
