"""torch.compile engines: inductor's generated kernels, and CUDA graphs on CUDA.

One compiled function serves a component. Its row dimension is marked dynamic, so dynamo
compiles one graph per signature (picture size, dtypes) for every row count: measured on the tiny
VAE decoder, the symbolic graph runs as fast per row as graphs specialised to each count, and the
caps cost one compile instead of one each (the other dimensions stay static). A bucket (a row cap)
is built by running the function once at its shape: on CUDA that records its CUDA graph, which
needs the fixed shape the padding gives it. Inductor keeps what it compiled in its own disk cache,
keyed by the graph, the config and the versions: `inductor/` under the engine cache unless
TORCHINDUCTOR_CACHE_DIR says otherwise, so a second start re-traces but compiles nothing.

On CUDA the mode is `reduce-overhead` (CUDA graphs): a replay writes into the same output
buffers, so outputs are copied out before the next call can overwrite them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

MAX_SHAPES = 64  # compiled graphs per function before dynamo gives up on it (its default is 8)


def use_inductor_cache(engine_root: Path) -> None:
    """Put inductor's cache beside the engine cache, unless the user placed it (inductor reads the
    variable at every compile, so this holds for every compile after it)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(engine_root / "inductor"))


class CompiledEngine:
    def __init__(self, module: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]], device: torch.device, engine_root: Path):
        use_inductor_cache(engine_root)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, MAX_SHAPES)
        self.cuda_graphs = device.type == "cuda"
        self.fn = torch.compile(module, dynamic=False, mode="reduce-overhead" if self.cuda_graphs else None)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for t in inputs:  # one graph for every row count (a count of 1 is specialised apart, as dynamo does)
            torch._dynamo.maybe_mark_dynamic(t, 0)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        out = self.fn(*inputs)
        outs = out if isinstance(out, tuple) else (out,)
        return tuple(o.clone() for o in outs) if self.cuda_graphs else outs
