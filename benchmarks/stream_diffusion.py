"""Stream-batched diffusion: speed of the pipeline, measured side by side in one run.

    python -m benchmarks.stream_diffusion                       # CPU, tiny preset, small sizes
    python -m benchmarks.stream_diffusion --preset sd-turbo --random-weights --device cuda --size 512

Prints three tables:
1. img2img and txt2img at 1-4 steps: frames per second and per-frame latency (input in ->
   its output out; with Stream Batch a frame leaves after N calls).
2. Stream Batch against sequential denoising of the same frames (N UNet calls per frame).
3. 1, 2 and 4 streams batched into one step against the same streams stepped one after another.
Absolute times on a shared CPU are noisy; the ratios compare runs made back to back.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import add_model_arguments, load_timed, machine, moving_pictures, progress, sync
from pipelines.stream_diffusion.reference import denoise_sequential
from streaming.frames import VideoFrame

SCHEDULES = {1: [35], 2: [32, 45], 3: [20, 32, 45], 4: [0, 16, 32, 45]}


def time_stream(pipe, params: dict, frames: list[np.ndarray], warmup: int) -> tuple[float, float]:
    """(seconds per frame in steady state, seconds from a frame's entry to its output)."""
    state = pipe.new_state(params)
    txt2img = params["mode"] == "txt2img"
    entered, latencies = {}, []
    for k in range(warmup):
        pipe.step([(state, None if txt2img else VideoFrame(frames[k % len(frames)], -1 - k))])
    sync(pipe.models.device)
    start = time.perf_counter()
    for k, image in enumerate(frames):
        frame = VideoFrame(image, k)
        entered[k] = time.perf_counter()
        result = pipe.step([(state, frame if not txt2img else VideoFrame(np.empty((0, 0, 3), np.uint8), k))])[0]
        now = time.perf_counter()
        latencies += [now - entered[f.frame_id] for f in result.frames if f.frame_id in entered]
    elapsed = time.perf_counter() - start
    return elapsed / len(frames), float(np.median(latencies))


def time_sequential(pipe, params: dict, frames: list[np.ndarray]) -> float:
    """Seconds per frame when each frame is denoised alone through its N steps."""
    state = pipe.new_state(params)
    decode = pipe.models.decode_latents
    denoise_sequential(pipe, state, frames[0])  # warm-up
    start = time.perf_counter()
    for image in frames:
        decode(denoise_sequential(pipe, state, image)).cpu()
    return (time.perf_counter() - start) / len(frames)


def time_streams(pipe, params: dict, frames: list[np.ndarray], count: int, batched: bool) -> float:
    """Seconds per tick (every stream advanced by one frame)."""
    states = [pipe.new_state({**params, "seed": s}) for s in range(count)]
    for k in range(3):
        pipe.step([(s, VideoFrame(frames[k % len(frames)], k)) for s in states])
    start = time.perf_counter()
    for k, image in enumerate(frames):
        if batched:
            pipe.step([(s, VideoFrame(image, k)) for s in states])
        else:
            for s in states:
                pipe.step([(s, VideoFrame(image, k))])
    sync(pipe.models.device)
    return (time.perf_counter() - start) / len(frames)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, preset="tiny")
    parser.add_argument("--size", type=int, default=128, help="square frame side in pixels")
    parser.add_argument("--frames", type=int, default=12, help="timed frames per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per measurement (medians; alternating in comparisons)")
    args = parser.parse_args(argv)
    if args.frames < 5:
        parser.error("--frames must be at least 5: with 4 steps the first frame leaves on the 4th call")

    pipe, load_s = load_timed("stream-diffusion", args)
    frames = moving_pictures(args.size, args.size, args.frames)
    base = {"width": args.size, "height": args.size, "prompt": "a watercolor landscape", "cfg_type": "none"}

    print(f"# stream-diffusion benchmark: preset {args.preset}{' (random weights)' if args.random_weights else ''}, "
          f"{args.size}x{args.size}, {pipe.models.dtype}, {machine()}; models ready in {load_s:.2f} s\n")

    print("| mode | steps | fps | ms/frame | frame latency ms |")
    print("|---|---|---|---|---|")
    configs = [(mode, steps) for mode in ("img2img", "txt2img") for steps in SCHEDULES]
    runs: dict[tuple[str, int], list[tuple[float, float]]] = {c: [] for c in configs}
    for round_ in range(args.rounds):  # every configuration once per round, so load changes spread evenly
        for mode, steps in configs:
            progress(f"round {round_ + 1}/{args.rounds}: {mode}, {steps} steps")
            params = {**base, "mode": mode, "t_index_list": SCHEDULES[steps]}
            runs[mode, steps].append(time_stream(pipe, params, frames, warmup=steps + 1))
    for (mode, steps), samples in runs.items():
        per_frame, latency = np.median(samples, axis=0)
        print(f"| {mode} | {steps} | {1 / per_frame:.1f} | {per_frame * 1e3:.1f} | {latency * 1e3:.1f} |")

    print("\n| steps | stream batch ms/frame | sequential ms/frame | speed-up |")
    print("|---|---|---|---|")
    for steps in (2, 3, 4):
        params = {**base, "mode": "img2img", "t_index_list": SCHEDULES[steps]}
        batched, sequential = side_by_side(
            lambda: time_stream(pipe, params, frames, warmup=steps + 1)[0],
            lambda: time_sequential(pipe, params, frames), args.rounds)
        print(f"| {steps} | {batched * 1e3:.1f} | {sequential * 1e3:.1f} | {sequential / batched:.2f}x |")

    print("\n| streams | batched ms/tick | one after another ms/tick | speed-up |")
    print("|---|---|---|---|")
    params = {**base, "mode": "img2img", "t_index_list": SCHEDULES[2]}
    for count in (1, 2, 4):
        batched, apart = side_by_side(
            lambda: time_streams(pipe, params, frames, count, batched=True),
            lambda: time_streams(pipe, params, frames, count, batched=False), args.rounds)
        print(f"| {count} | {batched * 1e3:.1f} | {apart * 1e3:.1f} | {apart / batched:.2f}x |")


def side_by_side(first, second, rounds: int) -> tuple[float, float]:
    """Median of each measurement over rounds that alternate them, so load changes on a shared
    machine hit both sides alike."""
    a, b = [], []
    for _ in range(rounds):
        a.append(first())
        b.append(second())
    return float(np.median(a)), float(np.median(b))


if __name__ == "__main__":
    main()
