"""The streaming video VAEs' encoder and decoder steps behind their engines.

Both streaming VAEs (models/video/vae.py) run their networks as steps that are pure functions of
tensors: `encode_step(pictures, *state) -> (latent, *state)` and `decode_step(latent, *state) ->
(pictures, *state)`, where the state is the causal memory of one stream (the Wan VAE's cache of
every causal convolution; the tiny VAE's previous features). A stream's first step takes no state
(Wan's layers take their first-chunk branches); every later step takes the tensors the previous
one returned, of shapes that never change after the first. So per picture size a component has
two graphs, first and steady, and a stream's state is only ever those tensors: two interleaved
streams pass their own, and nothing is kept on the model between calls.

`compile_video_vae` replaces the steps on the one VAE instance by calls through a
`ComponentEngine` (as `compile_video_transformer` does with the transformer's forward), each a
separate component: `video_vae_encoder`, `video_vae_decoder` (`video_vae` names both). The VAE is
called per stream (one row), so its engines need no caps for batches of streams. torch.compile
with CUDA graphs on CUDA: the cache tensors are ordinary inputs and outputs of fixed shapes, so
they are copied into the graph's static input buffers and the outputs copied out (CompiledEngine
does), which lets each stream keep its own state. ONNX is not offered (kinds.WHY_NOT).

A stream's first step shows only the first graph's shape. Serving builds torch.compile engines only
during warm-up (models/engines/component.py), and warm-up ends at the first output picture, which
may come before any steady step. So while engines are built on the call (warm-up, render, tests),
a first step also runs its steady step once on made-up input, so both graphs exist before serving.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.engines.buckets import rows_of, signature_of
from models.engines.cache import EngineCache
from models.engines.component import BuildPolicy, ComponentEngine
from models.engines.kinds import EngineChoice, EngineKind
from models.video.vae import FRAMES_PER_LATENT, StreamingVAE

STEPS = (("video_vae_encoder", "encode_step"), ("video_vae_decoder", "decode_step"))


class VaeStepCall(nn.Module):
    """(input, *state) -> (output, *state): one of the VAE's steps as the module an engine runs (the
    class's method: the instance's own attribute is the engine that calls this)."""

    def __init__(self, vae: StreamingVAE, step: str):
        super().__init__()
        self.vae = vae  # the tiny VAE is a module itself; Wan's streaming wrapper holds diffusers' model
        self.weights = vae_weights(vae)  # registered, so .eval() and the engine's fingerprint reach the parameters
        self.step = getattr(type(vae), step)

    def forward(self, x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.step(self.vae, x, *state)


def vae_weights(vae: StreamingVAE) -> nn.Module:
    """The module holding a streaming VAE's parameters."""
    return vae if isinstance(vae, nn.Module) else vae.vae  # type: ignore[attr-defined]


def compile_video_vae(vae: StreamingVAE, engine_spec: str | EngineChoice, device: torch.device, dtype: torch.dtype,
                      engine_cache: Path | str | None = None) -> list[ComponentEngine]:
    """Run `vae`'s encoder and decoder steps on the engines `engine_spec` gives them (an `--engine`
    spec); returns the engines other than eager (an eager step is left as it is)."""
    choice = EngineChoice.parse(engine_spec)
    weights = vae_weights(vae)
    engines = []
    for component, step in STEPS:
        kind = choice.kind_for(component, device)
        if kind is EngineKind.EAGER:
            continue
        engine = ComponentEngine(component, VaeStepCall(vae, step).eval(), kind, device, dtype, weights=weights,
                                 cache=EngineCache(engine_cache), variant=f"{type(vae).__name__}.{step}", rows_scale_with_streams=False)
        setattr(vae, step, _stepping(engine, steady_input=_steady_pictures if step == "encode_step" else _same))
        engines.append(engine)
    return engines


def _stepping(engine: ComponentEngine, steady_input):
    def step(x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output, *new_state = engine(x, *state)
        new_state = [_row_major(t) for t in new_state]
        if not state and engine.build_policy is BuildPolicy.NOW:
            _build_steady(engine, (steady_input(x), *new_state))
        return (output, *new_state)

    return step


def _row_major(t: torch.Tensor) -> torch.Tensor:
    """`t` with row-major strides. A state tensor can be a slice of a larger one (the tiny VAE's
    last picture of four) whose one-row dimension keeps the larger stride: `.contiguous()` leaves
    it, and dynamo, which guards on strides, would compile a third graph for it."""
    strides, size = [], 1
    for n in reversed(t.shape):
        strides.append(size)
        size *= n
    return t if t.stride() == tuple(reversed(strides)) else t.clone(memory_format=torch.contiguous_format)


def _build_steady(engine: ComponentEngine, inputs: tuple[torch.Tensor, ...]) -> None:
    """Build the steady step's engine for the shapes a first step has just shown (the call's output
    is thrown away: the steps are pure)."""
    if engine.bucket_for(signature_of(inputs), rows_of(inputs)) not in engine.built:
        engine(*inputs)


def _steady_pictures(first: torch.Tensor) -> torch.Tensor:
    """A steady encoder step's input from a first one's: a group of four pictures instead of one."""
    return first[:, :, :1].expand(-1, -1, FRAMES_PER_LATENT, -1, -1).contiguous()


def _same(first: torch.Tensor) -> torch.Tensor:
    return first
