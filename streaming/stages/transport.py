"""Messages between stage processes: a pickled header plus tensors, over torch.distributed.

A message is three kinds of point-to-point sends in order: the header's length, the header
(its tensors' shapes and dtypes included), then each tensor. Sends are asynchronous (`isend`), so
a stage hands its activations on and goes back to computing; `Sending.wait()` is called before
the tensors may change. Messages between two ranks arrive in the order they were sent.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class Sending:
    """Sends in flight; holds their tensors until they are done."""

    works: list[Any]
    tensors: list[torch.Tensor]

    def wait(self) -> None:
        for work in self.works:
            work.wait()
        self.works, self.tensors = [], []


def send(header: dict[str, Any], tensors: Sequence[torch.Tensor], dst: int, device: torch.device) -> Sending:
    """Start sending a message to rank `dst`; tensors travel from `device` (the backend's device)."""
    tensors = [t.detach().to(device).contiguous() for t in tensors]
    payload = pickle.dumps({**header, "tensor_meta": [(tuple(t.shape), t.dtype) for t in tensors]})
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    data = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device)
    parts = [size, data, *tensors]
    return Sending([dist.isend(part, dst) for part in parts], parts)


def recv(src: int, device: torch.device) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """Receive the next message from rank `src` (blocking)."""
    size = torch.empty(1, dtype=torch.int64, device=device)
    dist.recv(size, src)
    data = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.recv(data, src)
    header = pickle.loads(data.cpu().numpy().tobytes())
    tensors = []
    for shape, dtype in header.pop("tensor_meta"):
        tensor = torch.empty(shape, dtype=dtype, device=device)
        dist.recv(tensor, src)
        tensors.append(tensor)
    return header, tensors
