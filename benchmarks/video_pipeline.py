"""Rolling-KV video pipeline: speed measured side by side in one run.

    python -m benchmarks.video_pipeline                                   # CPU, small-video, 256x256
    python -m benchmarks.video_pipeline --preset wan-causal-1.3b --random-weights --device cuda \\
        --dtype bf16 --size 480x832 --size 512x512

Prints, per size:
1. video-to-video and text-to-video, each cache mode (stream-batch, single-slot,
   clean-context) at 1-4 steps: pictures per second in steady state, time to first frame (the
   compute of the first chunk, after its 5 pictures arrived; fresh stream, warm process), and the
   median latency of a picture (its arrival to its output; a chunk waits for its 4 pictures
   too, so at the camera's pace add up to 3 frame intervals), plus peak accelerator memory.
2. The stream batch against plain sequential per-slot generation of the same chunks.
3. 1, 2 and 4 streams batched into one step against the same streams stepped one after another.
Absolute times on a shared CPU are noisy; the ratios compare runs made back to back.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import add_model_arguments, load_timed, machine, moving_pictures, progress, sync
from pipelines.rolling_kv.reference import generate_sequential
from streaming.frames import VideoFrame

MODES = ("stream-batch", "single-slot", "clean-context")


def time_stream(pipe, params: dict, pictures: list[np.ndarray], chunks: int) -> dict[str, float]:
    """TTFF, steady-state pictures per second and median picture latency of one fresh stream."""
    device = pipe.models.device
    state = pipe.new_state(params)
    txt2img = params["mode"] == "txt2img"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    entered: dict[int, float] = {}
    latencies: list[float] = []
    produced, ttff, first_out_at, k = 0, None, None, 0
    steady = 5 + 4 * (params["steps"] + 1)  # first chunk plus the stream batch's warm-up
    target = steady + 4 * chunks
    while produced < target:
        frame = None if txt2img else VideoFrame(pictures[k % len(pictures)], k)
        started = time.perf_counter()
        entered[k] = started
        frames = pipe.step([(state, frame)])[0].frames
        sync(device)
        now = time.perf_counter()
        if frames and ttff is None:
            ttff = now - started
        if produced < steady <= produced + len(frames):
            first_out_at = now
        produced += len(frames)
        if not txt2img and produced > steady:
            latencies += [now - entered[f.frame_id] for f in frames]
        k += 1
    fps = (produced - steady) / (time.perf_counter() - first_out_at)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"ttff": ttff, "fps": fps, "latency": float(np.median(latencies)) if latencies else float("nan"), "memory": memory}


def time_sequential(pipe, params: dict, pictures: list[np.ndarray], chunks: int) -> float:
    """Seconds per chunk of plain sequential generation (the stream batch's reference)."""
    spec = pipe.params_model(**params)
    generate_sequential(pipe, spec, 2, pictures)  # warm-up
    sync(pipe.models.device)
    start = time.perf_counter()
    generate_sequential(pipe, spec, chunks + 1, pictures)
    sync(pipe.models.device)
    return (time.perf_counter() - start) / (chunks + 1)


def time_streams(pipe, params: dict, pictures: list[np.ndarray], count: int, batched: bool, chunks: int) -> float:
    """Seconds per chunk tick (every stream advanced by one chunk of 4 pictures)."""
    states = [pipe.new_state({**params, "seed": s}) for s in range(count)]
    ticks = 5 + 4 * (params["steps"] + 1)
    for k in range(ticks):  # warm every stream up
        pipe.step([(s, VideoFrame(pictures[k % len(pictures)], k)) for s in states])
    sync(pipe.models.device)
    start = time.perf_counter()
    for k in range(ticks, ticks + 4 * chunks):
        frame = VideoFrame(pictures[k % len(pictures)], k)
        if batched:
            pipe.step([(s, frame) for s in states])
        else:
            for s in states:
                pipe.step([(s, frame)])
    sync(pipe.models.device)
    return (time.perf_counter() - start) / chunks


def parse_size(text: str) -> tuple[int, int]:
    height, _, width = text.partition("x")
    return int(height), int(width or height)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, preset="small-video")
    parser.add_argument("--size", type=parse_size, action="append", help="HEIGHTxWIDTH (repeatable; default 256x256)")
    parser.add_argument("--chunks", type=int, default=4, help="timed chunks per measurement after warm-up")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 3, 4])
    args = parser.parse_args(argv)
    pipe, load_s = load_timed("rolling-kv-video", args)
    sizes = args.size or [(256, 256)]
    print(f"# rolling-kv-video benchmark: preset {args.preset}{' (random weights)' if args.random_weights else ''}, "
          f"{pipe.models.dtype}, {machine()}; models ready in {load_s:.2f} s; "
          f"cache 6 latent frames (3 sinks), {args.chunks} timed chunks per row\n")

    for height, width in sizes:
        pictures = moving_pictures(width, height, 64)
        base = {"width": width, "height": height, "prompt": "a watercolor landscape", "kv_cache_frames": 6, "sink_frames": 3}
        tokens = pipe.models.transformer.tokens_per_frame(*pipe.models.latent_size(width, height))
        time_stream(pipe, {**base, "mode": "img2img", "steps": 2}, pictures, 1)  # lazy initialisation, not timed
        print(f"## {height}x{width} ({tokens} tokens per latent frame)\n")
        print("| input | cache mode | steps | fps | TTFF ms | picture latency ms | peak GiB |")
        print("|---|---|---|---|---|---|---|")
        for mode in ("img2img", "txt2img"):
            for kv_mode in MODES:
                for steps in args.steps:
                    progress(f"{height}x{width}: {mode}, {kv_mode}, {steps} steps")
                    r = time_stream(pipe, {**base, "mode": mode, "kv_mode": kv_mode, "steps": steps}, pictures, args.chunks)
                    print(f"| {'video' if mode == 'img2img' else 'text'} | {kv_mode} | {steps} | {r['fps']:.1f} | "
                          f"{r['ttff'] * 1e3:.0f} | {r['latency'] * 1e3:.0f} | {r['memory']:.2f} |")

        print("\n| steps | stream batch ms/chunk | sequential ms/chunk | speed-up |")
        print("|---|---|---|---|")
        for steps in [s for s in args.steps if s > 1]:
            progress(f"{height}x{width}: stream batch against sequential, {steps} steps")
            params = {**base, "mode": "img2img", "steps": steps}
            batched = 4 / time_stream(pipe, params, pictures, args.chunks)["fps"]
            sequential = time_sequential(pipe, params, pictures, args.chunks)
            print(f"| {steps} | {batched * 1e3:.0f} | {sequential * 1e3:.0f} | {sequential / batched:.2f}x |")

        print("\n| streams | batched ms/chunk | one after another ms/chunk | speed-up |")
        print("|---|---|---|---|")
        params = {**base, "mode": "img2img", "steps": 2}
        for count in (1, 2, 4):
            progress(f"{height}x{width}: {count} streams batched and apart")
            batched = time_streams(pipe, params, pictures, count, True, args.chunks)
            apart = time_streams(pipe, params, pictures, count, False, args.chunks)
            print(f"| {count} | {batched * 1e3:.0f} | {apart * 1e3:.0f} | {apart / batched:.2f}x |")
        print()


if __name__ == "__main__":
    main()
