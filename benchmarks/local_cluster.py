"""A Ray cluster of several nodes on this one machine, CPU only, with `latentcast cluster` in front of it: what
the two-node tests (tests/test_cluster.py) and benchmarks/cluster.py run on.

Node k is `ray start` with its own loopback address (127.0.0.2, 127.0.0.3, ...: Ray turns 127.0.0.1 itself into
the machine's network address, and nothing here may leave the machine), one CPU, no dashboard, a small object
store and a temp dir of its own. Each process it starts leads a process group of its own and is stopped by that
group (SIGTERM, then SIGKILL): never by name, since `ray stop` would stop every Ray on the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
START_TIMEOUT_S = 240.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class LocalCluster:
    """`with LocalCluster(nodes=2, front_door_args=[...]) as cluster:` then talk to `cluster.url` (with `api_token`, the
    front door and its workers require it, or a short-lived token it issued)."""

    def __init__(self, nodes: int = 2, front_door_args: list[str] | None = None, drain_timeout_s: float = 5.0,
                 api_token: str | None = None):
        self.nodes = nodes
        self.front_door_args = front_door_args or []
        self.drain_timeout_s = drain_timeout_s
        self.root = Path(tempfile.mkdtemp(prefix="lc-ray-", dir="/tmp"))  # short: Ray's socket paths live under it
        self.gcs_port = free_port("127.0.0.2")
        self.url = ""
        self._processes: list[subprocess.Popen] = []
        self._front_door: subprocess.Popen | None = None
        self.api_token = api_token
        self.headers = {"Authorization": f"Bearer {api_token}"} if api_token else {}
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
        self.env.pop("LATENTCAST_API_TOKEN", None)
        if api_token:
            self.env["LATENTCAST_API_TOKEN"] = api_token

    def __enter__(self) -> LocalCluster:
        try:
            self._start_node(0)
            for index in range(1, self.nodes):
                self.add_node(index)
            self._start_front_door()
            self.wait_for_workers(self.nodes)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- starting -------------------------------------------------------------------------------

    def node_ip(self, index: int) -> str:
        return f"127.0.0.{2 + index}"

    def _start_node(self, index: int) -> None:
        role = ["--head", f"--port={self.gcs_port}", "--include-dashboard=false"] if index == 0 else [f"--address=127.0.0.2:{self.gcs_port}"]
        self._spawn(f"node{index}", [str(RAY), "start", "--block", *role, f"--node-ip-address={self.node_ip(index)}", "--num-cpus=1",
                                     "--num-gpus=0", "--object-store-memory=100000000", f"--temp-dir={self.root}", "--disable-usage-stats"])
        if index == 0:
            self._wait(lambda: _listening("127.0.0.2", self.gcs_port), "the head node's GCS")

    def add_node(self, index: int) -> None:
        """Another node joins; the front door starts its worker at its next scan."""
        self._start_node(index)

    def _start_front_door(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._front_door = self._spawn("front-door", [
            sys.executable, "-m", "app.cli", "cluster", f"--address=127.0.0.2:{self.gcs_port}", "--node-ip-address=127.0.0.2",
            "--host=127.0.0.1", f"--port={port}", "--worker-port=0", f"--drain-timeout={self.drain_timeout_s}", "--log-level=warning",
            *self.front_door_args])

    def wait_for_workers(self, count: int, timeout_s: float = START_TIMEOUT_S) -> list[dict]:
        """Wait until `count` workers are up; returns the worker list."""
        listed: list[dict] = []

        def enough() -> bool:
            nonlocal listed
            if self._front_door is not None and self._front_door.poll() is not None:
                raise RuntimeError(f"the front door exited ({self._front_door.returncode}):\n{self.log_tail('front-door')}")
            try:
                listed = httpx.get(f"{self.url}/v1/cluster/workers", headers=self.headers, timeout=5).json()
            except httpx.HTTPError:
                return False
            return sum(1 for w in listed if w["state"] == "up") >= count

        self._wait(enough, f"{count} worker(s) up", timeout_s)
        return listed

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "w")
        process = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self._processes.append(process)
        return process

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.root / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    @staticmethod
    def _wait(condition, what: str, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout_s:g} s for {what}")
            time.sleep(0.25)

    # --- stopping -------------------------------------------------------------------------------

    def close(self) -> None:
        """The front door first (it drains and ends its workers), then every node; then nothing of it is left."""
        if self._front_door is not None:
            _stop_group(self._front_door, grace_s=self.drain_timeout_s + 30)
        for process in reversed(self._processes):
            _stop_group(process, grace_s=15)
        shutil.rmtree(self.root, ignore_errors=True)

    def left_running(self) -> list[str]:
        """Processes still running that belong to this cluster (their command line names its temp dir)."""
        left = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("State:"))
            except (OSError, StopIteration):
                continue
            if str(self.root) in command and "zombie" not in state:
                left.append(f"{entry.name}: {command[:120]}")
        return left


def _stop_group(process: subprocess.Popen, grace_s: float) -> None:
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:  # the leader is gone; its children may still be: the group goes too
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), 0.5).close()
        return True
    except OSError:
        return False
