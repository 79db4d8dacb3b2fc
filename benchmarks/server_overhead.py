"""Server overhead: the WebSocket path against calling the pipeline directly, in the same run.

    python -m benchmarks.server_overhead                              # CPU: passthrough and tiny
    python -m benchmarks.server_overhead --device cuda --preset sd-turbo --random-weights --size 512

For each pipeline and 1, 2 and 4 concurrent sessions it measures, side by side:
- direct: the pipeline's batched `step` called in a loop in this process (no codec, no network);
- server: `latentcast serve` in a subprocess, the sessions streaming JPEG frames through the real
  WebSocket client in this process, getting JPEG frames back.
Each session keeps just enough frames outstanding to fill its pipe (stream batch holds N-1), so
the server runs flat out without dropping; throughput is output frames per second over all
sessions, latency is from a frame being sent (or stepped) to its output arriving. The ratio
server/direct is the share of the pipeline's speed that survives decode, scheduling, encode and
transport. Absolute numbers on a shared CPU are noisy; compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from benchmarks.common import machine
from pipelines.base import parse_params
from pipelines.registry import ModelOptions, load_pipeline
from streaming.client import StreamClient
from streaming.codec import encode_image
from streaming.frames import VideoFrame

ROOT = Path(__file__).resolve().parent.parent


def picture(size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], axis=-1).astype(np.uint8)


def params_for(name: str, size: int) -> dict:
    return {"width": size, "height": size} if name == "stream-diffusion" else {}


def pipe_depth(pipeline, params: dict) -> int:
    """Frames a stream holds in flight: an output leaves this many steps after its input."""
    return len(getattr(parse_params(pipeline.params_model, params), "t_index_list", [0])) - 1


def summarize(latencies: list[float], frames: int, seconds: float) -> dict:
    """fps and latency percentiles (ms; NaN when no frame came out in the window)."""
    lat = np.array(latencies) * 1000
    p50, p95 = np.percentile(lat, [50, 95]) if len(lat) else (np.nan, np.nan)
    return {"fps": frames / seconds, "p50": float(p50), "p95": float(p95)}


WARMUP_STEPS = 5


def run_direct(pipeline, params: dict, sessions: int, size: int, seconds: float) -> dict:
    states = [pipeline.new_state(params, f"s{i}") for i in range(sessions)]
    image = picture(size)
    entered: dict[int, float] = {}
    latencies: list[float] = []
    frames, tick, start = 0, 0, None
    warm_until = time.perf_counter() + min(2.0, seconds / 3)
    while start is None or time.perf_counter() - start < seconds:
        if start is None and tick >= WARMUP_STEPS and time.perf_counter() > warm_until:
            start, frames, latencies = time.perf_counter(), 0, []
        entered[tick] = time.perf_counter()
        outputs = pipeline.step([(s, VideoFrame(image, tick, tick / 30, s.stream_id)) for s in states])
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        for output in outputs:
            for frame in output.frames:
                latencies.append(now - entered[frame.frame_id])
                frames += 1
        tick += 1
    return summarize(latencies, frames, time.perf_counter() - start)


async def run_server(base_url: str, name: str, params: dict, depth: int, sessions: int, size: int, seconds: float) -> dict:
    payload = encode_image(picture(size), "jpeg", 90)
    arrivals: list[tuple[float, float]] = []  # (when an output arrived, its latency)
    stop = asyncio.Event()

    async def session() -> dict:
        async with await StreamClient.connect(base_url) as client:
            await client.start(name, params, slo={"target_fps": 240, "latency_budget_ms": 60_000})
            sent: dict[int, float] = {}

            async def send(frame_id: int) -> None:
                sent[frame_id] = time.perf_counter()
                await client.send_encoded(payload, size, size, frame_id=frame_id, pts=frame_id / 30)

            # Fill the pipe one frame at a time (two frames at once would make latest-wins drop
            # one), then keep one more frame outstanding than the pipe holds.
            for frame_id in range(depth + 1):
                await send(frame_id)
                while frame_id < depth and (await client.stats())["frames_stepped"] <= frame_id:
                    await asyncio.sleep(0.01)
            next_id = depth + 1
            while not stop.is_set():
                try:
                    frame = await client.receive_frame(timeout=5 + 2 * depth)
                except TimeoutError:
                    await send(next_id)  # an input was dropped after all: refill so the pipe moves on
                    next_id += 1
                    continue
                now = time.perf_counter()
                arrivals.append((now, now - sent[frame.frame_id]))
                await send(next_id)
                next_id += 1
            return await client.stats()

    tasks = [asyncio.create_task(session()) for _ in range(sessions)]
    warm_until = time.perf_counter() + min(2.0, seconds / 3)
    give_up = time.perf_counter() + 120
    while (len(arrivals) < WARMUP_STEPS * sessions or time.perf_counter() < warm_until) and time.perf_counter() < give_up:
        await asyncio.sleep(0.05)
    start = time.perf_counter()
    await asyncio.sleep(seconds)
    end = time.perf_counter()
    stop.set()
    stats = await asyncio.gather(*tasks)
    window = [latency for at, latency in arrivals if start <= at < end]
    result = summarize(window, len(window), end - start)
    result["dropped"] = sum(s["dropped_input"] + s["dropped_output"] for s in stats)
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, pipelines: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--pipelines", ",".join(pipelines),
               "--preset", args.preset, "--device", args.device, "--log-level", "warning", "--max-sessions", "16"]
    if args.random_weights:
        command.append("--random-weights")
    env = {k: v for k, v in os.environ.items() if k != "LATENTCAST_API_TOKEN"}  # loopback: no token needed
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        if server.poll() is not None:
            raise RuntimeError("the server exited while starting")
        time.sleep(0.25)
    server.kill()
    raise TimeoutError("the server did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipelines", default="passthrough,stream-diffusion")
    parser.add_argument("--sessions", default="1,2,4")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--size", type=int, default=128, help="frame side in pixels (stream-diffusion width/height)")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured time per row")
    parser.add_argument("--threads", type=int, help="torch CPU threads, here and in the server (on a shared CPU, 1 is steadier)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.pipelines.split(",")
    counts = [int(n) for n in args.sessions.split(",")]

    server, url = start_server(args, names)
    try:
        print(f"machine: {machine()}")
        print(f"settings: preset {args.preset}, device {args.device}, {args.size}x{args.size} JPEG in and out, "
              f"{args.seconds:g} s per row, {torch.get_num_threads()} torch threads\n")
        print("| pipeline | sessions | direct fps | server fps | ratio | direct p50 / p95 ms | server p50 / p95 ms | server drops |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name in names:
            pipeline = load_pipeline(name, ModelOptions(preset=args.preset, device=args.device, random_weights=args.random_weights))
            params = params_for(name, args.size)
            depth = pipe_depth(pipeline, params)
            for n in counts:
                direct = run_direct(pipeline, params, n, args.size, args.seconds)
                served = asyncio.run(run_server(url, name, params, depth, n, args.size, args.seconds))
                print(f"| {name} | {n} | {direct['fps']:.1f} | {served['fps']:.1f} | {served['fps'] / max(direct['fps'], 1e-9):.2f} "
                      f"| {direct['p50']:.1f} / {direct['p95']:.1f} | {served['p50']:.1f} / {served['p95']:.1f} | {served['dropped']} |",
                      flush=True)
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
