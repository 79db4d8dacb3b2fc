"""The processes of a stage pipeline: one per device, joined by torch.distributed.

This process is rank 0: it runs the pipeline itself and the first stage. `StageGroup` starts
ranks 1..N-1 (spawned, so nothing of this process's threads or CUDA state leaks into them); each
builds the stage hosts it is given and serves messages until told to stop. Messages go round a
ring, rank r to r+1 and the last back to 0, so every rank reads from one neighbour only.
A group is closed with the server: stop messages first, then terminate whatever did not exit.
A process that exits before that is a failure: `watch` reports it from a monitor thread.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import multiprocessing.connection
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import torch
import torch.distributed as dist

from streaming.stages.transport import Sending, recv, send

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 120.0  # building the models of a large preset takes a while


@dataclass(frozen=True)
class HostSpec:
    """What every other rank builds for one pipeline: `factory` ("module:function") is called
    with (link, **kwargs) and returns a StageHost."""

    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)


class StageHost(Protocol):
    def handle(self, header: dict[str, Any], tensors: list[torch.Tensor]) -> None:
        """Serve one message (it came from the previous rank); send what follows onwards."""


class Link:
    """One rank's place in the group: who it is, its devices, and its sends in flight."""

    def __init__(self, rank: int, world: int, device: torch.device, max_in_flight: int = 4):
        self.rank, self.world, self.device = rank, world, device
        self.comm_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
        self.max_in_flight = max_in_flight
        self._sending: list[Sending] = []

    @property
    def next(self) -> int:
        return (self.rank + 1) % self.world

    @property
    def prev(self) -> int:
        return (self.rank - 1) % self.world

    def send(self, header: dict[str, Any], tensors: Sequence[torch.Tensor], dst: int) -> None:
        """Send asynchronously; at most `max_in_flight` messages wait to complete."""
        self._sending.append(send(header, tensors, dst, self.comm_device))
        while len(self._sending) > self.max_in_flight:
            self._sending.pop(0).wait()

    def recv(self, src: int) -> tuple[dict[str, Any], list[torch.Tensor]]:
        header, tensors = recv(src, self.comm_device)
        return header, [t.to(self.device) for t in tensors]

    def flush(self) -> None:
        while self._sending:
            self._sending.pop(0).wait()


def _connect(rank: int, world: int, port: int, device: str, timeout_s: float) -> Link:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    return Link(rank, world, dev)


def _resolve(factory: str) -> Callable[..., StageHost]:
    module, _, name = factory.partition(":")
    return getattr(importlib.import_module(module), name)


def _stage_main(rank: int, world: int, port: int, device: str, hosts: dict[str, HostSpec], timeout_s: float) -> None:
    """A stage process: build the hosts, then serve messages from the previous rank until `stop`."""
    logging.basicConfig(level=logging.WARNING)
    link = _connect(rank, world, port, device, timeout_s)
    try:
        programs = {name: _resolve(spec.factory)(link, **spec.kwargs) for name, spec in hosts.items()}
        while True:
            header, tensors = link.recv(link.prev)
            if header["op"] == "stop":
                if link.next != 0:
                    link.send(header, [], link.next)
                break
            programs[header["program"]].handle(header, tensors)
        link.flush()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StageGroup:
    """Ranks 1..N-1 as child processes, this process as rank 0. `devices[r]` is rank r's device."""

    def __init__(self, devices: Sequence[str], hosts: dict[str, HostSpec], timeout_s: float = JOIN_TIMEOUT_S):
        if len(devices) < 2:
            raise ValueError("a stage group needs at least two devices")
        if dist.is_initialized():
            raise RuntimeError("this process already belongs to a process group; one stage group per process")
        self.devices = list(devices)
        port = free_port()
        context = multiprocessing.get_context("spawn")
        self.processes = [
            context.Process(target=_stage_main, args=(rank, len(devices), port, devices[rank], hosts, timeout_s),
                            name=f"latentcast-stage-{rank}", daemon=True)
            for rank in range(1, len(devices))
        ]
        for process in self.processes:
            process.start()
        self._closing = threading.Event()
        self._monitor: threading.Thread | None = None
        try:
            self.link = _connect(0, len(devices), port, devices[0], timeout_s)
        except BaseException:
            self._reap(0.0)
            raise

    def watch(self, on_exit: Callable[[str, int | None], None], poll_s: float = 0.5) -> None:
        """Call `on_exit(process name, exit code)`, from a monitor thread, for the first stage
        process that exits before the group is closed."""

        def monitor() -> None:
            sentinels = {process.sentinel: process for process in self.processes}
            while not self._closing.is_set():
                ended = multiprocessing.connection.wait(list(sentinels), timeout=poll_s)
                if ended and not self._closing.is_set():
                    process = sentinels[ended[0]]  # type: ignore[index]
                    process.join(1.0)
                    on_exit(process.name, process.exitcode)
                    return

        self._monitor = threading.Thread(target=monitor, name="stage-monitor", daemon=True)
        self._monitor.start()

    @property
    def world(self) -> int:
        return len(self.devices)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop every stage process (politely, then by force) and leave the process group."""
        self._closing.set()
        if self._monitor is not None:
            self._monitor.join()
        if not dist.is_initialized():
            return
        try:
            self.link.send({"op": "stop"}, [], 1)
            self.link.flush()
        except Exception:  # a dead peer: terminate below
            log.warning("could not tell the stage processes to stop", exc_info=True)
        self._reap(timeout_s)
        dist.destroy_process_group()

    def _reap(self, timeout_s: float) -> None:
        for process in self.processes:
            process.join(timeout_s)
            if process.is_alive():
                log.warning("stage process %s did not stop; terminating it", process.name)
                process.terminate()
                process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
