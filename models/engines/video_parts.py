"""The causal video transformer behind torch.compile, its KV cache kept out of the graph.

Between its layers the transformer attends over a rolling KV cache whose bookkeeping is Python
(which slot a frame takes, evictions, re-rotated keys, masks: `models.video.kv_cache`). Traced
into a graph, that bookkeeping would make dynamo guard on every position and recompile at every
chunk. So each layer's self-attention becomes one opaque op, `latentcast::cache_attention`: the
graph runs everything else (embedding, adaLN, projections, rotary, cross-attention, feed-forward,
head) compiled, and calls back into the cache's `attend` at each layer. The op is tagged
cudagraph-unsafe, so on CUDA inductor partitions its CUDA graphs around it.

The transformer calls its self-attention through `forward_attending(..., attend)` (the cached
forward and the masked reference both do): `compile_video_transformer` replaces that method on
the one transformer instance by a call through a `ComponentEngine`, with `attend` handed over
beside the graph in a thread-local. Rows are padded like any static-row engine: padded rows take
no part in the cache (their attention is zero) and their outputs are cut off.

ONNX is not offered here: an ONNX graph cannot call back into Python between its layers, and the
cache's writes and policies are that Python (docs/engines.md).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.engines.cache import EngineCache
from models.engines.component import ComponentEngine, building
from models.engines.kinds import EngineChoice, EngineKind

Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_current = threading.local()


@contextlib.contextmanager
def _attending(attend: Attend, rows: int) -> Iterator[None]:
    outer = getattr(_current, "value", None)
    _current.value = (attend, rows)
    try:
        yield
    finally:
        _current.value = outer


@torch.library.custom_op("latentcast::cache_attention", mutates_args=(), tags=(torch.Tag.cudagraph_unsafe,))
def cache_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int) -> torch.Tensor:
    """Self-attention of layer `layer` through the caller's `attend` (it writes the cache and reads
    it) for the real rows; zeros for padded rows. While an engine is built from a made-up example,
    plain attention over the new tokens: the right shape, and the cache left alone."""
    current = getattr(_current, "value", None)
    if current is None or building():
        return F.scaled_dot_product_attention(q, k, v)
    attend, rows = current
    out = attend(layer, q[:rows], k[:rows], v[:rows])
    if rows == q.shape[0]:
        return out
    return torch.cat([out, out.new_zeros((q.shape[0] - rows, *out.shape[1:]))])


@cache_attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int) -> torch.Tensor:
    return torch.empty_like(q)


def _opaque_attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return cache_attention(q, k, v, layer)


class VideoTransformerCall(nn.Module):
    """(latents, timesteps, positions, *text_k, *text_v) -> flow: the transformer's forward with the
    self-attention of every layer through `cache_attention`."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer
        self.layers = len(transformer.blocks)

    def forward(self, latents, timesteps, positions, *text):
        from models.video.transformer import TextKV

        kv = TextKV(list(text[: self.layers]), list(text[self.layers :]))
        # The class's method: the instance's own attribute is the engine that calls this.
        return type(self.transformer).forward_attending(self.transformer, latents, timesteps, kv, positions, _opaque_attend)


def compile_video_transformer(transformer: nn.Module, engine_spec: str | EngineChoice, device: torch.device, dtype: torch.dtype,
                              engine_cache: Path | str | None = None) -> ComponentEngine | None:
    """Run `transformer`'s forwards on the engine `engine_spec` gives it (an `--engine` spec); None
    when that is eager (nothing is changed)."""
    kind = EngineChoice.parse(engine_spec).kind_for("video_transformer", device)
    if kind is EngineKind.EAGER:
        return None
    engine = ComponentEngine("video_transformer", VideoTransformerCall(transformer), kind, device, dtype, weights=transformer,
                             cache=EngineCache(engine_cache))

    def forward_attending(latents, timesteps, text, positions, attend):
        with _attending(attend, latents.shape[0]):
            return engine(latents, timesteps, positions, *text.k, *text.v)

    transformer.forward_attending = forward_attending
    return engine
