"""What the creative-control tests share (tests/test_controlnet*.py, test_ip_adapter.py, test_lora.py):
a small moving clip, running streams batched together, and comparing pictures."""

from __future__ import annotations

import numpy as np

from streaming.frames import VideoFrame


def clip(n: int, seed: int = 0, step: int = 1) -> list[np.ndarray]:
    """64x64 frames: a noisy background with a bright square moving `step` pixels a frame."""
    rng = np.random.default_rng(seed)
    base = (rng.integers(0, 256, (64, 64, 3)) // 2).astype(np.uint8)
    frames = []
    for k in range(n):
        image = base.copy()
        image[8 + step * k : 30 + step * k, 10:34] = 255
        frames.append(image)
    return frames


def run_together(pipe, states, frames) -> list[dict[int, np.ndarray]]:
    """Every stream gets the same frames, all in one step per frame, then drained together;
    per stream, its output pictures by frame id."""
    outputs: list[dict[int, np.ndarray]] = [{} for _ in states]
    for k, image in enumerate(frames):
        for out, result in zip(outputs, pipe.step([(s, VideoFrame(image, k, k / 30)) for s in states])):
            out.update({f.frame_id: f.image for f in result.frames})
    while any(pipe.in_flight(s) for s in states):
        for out, result in zip(outputs, pipe.step([(s, None) for s in states])):
            out.update({f.frame_id: f.image for f in result.frames})
    return outputs


def decode(pipe, latent) -> np.ndarray:
    return ((pipe.models.decode_latents(latent)[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()


def assert_close(a: np.ndarray, b: np.ndarray) -> None:
    """uint8 pictures equal up to rounding of float noise (at most 1 level, on few pixels)."""
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


def differs(a: np.ndarray, b: np.ndarray) -> bool:
    """Clearly different pictures: well beyond the rounding `assert_close` allows."""
    diff = np.abs(a.astype(int) - b.astype(int))
    return bool(diff.max() > 4 and (diff > 1).mean() > 0.05)


def run_with_latents(pipe, state, frames, monkeypatch) -> tuple[dict[int, np.ndarray], list]:
    """One stream through `run_together`, also keeping the x0 latent of each frame that leaves, in
    frame order: latents show differences the tiny models' decoder squashes below a grey level."""
    latents = []
    decode_latents = pipe.models.decode_latents

    def keeping(batch):
        latents.extend(batch)
        return decode_latents(batch)

    monkeypatch.setattr(pipe.models, "decode_latents", keeping)
    outputs = run_together(pipe, [state], frames)[0]
    monkeypatch.undo()
    return outputs, latents
