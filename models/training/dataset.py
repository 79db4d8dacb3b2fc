"""The training set: N input crops, each with its target in every style, as uint8 arrays.

Made once per run in worker processes (the filters are numpy), seeded per chunk so the result
does not depend on how many workers made it, and cached in the work folder.
"""

from __future__ import annotations

from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models.training import scenes
from models.training.styles import STYLES

CHUNK = 50


def _make_chunk(job: tuple[int, int, int, int]) -> np.ndarray:
    seed, chunk, count, size = job
    rng = np.random.default_rng([seed, chunk])
    photos = scenes.training_photos()
    out = np.empty((count, len(STYLES), size, size, 3), np.uint8)
    for k in range(count):
        image = scenes.sample_image(rng, photos, len(scenes.COLOUR_PHOTOS), size)
        for s, (style_filter, _) in enumerate(STYLES.values()):
            out[k, s] = np.round(np.clip(style_filter(image), 0.0, 1.0) * 255)
    return out


def make_dataset(seed: int, count: int, size: int, workers: int, cache_dir: Path) -> np.ndarray:
    """(count, num_styles, size, size, 3) uint8; index 0 of the style axis is the input ("photo")."""
    cache = cache_dir / f"data-seed{seed}-n{count}-s{size}.npy"
    if cache.exists():
        return np.load(cache)
    jobs = [(seed, c, min(CHUNK, count - c * CHUNK), size) for c in range(-(-count // CHUNK))]
    with get_context("spawn").Pool(workers) as pool:
        chunks = list(tqdm(pool.imap(_make_chunk, jobs), total=len(jobs), desc="data", unit="chunk"))
    data = np.concatenate(chunks)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(cache, data)
    return data


def held_out_images(size: int) -> list[np.ndarray]:
    """Float RGB images never trained on: two photos and a procedural scene from a new seed."""
    photos = [scenes.centre_crop(p, size) for p in scenes.load_photos(scenes.HELD_OUT_PHOTOS)]
    return photos + [scenes.procedural_scene(np.random.default_rng(scenes.HELD_OUT_SEED), size)]
