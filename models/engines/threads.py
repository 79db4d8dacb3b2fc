"""How many CPU threads model compute gets when the user does not say.

torch's own default is every physical core. On a small machine that is wrong for a server: the
event loop, the codecs and the other processes need a core too, and OpenMP threads that spin
against them made serving and rendering 5-8x slower on a busy 2-core machine than one thread.
So the default is the cores this process may really use (its CPU affinity, its cgroup quota, one
thread per physical core) minus one for everything else, and at least one. OMP_NUM_THREADS, when
set, is taken as the user's choice; `--threads` overrides both. ONNX Runtime sessions take the
same count.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_applied: int | None = None


def usable_cores() -> int:
    """Physical cores this process may run on: affinity, hyper-threads folded, cgroup quota."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    count = len(cores) or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return count


def default_compute_threads() -> tuple[int, str]:
    """The thread count to use when none was given, and why (for the log line)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env), "from OMP_NUM_THREADS"
    cores = usable_cores()
    return max(1, cores - 1), f"chosen from this machine: {cores} usable core{'s' * (cores != 1)}, one left for I/O and codecs"


def apply_compute_threads(threads: int | None) -> int:
    """Set torch's compute threads (`threads`, else the default) and log the choice once."""
    global _applied
    count, why = (threads, "from --threads") if threads else default_compute_threads()
    torch.set_num_threads(count)
    if _applied != count:
        log.info("compute threads: %d (%s; --threads N overrides)", count, why)
        _applied = count
    return count
