"""Mixing prompts and seeds: weighted lists, linear or spherical interpolation."""

from __future__ import annotations

import torch


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation over the flattened tensors, which keeps the norm of Gaussian noise
    and embeddings where a straight line would shrink it halfway."""
    a64, b64 = a.double().flatten(), b.double().flatten()
    cos = torch.dot(a64, b64) / (a64.norm() * b64.norm())
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if omega.abs() < 1e-4:  # nearly parallel: linear is exact enough and avoids 0/0
        return torch.lerp(a, b, t)
    so = torch.sin(omega)
    mixed = (torch.sin((1 - t) * omega) / so) * a64 + (torch.sin(t * omega) / so) * b64
    return mixed.view_as(a).to(a.dtype)


def blend(tensors: list[torch.Tensor], weights: list[float], method: str, keep_variance: bool = False) -> torch.Tensor:
    """Weighted mix. Two items with `slerp` interpolate spherically; otherwise a weighted sum,
    normalised to sum 1, or to unit variance for independent noises (`keep_variance`)."""
    if len(tensors) == 1:
        return tensors[0]
    total = sum(weights)
    if method == "slerp" and len(tensors) == 2:
        return slerp(tensors[0], tensors[1], weights[1] / total)
    w = torch.tensor(weights, dtype=torch.float64)
    w = w / w.norm() if keep_variance else w / total
    mixed = sum(wi.item() * t.double() for wi, t in zip(w, tensors))
    return mixed.to(tensors[0].dtype)


def seeded_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise from a seed, drawn on the CPU so every device gets the same values."""
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
