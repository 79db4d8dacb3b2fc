"""Every GPU measurement in one command, one table, each figure beside its goal.

    python -m benchmarks.gpu_suite                 # an NVIDIA GPU; random weights of the real models; at most 8 minutes
    python -m benchmarks.gpu_suite --dry-run       # the CPU: every configuration built and run at a reduced size

Rows, most important first (a row that would start after the time budget is listed as skipped):
1. sd-turbo 512², 1-step img2img, 1 stream and 8 streams batched, per engine (eager, compile,
   onnx, tensorrt): frames per second (goal on an H100: >= 200 for one stream, >= 600 for eight);
2. Wan2.1 1.3B causal, 480x832 video-to-video, 1-4 steps, with the transformer compiled and eager:
   fps, time to first frame and peak memory (goal on one H100: >= 64 fps, <= 0.3 s);
3. SDXL-turbo 512², 1 step, one stream, default engine and eager;
4. with two GPUs, the Wan transformer split across them by layers against one GPU alone.
Weights are random (`--random-weights`: the real shapes and FLOPs, nothing downloaded). Engines
are built before timing and kept in the engine cache, so a second run spends its budget measuring.

`--dry-run` maps each configuration to its tiny preset (sd-turbo -> tiny, SDXL-turbo -> tiny-sdxl,
Wan -> tiny-video) at a small size, on the CPU, with a few frames; the stage split runs on two CPU
processes. It checks that every configuration builds and runs; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmarks.common import machine, moving_pictures
from benchmarks.scheduler import stage_comparison
from benchmarks.stream_diffusion import time_streams
from benchmarks.video_pipeline import time_stream
from models.engines.kinds import EngineChoice, EngineSpecError
from pipelines.registry import ModelOptions, load_pipeline

BUDGET_S = 8 * 60
ENGINES = ("eager", "compile", "onnx", "tensorrt")


@dataclass(frozen=True)
class Scale:
    """Where and how big: the real run, or the dry run's stand-ins."""

    device: str
    presets: dict[str, str]
    image_size: int
    video_size: tuple[int, int]  # height, width
    frames: int
    chunks: int


REAL = Scale("cuda", {"sd": "sd-turbo", "sdxl": "sdxl-turbo", "video": "wan-causal-1.3b"}, 512, (480, 832), 24, 4)
DRY = Scale("cpu", {"sd": "tiny", "sdxl": "tiny-sdxl", "video": "tiny-video"}, 64, (64, 112), 3, 1)


class Suite:
    def __init__(self, scale: Scale, budget_s: float):
        self.scale = scale
        self.deadline = time.monotonic() + budget_s
        self.rows: list[tuple[str, str, str, str, str]] = []

    def row(self, what: str, engine: str, figure: str, goal: str, note: str = "") -> None:
        self.rows.append((what, engine, figure, goal, note))
        print(f"| {what} | {engine} | {figure} | {goal} | {note} |", flush=True)

    def measure(self, what: str, engine: str, goal: str, run: Callable[[], list[tuple[str, str, str, str]]]) -> None:
        """Run one measurement (rows of what, figure, goal, note), unless the budget is spent or
        the engine cannot run here; a failure is a row too, never the end of the suite."""
        if time.monotonic() > self.deadline:
            self.row(what, engine, "–", goal, "skipped: time budget spent")
            return
        try:
            rows = run()
        except EngineSpecError as err:
            self.row(what, engine, "–", goal, f"not run: {err}")
            return
        except Exception as err:  # noqa: BLE001 - reported in the table; the other rows still run
            self.row(what, engine, "–", goal, f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            return
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        for label, figure, row_goal, note in rows:
            self.row(label, engine, figure, row_goal, note)


def options(scale: Scale, family: str, engine: str) -> ModelOptions:
    EngineChoice.parse(engine).kind_for("unet", torch.device(scale.device))  # refuses an engine this machine cannot run
    return ModelOptions(preset=scale.presets[family], device=scale.device, random_weights=True, engine=engine)


def image_fps(scale: Scale, family: str, engine: str, streams: list[int]) -> list[tuple[str, str, str, str]]:
    pipe = load_pipeline("stream-diffusion", options(scale, family, engine))
    size = scale.image_size
    params = {"width": size, "height": size, "prompt": "a watercolor landscape", "t_index_list": [35], "cfg_type": "none"}
    frames = moving_pictures(size, size, scale.frames)
    rows = []
    for count in streams:
        tick_s = time_streams(pipe, params, frames, count, batched=True)
        rows.append((count, count / tick_s))
    return [(f"{scale.presets[family]} {size}², 1-step img2img, {count} stream{'s' * (count > 1)}", f"{fps:.1f} fps",
             _image_goal(family, count), "aggregate" if count > 1 else "") for count, fps in rows]


def _image_goal(family: str, streams: int) -> str:
    if family != "sd":
        return "– (none set)"
    return ">= 200 fps (H100)" if streams == 1 else ">= 600 fps aggregate (H100)"


def video_rows(scale: Scale, engine: str) -> list[tuple[str, str, str, str]]:
    pipe = load_pipeline("rolling-kv-video", options(scale, "video", engine))
    height, width = scale.video_size
    pictures = moving_pictures(width, height, 64)
    base = {"width": width, "height": height, "prompt": "a watercolor landscape", "mode": "img2img"}
    time_stream(pipe, {**base, "steps": 1}, pictures, 1)  # lazy initialisation, not timed
    rows = []
    for steps in (1, 2, 3, 4):
        r = time_stream(pipe, {**base, "steps": steps}, pictures, scale.chunks)
        rows.append((f"{scale.presets['video']} {height}x{width} video-to-video, {steps} step{'s' * (steps > 1)}",
                     f"{r['fps']:.1f} fps, TTFF {r['ttff']:.2f} s" + (f", peak {r['memory']:.1f} GiB" if r["memory"] == r["memory"] else ""),
                     ">= 64 fps, TTFF <= 0.3 s (one H100)", ""))
    return rows


def split_rows(scale: Scale) -> list[tuple[str, str, str, str]]:
    devices = ["cpu", "cpu"] if scale.device == "cpu" else [f"cuda:{i}" for i in range(2)]
    height = scale.video_size[0]
    rows = stage_comparison(scale.presets["video"], devices, height, chunks=scale.chunks * 3)
    return [(f"{scale.presets['video']} {height}², 2 streams, 2 steps: {name}", f"{ms:.0f} ms/chunk", "faster split than alone",
             "" if i == 0 else "a split forward runs its layers eager") for i, (name, ms) in enumerate(rows)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, tiny presets at a small size: checks every configuration runs")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="stop starting rows after this many seconds")
    parser.add_argument("--engines", default=",".join(ENGINES), help="engines of the sd-turbo rows")
    args = parser.parse_args(argv)
    scale = DRY if args.dry_run else REAL
    if scale.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: run with --dry-run to check the suite on the CPU")
    if args.dry_run:
        torch.set_num_threads(1)
    suite = Suite(scale, args.budget_s)
    card = torch.cuda.get_device_name() if scale.device == "cuda" else "none (dry run: figures are not measurements)"
    print(f"# GPU suite{' (dry run)' if args.dry_run else ''}: {machine()}; card: {card}; budget {args.budget_s:.0f} s\n")
    print("| measurement | engine | figure | goal | note |\n|---|---|---|---|---|", flush=True)
    started = time.monotonic()
    engines = args.engines.split(",")
    for engine in engines:
        suite.measure(f"{scale.presets['sd']} {scale.image_size}², 1-step img2img", engine, _image_goal("sd", 1),
                      lambda engine=engine: image_fps(scale, "sd", engine, [1, 8]))
    for engine in ("compile", "eager"):
        suite.measure(f"{scale.presets['video']} video-to-video", engine, ">= 64 fps, TTFF <= 0.3 s (one H100)",
                      lambda engine=engine: video_rows(scale, engine))
    for engine in ("auto", "eager"):
        suite.measure(f"{scale.presets['sdxl']} {scale.image_size}², 1-step img2img", engine, _image_goal("sdxl", 1),
                      lambda engine=engine: image_fps(scale, "sdxl", engine, [1]))
    if scale.device == "cpu" or torch.cuda.device_count() >= 2:
        suite.measure("Wan transformer split over 2 devices", "auto", "faster split than alone", lambda: split_rows(scale))
    else:
        suite.row("Wan transformer split over 2 GPUs", "auto", "–", "faster split than alone", "skipped: one GPU here")
    print(f"\n# {len(suite.rows)} rows in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
