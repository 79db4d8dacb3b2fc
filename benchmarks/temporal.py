"""Temporal consistency over a long run: one clip through both video pipelines, side by side.

    python -m benchmarks.temporal                       # CPU: 2 minutes of video at 8 fps, 64x64
    python -m benchmarks.temporal --seconds 300 --size 128
    python -m benchmarks.temporal --only rolling-kv-video --video-preset wan-causal-1.3b --model-dir DIR \
        --device cuda --size 480                        # a real checkpoint (square 480x480)

The same synthetic clip (a textured background panning slowly, a bright square moving in a
circle, and a 4-second pause every 15 seconds so the similarity filter has something to skip) goes
through stream-diffusion (the embedded style model; similarity filter and `add_noise` on and off)
and rolling-kv-video (tiny-video; steps, cache modes, eviction and position policies, and one
text-to-video stream). Every frame pair is measured (streaming.consistency):
- warp error (mean squared RGB difference after warping by the input's flow, occlusions masked,
  in thousandths) beside the input's own (the floor the flow allows), flicker (change of a 4x4
  grid of mean colours, in percent) beside the input's;
- drift: sharpness and contrast ratios and colour shift of the last `--window` seconds against
  the first `--window` seconds;
- cost: the pipeline's step time per output frame, and what the live default (one pair in
  SAMPLE_EVERY, measured on a background thread) costs per frame, as a share of it. A second
  table sets that cost beside the steps of the CPU presets at the size they stream at.
tiny-video has random weights: its rows show the measures at work, not how the published
checkpoints behave (for that, `--video-preset` with `--model-dir`).
"""

from __future__ import annotations

import argparse
import time
from statistics import fmean

import cv2
import numpy as np
import torch

from benchmarks.common import machine
from pipelines.registry import ModelOptions, load_pipeline
from streaming.consistency import SAMPLE_EVERY, ConsistencyMeter, drift_between, measure_pair
from streaming.frames import VideoFrame

PAUSE_EVERY_S, PAUSE_S = 15.0, 4.0

# Two steps, so that add_noise (re-noising between steps) has a step to act between.
STREAM_DIFFUSION = [
    ("2 steps, filter off, add_noise on", {"t_index_list": [32, 45]}),
    ("2 steps, filter off, add_noise off", {"t_index_list": [32, 45], "add_noise": False}),
    ("2 steps, filter 0.98, add_noise on", {"t_index_list": [32, 45], "filter_threshold": 0.98}),
    ("2 steps, filter 0.98, add_noise off", {"t_index_list": [32, 45], "filter_threshold": 0.98, "add_noise": False}),
]
ROLLING_KV = [
    ("v2v stream-batch 2 steps (default)", {}),
    ("v2v stream-batch 1 step", {"steps": 1}),
    ("v2v stream-batch 3 steps", {"steps": 3}),
    ("v2v single-slot same-slot", {"kv_mode": "single-slot"}),
    ("v2v single-slot next-slot (upstream)", {"kv_mode": "single-slot", "step_rewrite": "next-slot"}),
    ("v2v clean-context", {"kv_mode": "clean-context"}),
    ("v2v adaptive-sink", {"eviction": "adaptive-sink"}),
    ("v2v importance pool", {"eviction": "importance"}),
    ("v2v absolute positions", {"positions": "absolute"}),
    ("v2v cache-relative positions", {"positions": "cache-relative"}),
    ("t2v stream-batch 2 steps", {"mode": "txt2img"}),
]


def clip(seconds: float, fps: float, size: int) -> list[np.ndarray]:
    """The benchmark clip: a smooth texture panning 1 px a frame, a square circling over it,
    everything still for PAUSE_S seconds every PAUSE_EVERY_S."""
    rng = np.random.default_rng(0)
    texture = cv2.resize(rng.integers(40, 220, (8, 8, 3)).astype(np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
    frames, t = [], 0.0
    for k in range(round(seconds * fps)):
        if (k / fps) % PAUSE_EVERY_S < PAUSE_EVERY_S - PAUSE_S:
            t += 1  # the clip's own time only moves outside the pauses
        image = np.roll(texture, int(t), axis=1)
        angle = t / fps * 2 * np.pi / 6
        cx, cy = size / 2 + size / 4 * np.cos(angle), size / 2 + size / 4 * np.sin(angle)
        s = max(3, size // 8)
        image[int(cy) - s : int(cy) + s, int(cx) - s : int(cx) + s] = (250, 230, 60)
        frames.append(image)
    return frames


def run(pipe, params: dict, pictures: list[np.ndarray], fps: float, every: int, window_s: float) -> dict:
    """One stream over the clip (or as many generated frames), every output measured inline."""
    state = pipe.new_state(params)
    meter = ConsistencyMeter(every=every, inline=True, keep_all=True)
    text = not pipe.needs_input(state.params)
    step_s, outputs, k = 0.0, 0, 0

    def deliver(frames):
        nonlocal outputs
        for f in frames:
            meter.observe_output(f, at=outputs / fps)  # video time: the pictures leave at the clip's pace
            outputs += 1

    while outputs < len(pictures):
        frame = None
        if not text:
            if k >= len(pictures):
                break
            frame = VideoFrame(pictures[k], k, k / fps)
            meter.note_input(frame)
            k += 1
        started = time.perf_counter()
        result = pipe.step([(state, frame)])[0]
        step_s += time.perf_counter() - started
        deliver(result.frames)
    while not text and pipe.in_flight(state):
        started = time.perf_counter()
        result = pipe.step([(state, None)])[0]
        step_s += time.perf_counter() - started
        deliver(result.frames)
    return summarise(meter, step_s / max(outputs, 1), window_s)


def summarise(meter: ConsistencyMeter, step_s: float, window_s: float) -> dict:
    """Means over the run, drift of its last `window_s` seconds against its first, and costs."""
    samples = meter.history or []
    start, end = samples[0].at, samples[-1].at
    first = [s.output for s in samples if s.at - start < window_s]
    last = [s.output for s in samples if end - s.at < window_s]

    def mean(values):
        known = [v for v in values if v is not None]
        return fmean(known) if known else None

    return {
        "warp": mean(s.pair.warp_error for s in samples), "warp_in": mean(s.pair.warp_error_input for s in samples),
        "flicker": mean(s.pair.flicker for s in samples), "flicker_in": mean(s.pair.flicker_input for s in samples),
        "drift": drift_between(first, last),
        "step_ms": step_s * 1e3,
        "live_ms": fmean(s.cost_s for s in samples) * 1e3 / SAMPLE_EVERY,
    }


def row(name: str, settings: str, r: dict) -> str:
    def f(v, scale=1.0, digits=2):
        return "–" if v is None else f"{v * scale:.{digits}f}"

    d = r["drift"]
    return (f"| {name} | {settings} | {f(r['warp'], 1e3)} ({f(r['warp_in'], 1e3)}) | {f(r['flicker'], 1e2)} ({f(r['flicker_in'], 1e2)}) | "
            f"{f(d['sharpness_ratio'])} | {f(d['contrast_ratio'])} | {f(d['color_shift'], 1, 3)} | {r['step_ms']:.1f} | "
            f"{r['live_ms']:.2f} | {100 * r['live_ms'] / r['step_ms']:.1f} % |")


def cost_row(name: str, preset: str, size: int, threads: int, frames: int = 40) -> str:
    """Step time per output frame at `size` (after the pipe has filled) beside the cost of the
    live measurement: one pair measured (mean over the run's pairs) divided by SAMPLE_EVERY."""
    pipe = load_pipeline(name, ModelOptions(preset=preset, device="cpu", threads=threads))
    pictures = clip(frames / 8, 8.0, size)
    state = pipe.new_state({"prompt": "a watercolour landscape", "width": size, "height": size})
    outputs, step_s = [], 0.0
    for k, picture in enumerate(pictures):
        started = time.perf_counter()
        produced = pipe.step([(state, VideoFrame(picture, k))])[0].frames
        if k >= frames // 2:  # timed once the pipe is full
            step_s += time.perf_counter() - started
        outputs += [(pictures[f.frame_id], f.image) for f in produced]
    pair_s = []
    for (prev_in, prev_out), (now_in, now_out) in zip(outputs, outputs[1:]):
        started = time.perf_counter()
        measure_pair(prev_out, now_out, prev_in, now_in)
        pair_s.append(time.perf_counter() - started)
    step_ms, pair_ms = step_s * 1e3 / (frames - frames // 2), fmean(pair_s) * 1e3
    live_ms = pair_ms / SAMPLE_EVERY
    return f"| {name} | {preset} | {size}x{size} | {step_ms:.1f} | {pair_ms:.2f} | {live_ms:.2f} | {100 * live_ms / step_ms:.1f} % |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the clip")
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--size", type=int, default=64, help="square side in pixels (a multiple of 16)")
    parser.add_argument("--every", type=int, default=2, help="measure one frame pair in this many (the table; live uses 8)")
    parser.add_argument("--window", type=float, default=10.0, help="drift: seconds at each end compared")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier numbers on a shared machine)")
    parser.add_argument("--only", choices=["stream-diffusion", "rolling-kv-video"], help="run one pipeline's rows")
    parser.add_argument("--video-preset", default="tiny-video", help="rolling-kv-video preset of the quality rows")
    parser.add_argument("--model-dir", help="local weights for --video-preset")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    pictures = clip(args.seconds, args.fps, args.size)
    cv2.setNumThreads(1)
    torch.set_num_threads(args.threads)  # what the pipelines get too (ModelOptions.threads); the header says it
    print(f"# temporal consistency: {len(pictures)} frames ({args.seconds:g} s at {args.fps:g} fps), {args.size}x{args.size}, "
          f"one pair in {args.every} measured; drift: last {args.window:g} s vs first {args.window:g} s; {machine()}\n")
    print("| pipeline | settings | warp error ‰ (input) | flicker % (input) | sharpness × | contrast × | colour Δ | "
          "step ms/frame | live measure ms/frame | share |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    runs = [("stream-diffusion", "style", None, STREAM_DIFFUSION), ("rolling-kv-video", args.video_preset, args.model_dir, ROLLING_KV)]
    for name, preset, model_dir, configs in runs:
        if args.only and args.only != name:
            continue
        pipe = load_pipeline(name, ModelOptions(preset=preset, device=args.device, model_dir=model_dir, threads=args.threads))
        run(pipe, {"width": args.size, "height": args.size, **configs[0][1]}, pictures[:24], args.fps, args.every, 1.0)  # warm-up
        for settings, params in configs:
            full = {"prompt": "a watercolour landscape", "width": args.size, "height": args.size, **params}
            print(row(name, settings, run(pipe, full, pictures, args.fps, args.every, args.window)), flush=True)
    print("\n| pipeline | preset | size | step ms/frame | one measured pair ms | live (1 pair in "
          f"{SAMPLE_EVERY}) ms/frame | share of a step |")
    print("|---|---|---|---|---|---|---|")
    for name, preset, size in (("stream-diffusion", "style", 256), ("rolling-kv-video", "small-video", 256),
                               ("rolling-kv-video", "tiny-video", 64)):
        print(cost_row(name, preset, size, args.threads), flush=True)


if __name__ == "__main__":
    main()
