"""SLO attainment, throughput and p99 latency of the SLO-aware scheduler against plain FIFO and
round-robin, on one mix of sessions, in one run.

    python -m benchmarks.scheduler                  # step costs of typical GPU models (see COSTS)
    python -m benchmarks.scheduler --calibrate      # step costs measured here on the tiny presets
    python -m benchmarks.scheduler --stages         # also: small-video on 1 vs 2 CPU processes
    python -m benchmarks.scheduler --stages --stage-devices cuda:0,cuda:1 --stage-preset wan-causal-1.3b --stage-size 512

The policies run in `streaming.simulate` (virtual time, the server's own views and plans), so
the comparison is exact and repeatable: every policy sees the same arrivals and the same step
costs. FIFO serves the oldest waiting input's pipeline with every ready stream of it (the
server's policy before this scheduler); round-robin takes the pipelines in turn, also with every
ready stream; neither drops, refuses or degrades. The SLO scheduler adds deadline-aware batches,
stale-input drops, max-min fairness, admission control and, where sessions allow it, degradation.

Attainment is the share of the frames a session's SLO asked for (rate x time) that came out
within its latency budget; "all" also counts the sessions admission refused (none of their
frames were served), "admitted" only the sessions that ran.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from benchmarks.common import machine
from streaming.admission import decide_admission
from streaming.baseline_policies import Fifo, RoundRobin
from streaming.costs import CostModel
from streaming.degradation import DegradationPolicy
from streaming.scheduler import SloScheduler
from streaming.simulate import SimPipeline, SimStream, StreamResult, simulate

DURATION_S = 60.0
# Per step: fixed + per stream (one unit of work). Typical of a GPU: most of a step is fixed.
COSTS = {"sd": SimPipeline(0.004, 0.005), "video": SimPipeline(0.008, 0.008)}


def sessions() -> list[SimStream]:
    """Cameras with tight budgets, bursty senders, a generator, a heavy video stream, and a wave
    of late arrivals that overloads the worker for 20 s."""
    cams = [SimStream(f"cam{i}", "sd", 30, 0.150, start_s=0.004 * i, pipe_depth=1,
                      levels=(0.56, 0.25) if i == 2 else ()) for i in range(3)]
    bursty = [SimStream(f"burst{i}", "sd", 30, 0.300, start_s=1.0 + 0.7 * i, pipe_depth=1, burst=(2.0, 2.0)) for i in range(2)]
    generator = [SimStream("gen", "sd", 12, 0.500, needs_input=False, start_s=0.5)]
    video = [SimStream("video", "video", 16, 1.500, start_s=2.0, work=2.0, pipe_depth=7, levels=(1.0,))]
    wave = [SimStream(f"late{i}", "sd", 30, 0.150, start_s=20.0 + 1.5 * i, stop_s=40.0, pipe_depth=1) for i in range(6)]
    return [*cams, *bursty, *generator, *video, *wave]


@dataclass
class Row:
    policy: str
    admitted: int
    refused: int
    attainment_admitted: float
    attainment_all: float
    fps: float
    p99_ms: float
    dropped: int
    quality_moves: int


def summarize(policy: str, results: dict[str, StreamResult]) -> Row:
    ran = [r for r in results.values() if r.admitted]
    refused = [r for r in results.values() if not r.admitted]
    latencies = np.concatenate([r.latencies for r in ran if r.latencies])
    on_time = sum(r.on_time for r in ran)
    expected_ran = sum(r.expected for r in ran)
    expected_refused = sum(r.expected for r in refused)
    return Row(policy, len(ran), len(refused), on_time / expected_ran, on_time / (expected_ran + expected_refused),
               sum(r.outputs for r in ran) / DURATION_S, float(np.percentile(latencies, 99)) * 1000,
               sum(r.dropped + r.stale for r in ran), sum(len(r.level_changes) for r in ran))


def run_policies(costs: dict[str, SimPipeline]) -> list[Row]:
    mix = sessions()
    rows = [summarize("FIFO", simulate(mix, costs, Fifo(), DURATION_S)),
            summarize("round-robin", simulate(mix, costs, RoundRobin(), DURATION_S))]
    model = CostModel()
    rows.append(summarize("SLO scheduler, no admission", simulate(mix, costs, SloScheduler(model), DURATION_S,
                                                                   degradation=DegradationPolicy(model))))
    model = CostModel()
    for pipeline, cost in costs.items():  # what the worker's warm-up profile would have measured
        model.observe(pipeline, [(1.0,)], cost.cost([1.0]))
        model.observe(pipeline, [(1.0,), (1.0,)], cost.cost([1.0, 1.0]))

    def admit(running, new):
        decision = decide_admission(running, new, model)
        return decision.admitted, decision.reason

    rows.append(summarize("SLO scheduler + admission", simulate(mix, costs, SloScheduler(model), DURATION_S, admit=admit,
                                                                 degradation=DegradationPolicy(model))))
    return rows


def calibrated_costs(ticks: int = 12) -> dict[str, SimPipeline]:
    """Fixed and per-stream step costs of the tiny presets at 64x64 on this machine, from steps of
    one and two streams (the video pipeline's per-tick average: a chunk runs every fourth tick)."""
    from pipelines.registry import ModelOptions, load_pipeline
    from streaming.frames import VideoFrame

    out = {}
    for key, name, preset in (("sd", "stream-diffusion", "tiny"), ("video", "rolling-kv-video", "tiny-video")):
        pipeline = load_pipeline(name, ModelOptions(preset=preset, device="cpu"))
        params = pipeline.params_model(width=64, height=64)
        picture = np.full((64, 64, 3), 100, np.uint8)
        seconds = []
        for size in (1, 2):
            states = [pipeline.new_state(params, stream_id=str(i)) for i in range(size)]
            for k in range(12):  # fill the pipes, warm the kernels
                pipeline.step([(s, VideoFrame(picture, k)) for s in states])
            started = time.perf_counter()
            for k in range(ticks):
                pipeline.step([(s, VideoFrame(picture, k)) for s in states])
            seconds.append((time.perf_counter() - started) / ticks)
        one, two = seconds
        out[key] = SimPipeline(max(2 * one - two, 0.0), max(two - one, 0.0) if two > one else one)
    return out


def stage_comparison(preset: str, devices: list[str], size: int, chunks: int = 12) -> list[tuple[str, float]]:
    """ms per chunk of a video preset (random weights; 2 streams, stream batch of 2 steps) on the
    first device alone and split over all of them."""
    from pipelines.registry import ModelOptions, load_pipeline
    from pipelines.rolling_kv.stages import split_across
    from streaming.frames import VideoFrame
    from streaming.stages.balance import balanced_split
    from streaming.stages.group import HostSpec, StageGroup

    def run(pipe) -> float:
        params = pipe.params_model(steps=2, width=size, height=size)
        states = [pipe.new_state(params, stream_id=f"s{i}") for i in range(2)]
        picture = np.full((size, size, 3), 100, np.uint8)
        for k in range(5 + 4 * 2):  # fill the pipe
            pipe.step([(s, VideoFrame(picture, k)) for s in states])
        started = time.perf_counter()
        for k in range(4 * chunks):
            pipe.step([(s, VideoFrame(picture, k)) for s in states])
        return (time.perf_counter() - started) * 1000 / chunks

    options = ModelOptions(preset=preset, device=devices[0], random_weights=True)
    rows = [(f"1 process ({devices[0]})", run(load_pipeline("rolling-kv-video", options)))]
    pipe = load_pipeline("rolling-kv-video", options)
    counts = balanced_split(pipe.models.transformer.config.num_layers, [1.0] * len(devices), [0.0] * len(devices))
    group = StageGroup(devices, {"v": HostSpec("pipelines.rolling_kv.stages:LayerStageHost", {"source": pipe.models.source, "counts": counts})})
    try:
        split_across(pipe, group, counts, "v")
        rows.append((f"{len(devices)} processes ({'+'.join(map(str, counts))} layers on {','.join(devices)})", run(pipe)))
    finally:
        group.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calibrate", action="store_true", help="measure the tiny presets' step costs here and use them")
    parser.add_argument("--stages", action="store_true", help="also time a video preset on one device and split over several")
    parser.add_argument("--stage-devices", default="cpu,cpu", help="devices of the split, e.g. cuda:0,cuda:1")
    parser.add_argument("--stage-preset", default="small-video", help="video preset of the split (random weights)")
    parser.add_argument("--stage-size", type=int, default=128, help="picture side of the split's streams")
    args = parser.parse_args()
    costs = calibrated_costs() if args.calibrate else COSTS
    print(f"machine: {machine()}")
    print("step costs (fixed + per stream, ms): " + ", ".join(f"{k} {c.fixed_s * 1000:.1f} + {c.per_work_s * 1000:.1f}" for k, c in costs.items()))
    print(f"mix: {len(sessions())} sessions over {DURATION_S:.0f} s (see sessions())\n")
    print("| policy | admitted | refused | SLO attainment (admitted) | SLO attainment (all) | throughput fps | p99 latency ms "
          "| dropped | quality moves |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in run_policies(costs):
        print(f"| {r.policy} | {r.admitted} | {r.refused} | {r.attainment_admitted:.1%} | {r.attainment_all:.1%} | {r.fps:.1f} | "
              f"{r.p99_ms:.0f} | {r.dropped} | {r.quality_moves} |")
    if args.stages:
        print(f"\n| {args.stage_preset}, 2 streams, 2 steps, {args.stage_size}x{args.stage_size} | ms per chunk |\n|---|---:|")
        for name, ms in stage_comparison(args.stage_preset, args.stage_devices.split(","), args.stage_size):
            print(f"| {name} | {ms:.0f} |")


if __name__ == "__main__":
    main()
