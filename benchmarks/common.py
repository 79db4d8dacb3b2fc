"""What every benchmark prints and feeds: the machine it ran on, progress while it measures, synthetic
moving pictures, and a device sync so GPU timings cover the work and not just its launch.

Rows go to stdout as soon as they are measured (line-buffered even into a file or a pipe, where
Python would otherwise hold them until the end); progress goes to stderr, so a table redirected
to a file stays clean and a person watching sees the run move.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

from pipelines.base import Pipeline
from pipelines.registry import ModelOptions, load_pipeline

sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
_STARTED = time.perf_counter()


def progress(message: str) -> None:
    """What the benchmark is doing now, with the seconds since it started, on stderr."""
    print(f"[{time.perf_counter() - _STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


def machine() -> str:
    """CPU model, cores, GPU (if any), torch threads and versions: the line every table starts with."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {os.cpu_count()} cores{gpu}; {torch.get_num_threads()} torch threads; "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def moving_pictures(width: int, height: int, count: int) -> list[np.ndarray]:
    """Random texture sliding 4 pixels per frame: every frame differs, neighbours are related."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return [np.roll(base, 4 * k, axis=1) for k in range(count)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def add_model_arguments(parser: argparse.ArgumentParser, preset: str) -> None:
    """Which model a benchmark loads and where it runs, the same flags in every benchmark."""
    parser.add_argument("--preset", default=preset)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--random-weights", action="store_true", help="the preset's real shapes, no download")
    parser.add_argument("--threads", type=int, help="CPU threads for compute (1 gives steadier numbers on a busy machine)")


def load_timed(pipeline: str, args: argparse.Namespace) -> tuple[Pipeline, float]:
    """The pipeline built from `add_model_arguments` flags, and the seconds that took."""
    progress(f"loading {pipeline} ({args.preset}{', random weights' if args.random_weights else ''})")
    start = time.perf_counter()
    options = ModelOptions(args.preset, args.device, args.dtype, random_weights=args.random_weights, threads=args.threads)
    pipe = load_pipeline(pipeline, options)
    return pipe, time.perf_counter() - start
