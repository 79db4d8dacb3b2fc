"""The cluster's rules without a cluster: placement over worker views, how many workers a node gets, when workers
need the API token, and a machine without Ray (the lone server runs as before; `cluster` says what to install).

The two-node cluster itself is tests/test_cluster.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.auth import TokenRequired
from app.cluster.command import check_workers_guarded
from app.cluster.placement import WorkerView, place
from app.cluster.pool import worker_layout
from app.cluster.settings import ClusterSettings
from streaming.errors import ErrorCode


def view(name: str, **fields) -> WorkerView:
    defaults = {"up": True, "draining": False, "admits": True, "reason": "", "load_after": 0.5, "need": 0.25,
                "sessions": 1, "max_sessions": 8}
    return WorkerView(name, **{**defaults, **fields})


def test_the_least_loaded_worker_that_admits_the_session_gets_it():
    chosen = place([view("a", load_after=0.8), view("b", load_after=0.3), view("c", load_after=0.1, admits=False, reason="full")])
    assert chosen.worker == "b" and chosen.code is None
    assert "2 of 3" in chosen.reason


def test_sessions_sent_moments_ago_count_as_load():
    # b looks emptier, but two sessions just sent there (not started yet) would each add what this one adds.
    chosen = place([view("a", load_after=0.5, need=0.2), view("b", load_after=0.3, need=0.2, pending=2)])
    assert chosen.worker == "a"


def test_equal_loads_spread_by_sessions_per_slot_then_name():
    assert place([view("a", load_after=0.0, sessions=2), view("b", load_after=0.0, sessions=1)]).worker == "b"
    assert place([view("a", load_after=0.301, sessions=2), view("b", load_after=0.309, sessions=1)]).worker == "b"  # noise
    assert place([view("b", load_after=0.0), view("a", load_after=0.0)]).worker == "a"


def test_down_and_draining_workers_take_nothing():
    chosen = place([view("a", up=False, load_after=0.0, reason="not answering"), view("b", draining=True, load_after=0.0),
                    view("c", load_after=0.9)])
    assert chosen.worker == "c"


def test_no_worker_admitting_is_busy_with_every_reason_and_what_would_fit():
    refused = place([view("a", admits=False, reason="all 2 session slots are in use; retry later"),
                     view("b", admits=False, reason="it would make 1 running session miss its SLO", max_fps=7.5),
                     view("c", draining=True)])
    assert refused.worker is None and refused.code is ErrorCode.BUSY
    for words in ("a: all 2 session slots", "b: it would make 1", "c: draining", "at most 7.5 would fit on b", "retry later"):
        assert words in refused.reason


def test_no_worker_up_is_not_ready():
    refused = place([view("a", up=False, reason="loading its models"), view("b", draining=True)])
    assert refused.code is ErrorCode.NOT_READY and "a: loading its models" in refused.reason
    assert place([]).code is ErrorCode.NOT_READY


def test_a_start_that_may_wait_goes_to_the_least_loaded_open_worker():
    workers = [view("a", admits=False, load_after=1.4), view("b", admits=False, load_after=1.1), view("c", draining=True, load_after=0.0)]
    assert place(workers).worker is None
    queued = place(workers, queue=True)
    assert queued.worker == "b" and "waits in line" in queued.reason


def test_workers_per_node():
    gpu_node = {"CPU": 16, "GPU": 4}
    assert worker_layout(gpu_node, "gpu", 2) == [{"num_cpus": 2, "num_gpus": 1}] * 4
    assert worker_layout(gpu_node, "node", 2) == [{"num_cpus": 2, "num_gpus": 4}]
    assert worker_layout({"CPU": 8}, "gpu", 1) == []                       # a CPU-only node has no GPU worker
    assert worker_layout({"CPU": 1}, "node", 1) == [{"num_cpus": 1, "num_gpus": 0}]
    assert worker_layout({"CPU": 0.5}, "node", 1) == []                    # not enough CPU for one worker
    assert worker_layout({"CPU": 3, "GPU": 4}, "gpu", 1) == []             # nor for one per GPU


def test_workers_beyond_loopback_need_the_api_token():
    options = ClusterSettings(_env_file=None)
    check_workers_guarded(False, options, ["127.0.0.2", "127.0.0.3"])      # loopback nodes, as in the tests
    check_workers_guarded(True, options, ["10.0.0.5"])
    with pytest.raises(TokenRequired, match="10.0.0.5"):
        check_workers_guarded(False, options, ["127.0.0.2", "10.0.0.5"])
    with pytest.raises(TokenRequired, match="0.0.0.0"):
        check_workers_guarded(False, ClusterSettings(_env_file=None, worker_host="0.0.0.0"), ["127.0.0.2"])


WITHOUT_RAY = "import sys; sys.modules['ray'] = None\n"  # importing ray now fails, as on a machine without it


def test_one_machine_runs_without_ray():
    """`serve` and the server never import Ray or the cluster package; `cluster` says what to install."""
    lone = subprocess.run([sys.executable, "-c", WITHOUT_RAY + (
        "from app.cli import build_parser\n"
        "build_parser('serve').parse_args(['serve', '--preset', 'tiny'])\n"
        "import app.server, app.serve\n"
        "assert not [m for m in sys.modules if m == 'app.cluster' or m.startswith('app.cluster.')], 'the server imported app.cluster'\n")],
        capture_output=True, text=True, timeout=120)
    assert lone.returncode == 0, lone.stderr
    cluster = subprocess.run([sys.executable, "-c", WITHOUT_RAY + "from app.cli import main\nsys.exit(main(['cluster', '--preset', 'tiny']))"],
                             capture_output=True, text=True, timeout=120)
    assert cluster.returncode == 2 and "pip install 'latentcast[cluster]'" in cluster.stderr, cluster.stderr
