"""Shape buckets: which engine serves a call, and how a call is fitted to it.

Every input of an engine-run component has the rows of the batch first (UNet rows, images,
prompts) and rows never mix. A call's `Signature` is everything but the row count: each input's
other dimensions and dtype (the picture size, the text length). An engine serves one signature
and, by its kind, any number of rows (ONNX Runtime) or a row cap: a call is padded up to the
next power of two (torch.compile, whose kernels and CUDA graphs are shape-specialised), or run
as it is within a TensorRT profile of 1..cap rows. Powers of two keep the set small: the
stream batches the scheduler forms (streams x steps per stream) land in a handful of caps, and
padding never more than doubles a call.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

Signature = tuple[tuple[tuple[int, ...], str], ...]
"""Per input: its shape without the rows, and its dtype."""


@dataclass(frozen=True)
class Bucket:
    signature: Signature
    cap: int | None
    """Most rows the engine takes; None: any number."""

    def describe(self) -> str:
        """`<=8 rows of 4x64x64 float16, scalar int64, 77x1024 float16`: what a progress line names
        (a run of equal inputs, such as per-layer keys, once with its count)."""
        rows = "any rows" if self.cap is None else f"<={self.cap} rows"
        inputs = [f"{'x'.join(map(str, shape)) or 'scalar'} {dtype}" for shape, dtype in self.signature]
        runs = []
        for text, same in itertools.groupby(inputs):
            count = len(list(same))
            runs.append(f"{text} (x{count})" if count > 1 else text)
        return f"{rows} of {', '.join(runs)}"

    def tag(self) -> str:
        """A short file-name-safe form, for cache folders."""
        rows = "n" if self.cap is None else str(self.cap)
        first = "x".join(map(str, self.signature[0][0]))
        return f"{rows}r-{first}-{self.signature[0][1]}"


def signature_of(inputs: tuple[torch.Tensor, ...]) -> Signature:
    return tuple((tuple(t.shape[1:]), str(t.dtype).removeprefix("torch.")) for t in inputs)


def rows_of(inputs: tuple[torch.Tensor, ...]) -> int:
    return int(inputs[0].shape[0])


def cap_for(rows: int) -> int:
    """The power of two a call of `rows` rows is padded up to."""
    return 1 << max(0, rows - 1).bit_length()


def caps_up_to(low: int, high: int) -> list[int]:
    """The caps that serve every row count from `low` to `high`."""
    caps, cap = [], cap_for(low)
    while cap < cap_for(high) * 2:
        caps.append(cap)
        cap *= 2
    return caps


def pad_rows(inputs: tuple[torch.Tensor, ...], rows: int) -> tuple[torch.Tensor, ...]:
    """Fill every input up to `rows` rows by repeating its last row (real values: no division by
    a zero variance in a padded row); the padded rows' outputs are cut off again."""
    extra = rows - rows_of(inputs)
    if extra <= 0:
        return inputs
    return tuple(torch.cat([t, t[-1:].expand(extra, *t.shape[1:])]) for t in inputs)


def example_rows(example: tuple[torch.Tensor, ...], rows: int) -> tuple[torch.Tensor, ...]:
    """Inputs of `rows` rows made from a recorded call, to build an engine for that many."""
    return tuple(t[:1].expand(rows, *t.shape[1:]).contiguous() for t in example)
