"""Thumbnails for the demo's style picker: each style a pipeline knows, rendered by its own model.

Nothing is drawn by hand: a sample picture (a procedural scene of the kind the style model trained
on, the same one every time) goes through the pipeline once per style, on the compute worker,
the first time a page asks; the PNGs are kept for the server's lifetime. The sample itself is
thumbnail `input`, so the page can show what each style starts from.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np
from PIL import Image

from models.training.scenes import procedural_scene
from pipelines.base import Pipeline
from streaming.frames import VideoFrame

THUMBNAIL_SIDE = 128
SAMPLE_SEED = 3  # a scene with a face, rings, shapes and text: every style has edges and colours to work on
INPUT = "input"


def sample_picture(side: int) -> np.ndarray:
    return (procedural_scene(np.random.default_rng(SAMPLE_SEED), side) * 255).round().astype(np.uint8)


def restyled(pipeline: Pipeline, picture: np.ndarray, prompt: str) -> np.ndarray:
    """One picture through a fresh stream of `pipeline` with `prompt`, drained (a multi-step pipe gives it back later)."""
    state = pipeline.new_state({"prompt": prompt}, stream_id="thumbnail")
    frames = pipeline.step([(state, VideoFrame(picture, 0, 0.0, "thumbnail"))])[0].frames
    while not frames:
        frames = pipeline.step([(state, None)])[0].frames
    pipeline.close_state(state)
    return frames[0].image


def render_thumbnails(pipeline: Pipeline) -> dict[str, bytes]:
    """PNG bytes by style (and INPUT), at THUMBNAIL_SIDE. Runs on the compute worker: it owns the device."""
    params = pipeline.new_state(None, stream_id="thumbnail").params
    picture = sample_picture(min(getattr(params, "width", 256), getattr(params, "height", 256)))
    images = {INPUT: picture, **{style: restyled(pipeline, picture, style) for style in pipeline.styles()}}
    return {name: _png(image) for name, image in images.items()}


def _png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.LANCZOS).save(out, format="PNG", optimize=True)
    return out.getvalue()


class StyleThumbnails:
    """Each pipeline's thumbnails, rendered once (on the worker, through `call`) and kept."""

    def __init__(self, call: Callable[[Callable[[], Any]], Future]) -> None:
        self._call = call
        self._rendered: dict[str, asyncio.Future[dict[str, bytes]]] = {}

    async def of(self, name: str, pipeline: Pipeline) -> dict[str, bytes]:
        if name not in self._rendered:  # concurrent first requests share one rendering
            self._rendered[name] = asyncio.wrap_future(self._call(lambda: render_thumbnails(pipeline)))
        return await asyncio.shield(self._rendered[name])
