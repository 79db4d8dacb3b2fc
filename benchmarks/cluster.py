"""Scale-out through `latentcast cluster`: sessions admitted and frames delivered with 1 and then 2 workers, one run.

    python -m benchmarks.cluster                      # tiny preset, a local two-node Ray cluster (CPU)
    python -m benchmarks.cluster --seconds 20 --fps 4 --size 128

It starts a Ray cluster of one node on this machine (benchmarks/local_cluster.py) with the front door in front,
opens stream-diffusion sessions through the front door (each follows its redirect to a worker) until the cluster
refuses one or `--max` are open, streams them all for `--seconds` at the SLO's rate, and counts the generated
frames that come back. Then a second node joins, the front door starts its worker, and the same again.

On this machine both "nodes" share the same cores: the second worker adds admission room (each worker's
admission control forecasts from its own measured costs) but not compute, so what this proves is the mechanism
(placement, redirects, admission across workers), not a speed-up. On machines with a GPU each, the fps column
is the one that scales.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import httpx

from benchmarks.common import machine, moving_pictures
from benchmarks.local_cluster import LocalCluster
from streaming.client import StreamClient, StreamClientError


async def open_sessions(url: str, size: int, fps: float, most: int) -> tuple[list[StreamClient], str]:
    """Sessions through the front door until one is refused (returns the reason) or `most` are open."""
    clients: list[StreamClient] = []
    while len(clients) < most:
        client = await StreamClient.connect(url)
        try:
            await client.start("stream-diffusion", {"width": size, "height": size, "steps": 2}, slo={"target_fps": fps})
        except StreamClientError as err:
            await client.close()
            return clients, f"{err.code}: {err.message}"
        clients.append(client)
        await asyncio.sleep(1.5)  # the front door's next status poll sees it (its placement counts it meanwhile)
    return clients, f"stopped at --max {most}"


async def stream(client: StreamClient, size: int, fps: float, seconds: float) -> int:
    """Send frames at `fps` for `seconds`; the generated frames that came back."""
    pictures = moving_pictures(size, size, 16)
    received, start, sent = 0, time.monotonic(), 0
    while (elapsed := time.monotonic() - start) < seconds:
        await client.send_frame(pictures[sent % len(pictures)])
        sent += 1
        await asyncio.sleep(max(0.0, sent / fps - elapsed))
        while not client.frames.empty():
            client.frames.get_nowait()
            received += 1
    return received


async def measure(url: str, args: argparse.Namespace) -> dict:
    clients, why_stopped = await open_sessions(url, args.size, args.fps, args.max)
    placed = {s["id"]: s["worker"] for s in httpx.get(f"{url}/v1/sessions", timeout=30).json()}
    try:
        frames = await asyncio.gather(*(stream(c, args.size, args.fps, args.seconds) for c in clients))
    finally:
        for client in clients:
            await client.close()
    per_worker: dict[str, int] = {}
    for client in clients:
        worker = placed.get(client.session_id or "", "?")
        per_worker[worker] = per_worker.get(worker, 0) + 1
    return {"admitted": len(clients), "fps": sum(frames) / args.seconds, "per_worker": per_worker, "refused": why_stopped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="picture side (stream-diffusion, tiny preset)")
    parser.add_argument("--fps", type=float, default=4.0, help="each session's target_fps")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long all admitted sessions stream")
    parser.add_argument("--max", type=int, default=12, help="most sessions to open per measurement")
    args = parser.parse_args()

    front_door = ["--preset=tiny", "--engine=eager", "--threads=1", f"--max-sessions={args.max}"]
    rows = []
    with LocalCluster(nodes=1, front_door_args=front_door) as cluster:
        rows.append((1, asyncio.run(measure(cluster.url, args))))
        cluster.add_node(1)
        cluster.wait_for_workers(2)
        rows.append((2, asyncio.run(measure(cluster.url, args))))
        load = os.getloadavg()

    print(f"\nmachine: {machine()}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (1, 5, 15 min)")
    print(f"stream-diffusion, tiny preset, eager, 1 thread per worker, {args.size}x{args.size}, 2 steps, target {args.fps:g} fps per "
          f"session, {args.seconds:g} s of streaming; every Ray node is this machine (one CPU each in Ray's accounting)\n")
    print("| workers | sessions admitted | on each worker | frames/s delivered (all sessions) | per session | why the next was not opened |")
    print("|---|---|---|---|---|---|")
    for workers, row in rows:
        spread = ", ".join(f"{w}: {n}" for w, n in sorted(row["per_worker"].items()))
        per_session = row["fps"] / row["admitted"] if row["admitted"] else 0.0
        print(f"| {workers} | {row['admitted']} | {spread} | {row['fps']:.1f} | {per_session:.1f} | {row['refused'][:160]} |")


if __name__ == "__main__":
    main()
