"""What each creative control costs, relative to plain img2img, measured side by side in one run.

    python -m benchmarks.controls                         # CPU, tiny preset, 256x256, 2 steps
    python -m benchmarks.controls --threads 1 --rounds 7  # steadier on a busy machine
    python -m benchmarks.controls --preset sd-turbo --random-weights --device cuda --size 512

One img2img stream per configuration: plain, each ControlNet preprocessor, two ControlNets, the
image prompt, one and two LoRAs, everything at once, and a LoRA fused into the weights (a
stream-less render's option). The control models are random ones shaped for the preset (no
download). Rounds alternate the configurations (each round starts one further along), and each
configuration's cost is the median over rounds of its time per frame divided by plain img2img's
in the same round, so a machine that slows down mid-run shifts both sides alike. The machine
line and the load average before and after are printed with the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from benchmarks.common import add_model_arguments, machine, moving_pictures, progress, sync
from models.control.registry import ControlSpec
from pipelines.registry import ModelOptions, load_pipeline
from streaming.frames import VideoFrame

CANNY = {"model": "edges", "preprocessor": "canny"}
CONFIGS: dict[str, dict] = {
    "plain img2img": {},
    "ControlNet, canny": {"controlnets": [CANNY]},
    "ControlNet, soft_edge": {"controlnets": [{"model": "edges", "preprocessor": "soft_edge"}]},
    "ControlNet, previous_output": {"controlnets": [{"model": "temporal", "preprocessor": "previous_output"}]},
    "two ControlNets": {"controlnets": [CANNY, {"model": "temporal", "preprocessor": "previous_output"}]},
    "image prompt (IP-Adapter)": {"image_prompt": "input", "image_prompt_weight": 0.8},
    "one LoRA": {"loras": {"ink": 0.8}},
    "two LoRAs": {"loras": {"ink": 0.8, "oil": 0.5}},
    "all of them": {"controlnets": [CANNY], "image_prompt": "input", "loras": {"ink": 0.8, "oil": 0.5}},
    "one LoRA, fused (render)": {},
}
FUSED = "one LoRA, fused (render)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser, "tiny")
    parser.add_argument("--engine", default="auto", help="what runs the plain UNet (docs/engines.md); controlled rows run eager")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8, help="frames timed per configuration per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    controls = ControlSpec(controlnets={"edges": "random", "temporal": "random"}, loras={"ink": "random", "oil": "random"},
                           ip_adapter="random")

    def options(spec: ControlSpec) -> ModelOptions:
        return ModelOptions(args.preset, args.device, args.dtype, random_weights=args.random_weights, threads=args.threads,
                            engine=args.engine, controls=spec)

    progress(f"loading {args.preset} with random control models")
    pipe = load_pipeline("stream-diffusion", options(controls))
    fused = load_pipeline("stream-diffusion", options(ControlSpec(loras={"ink": "random"}, fuse={"ink": 0.8})))
    base = {"width": args.size, "height": args.size, "steps": args.steps, "strength": 0.5, "cfg_type": "none", "prompt": "a fox"}
    states = {name: (fused if name == FUSED else pipe).new_state({**base, **extra}) for name, extra in CONFIGS.items()}
    frames = moving_pictures(args.size, args.size, args.frames)
    load_before = os.getloadavg()[0]

    def per_frame(name: str) -> float:
        runner, state = (fused if name == FUSED else pipe), states[name]
        sync(runner.models.device)
        start = time.perf_counter()
        for k, image in enumerate(frames):
            runner.step([(state, VideoFrame(image, k))])
        sync(runner.models.device)
        return (time.perf_counter() - start) / len(frames)

    names = list(CONFIGS)
    progress("warming up (engines are built on their first call)")
    for name in names:
        per_frame(name)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        progress(f"round {round_index + 1}/{args.rounds}")
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            seconds[name].append(per_frame(name))
    load_after = os.getloadavg()[0]

    plain = seconds["plain img2img"]
    print(f"\nmachine: {machine()}")
    print(f"settings: preset {args.preset}, engine {args.engine} (controlled rows: eager), {args.size}x{args.size}, "
          f"{args.steps} steps, cfg none, one stream, {args.frames} frames x {args.rounds} alternating rounds; "
          f"load average {load_before:.2f} before, {load_after:.2f} after\n")
    print("| configuration | ms per frame (median) | cost vs plain img2img (median of per-round ratios) |")
    print("|---|---|---|")
    for name in names:
        ratios = [s / p for s, p in zip(seconds[name], plain)]
        print(f"| {name} | {statistics.median(seconds[name]) * 1000:.1f} | {statistics.median(ratios):.2f}x |")


if __name__ == "__main__":
    main()
