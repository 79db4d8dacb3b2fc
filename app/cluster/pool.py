"""The workers of a cluster, through Ray: made one per GPU (or per node), watched, asked, drained.

Ray does the hard parts: it places each worker actor on its node with the resources it asks for, notices when
its process dies, and restarts it (`max_restarts`). This pool only keeps the front door's view: it asks every
worker for its status each second, and takes a worker whose call fails (the process died: Ray is restarting
it; or Ray gave up on it) or whose incarnation changed (it was restarted) as having lost its sessions. Their
ids are kept so that a client asking after its session learns why it ended (`worker_failed`).

Nodes that join later get their workers at the next scan; a node whose worker was drained gets none again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from app.cluster.placement import WorkerView, place
from app.cluster.reports import AdmissionAnswer, SessionEntry, WorkerStatus
from app.cluster.settings import ClusterSettings
from app.settings import Settings
from streaming.errors import ErrorCode, StreamError
from streaming.protocol import SloSpec

log = logging.getLogger(__name__)

POLL_S = 1.0           # how often every worker is asked for its status
NODE_SCAN_S = 5.0      # how often the pool looks for nodes that joined
CALL_TIMEOUT_S = 5.0   # a worker that takes longer to answer counts as down
PENDING_S = 5.0        # a session sent to a worker counts as pending there this long (it may not have started yet)
LOST_KEPT = 10_000     # ids of sessions lost with their worker, kept to answer clients that ask

State = Literal["starting", "loading", "up", "failed", "down", "draining", "dead"]


@dataclass
class Worker:
    name: str
    node_id: str
    node_ip: str
    actor: Any                       # the Ray actor handle
    state: State = "starting"
    error: str = ""
    status: WorkerStatus | None = None
    restarts: int = 0
    draining: bool = False
    placed: deque[float] = field(default_factory=deque)  # when sessions were last sent here

    def pending(self, now: float) -> int:
        while self.placed and now - self.placed[0] > PENDING_S:
            self.placed.popleft()
        return len(self.placed)

    @property
    def sessions(self) -> tuple[SessionEntry, ...]:
        return self.status.sessions if self.status else ()

    def describe(self) -> dict[str, Any]:
        status = self.status
        return {"name": self.name, "node_ip": self.node_ip, "state": self.state, "error": self.error or None,
                "url": status.url if status else None, "pid": status.pid if status else None, "restarts": self.restarts,
                "sessions": len(self.sessions), "max_sessions": status.max_sessions if status else None,
                "queued": status.queued if status else 0, "load": round(status.load, 3) if status else None}


def worker_layout(resources: Mapping[str, float], per: Literal["gpu", "node"], worker_cpus: float) -> list[dict[str, float]]:
    """The Ray resources of each worker a node gets: one per GPU, or one per node holding all its GPUs."""
    gpus = int(resources.get("GPU", 0))
    if resources.get("CPU", 0) < worker_cpus * max(gpus if per == "gpu" else 1, 1):
        return []
    if per == "gpu":
        return [{"num_cpus": worker_cpus, "num_gpus": 1} for _ in range(gpus)]
    return [{"num_cpus": worker_cpus, "num_gpus": gpus}]


class WorkerPool:
    def __init__(self, settings: Settings, options: ClusterSettings):
        self.settings = settings
        self.options = options
        self.workers: dict[str, Worker] = {}
        self.per: Literal["gpu", "node"] = options.worker_per or "node"
        self.placements: Counter[str] = Counter()  # placed, refused
        self.failures = 0                          # workers seen to die or restart
        self._nodes_seen: set[str] = set()
        self._lost: OrderedDict[str, str] = OrderedDict()
        self._actor_class: Any = None
        self._poller: asyncio.Task | None = None
        self._drains: set[asyncio.Task] = set()

    async def start(self) -> None:
        import ray

        from app.cluster.worker import ClusterWorker

        self._actor_class = ray.remote(ClusterWorker)
        nodes = await asyncio.to_thread(ray.nodes)
        if self.options.worker_per is None and any(n["Alive"] and n["Resources"].get("GPU") for n in nodes):
            self.per = "gpu"
        self._spawn_on_new_nodes(nodes)
        if not self.workers:
            log.warning("no node of the Ray cluster can hold a worker (one per %s, %g CPU each): waiting for nodes to join",
                        self.per, self.options.worker_cpus)
        self._poller = asyncio.create_task(self._poll_forever())

    async def close(self, drain_timeout_s: float) -> None:
        """Drain every worker (up to the timeout), then end them."""
        if self._poller is not None:
            self._poller.cancel()
        for worker in list(self.workers.values()):
            if worker.state != "dead" and not worker.draining:
                await self.drain(worker.name, drain_timeout_s, "the cluster is shutting down")
        await asyncio.gather(*self._drains, return_exceptions=True)
        import ray

        for worker in self.workers.values():
            ray.kill(worker.actor, no_restart=True)

    # --- workers joining, answering, failing ---------------------------------------------------------

    def _spawn_on_new_nodes(self, nodes: list[dict[str, Any]]) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        for node in nodes:
            node_id, node_ip = node["NodeID"], node["NodeManagerAddress"]
            if not node["Alive"] or node_id in self._nodes_seen:
                continue
            self._nodes_seen.add(node_id)
            for index, resources in enumerate(worker_layout(node["Resources"], self.per, self.options.worker_cpus)):
                name = f"{node_ip}-{index}" if f"{node_ip}-{index}" not in self.workers else f"{node_ip}-{node_id[:6]}-{index}"
                port = self.options.worker_port + index if self.options.worker_port else 0
                actor = self._actor_class.options(
                    **resources, max_restarts=self.options.max_restarts, max_concurrency=8,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),  # it is this node's worker
                ).remote(name, self.settings, self.options.worker_host, port)
                self.workers[name] = Worker(name, node_id, node_ip, actor)
                log.info("worker %s: starting on node %s (%s)", name, node_ip, ", ".join(f"{k}={v:g}" for k, v in resources.items()))

    async def _poll_forever(self) -> None:
        import ray

        scanned = time.monotonic()
        while True:
            await asyncio.gather(*(self.refresh(w) for w in list(self.workers.values()) if w.state != "dead"))
            if time.monotonic() - scanned > NODE_SCAN_S:
                scanned = time.monotonic()
                try:
                    self._spawn_on_new_nodes(await asyncio.to_thread(ray.nodes))
                except Exception:  # the GCS did not answer: the workers are still watched, nodes looked for next time
                    log.exception("looking for new nodes failed")
            await asyncio.sleep(POLL_S)

    async def refresh(self, worker: Worker) -> None:
        """Ask a worker how it is now."""
        try:
            status = await self._call(worker.actor.describe.remote())
        except Exception as err:  # noqa: BLE001 - any failure to answer is the worker's failure; _lose logs it
            self._lose(worker, err)
            return
        if worker.status is not None and status.incarnation != worker.status.incarnation:
            worker.restarts += 1
            if worker.state not in ("down", "dead"):  # died and came back between two polls
                self.failures += 1
            self._forget_sessions(worker, "was restarted by Ray after its process died")
            log.warning("worker %s: restarted (%d so far), at %s", worker.name, worker.restarts, status.url)
        for session in status.sessions:  # alive after all (a worker that was only slow to answer)
            self._lost.pop(session.id, None)
        worker.status, worker.error = status, status.failed or ""
        worker.state = ("draining" if worker.draining else "failed" if status.failed else "up" if status.ready else "loading")

    def _lose(self, worker: Worker, err: BaseException) -> None:
        from ray.exceptions import ActorDiedError

        if isinstance(err, TimeoutError) and worker.state == "starting":
            return  # still being built: its constructor starts the server first
        dead = isinstance(err, ActorDiedError)
        if worker.state not in ("down", "dead"):
            if worker.state != "starting":
                self.failures += 1
            log.warning("worker %s: %s (%s)", worker.name, "gone" if dead else "not answering", err)
        worker.state = "dead" if dead else "down"
        worker.error = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else 'no answer'}"[:300]
        self._forget_sessions(worker, "is gone and Ray will not restart it" if dead else
                              "stopped answering (its process died: Ray restarts it)")

    def _forget_sessions(self, worker: Worker, why: str) -> None:
        if worker.status is None:
            return
        for session in worker.status.sessions:
            self._lost[session.id] = (f"session {session.id} ended: its worker {worker.name} ({worker.node_ip}) {why}; "
                                      "start a new session at the front door, which places it on a live worker")
            while len(self._lost) > LOST_KEPT:
                self._lost.popitem(last=False)
        worker.status = replace(worker.status, sessions=())

    @staticmethod
    async def _call(ref: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout)

    # --- placing and finding sessions ---------------------------------------------------------------

    async def place(self, pipeline: str | None, params: Mapping[str, Any], slo: SloSpec, *, queue: bool = False) -> tuple[Worker, str]:
        """The worker a new session goes to (docs/cluster.md, "Placement"), and why; StreamError when none takes it."""
        workers = [w for w in self.workers.values() if w.state != "dead"]
        answers = await asyncio.gather(*(self._ask(w, pipeline, dict(params), slo.model_dump(exclude_unset=True)) for w in workers))
        for answer in answers:
            if answer is not None and answer.error is not None:  # every worker runs the same pipelines: no other would take it
                raise StreamError(ErrorCode(answer.error["code"]), answer.error["message"], field=answer.error.get("field"))
        now = time.monotonic()
        placement = place([_view(w, a, now) for w, a in zip(workers, answers)], queue=queue)
        if placement.worker is None:
            self.placements["refused"] += 1
            raise StreamError(placement.code or ErrorCode.BUSY, placement.reason)
        chosen = self.workers[placement.worker]
        chosen.placed.append(now)
        self.placements["placed"] += 1
        return chosen, placement.reason

    async def _ask(self, worker: Worker, pipeline: str | None, params: dict, slo: dict) -> AdmissionAnswer | None:
        if worker.state not in ("up",):
            return None
        try:
            return await self._call(worker.actor.forecast.remote(pipeline, params, slo))
        except Exception as err:  # noqa: BLE001 - a worker that cannot answer takes nothing; _lose logs it
            self._lose(worker, err)
            return None

    async def locate(self, session_id: str) -> Worker:
        """The worker a session runs on, checked now; StreamError `worker_failed` when its worker died with it."""
        worker = next((w for w in self.workers.values() if any(s.id == session_id for s in w.sessions)), None)
        if worker is not None:
            await self.refresh(worker)  # a worker that died since the last poll is noticed here
        elif session_id not in self._lost:
            # Made since the last poll (a WebSocket redirected to its worker starts it there): ask them all now.
            await asyncio.gather(*(self.refresh(w) for w in self.workers.values() if w.state in ("up", "draining")))
            worker = next((w for w in self.workers.values() if any(s.id == session_id for s in w.sessions)), None)
        if session_id in self._lost:
            raise StreamError(ErrorCode.WORKER_FAILED, self._lost[session_id])
        if worker is None or not any(s.id == session_id for s in worker.sessions):
            raise StreamError(ErrorCode.UNKNOWN_SESSION, f"no session {session_id!r} on any worker (it may have ended or timed out)")
        return worker

    def latest(self) -> tuple[Worker, str]:
        """The newest session with a stream attached (else the newest), for WHEP's and the player's `latest`."""
        entries = [(s.streaming, s.created_at, w, s.id) for w in self.workers.values() if w.state in ("up", "draining") for s in w.sessions]
        if not entries:
            raise StreamError(ErrorCode.UNKNOWN_SESSION, "no session is running yet")
        _, _, worker, session_id = max(entries, key=lambda e: (e[0], e[1]))
        return worker, session_id

    def any_up(self) -> Worker:
        worker = next((w for w in self.workers.values() if w.state == "up"), None)
        if worker is None:
            raise StreamError(ErrorCode.NOT_READY, "no worker is up yet; see /health")
        return worker

    # --- draining ----------------------------------------------------------------------------------

    async def drain(self, name: str, timeout_s: float, why: str = "it is being removed from the cluster") -> Worker:
        """Stop placing sessions on a worker and have it refuse new ones; its sessions go on until they end or the
        timeout passes, then the rest are ended (`stopped`, reason `shutdown`) and the worker stops for good."""
        worker = self.workers.get(name)
        if worker is None:
            raise StreamError(ErrorCode.NOT_FOUND, f"no worker {name!r}; GET /v1/cluster/workers lists them")
        if worker.draining:
            return worker
        worker.draining, worker.state = True, "draining"
        log.info("worker %s: draining (%d session(s), up to %g s): %s", name, len(worker.sessions), timeout_s, why)
        await self._guarded(worker, self._call(worker.actor.drain.remote()))
        task = asyncio.create_task(self._finish_drain(worker, timeout_s, why))
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)
        return worker

    async def _finish_drain(self, worker: Worker, timeout_s: float, why: str) -> None:
        import ray

        deadline = time.monotonic() + timeout_s
        while worker.state == "draining" and worker.sessions and time.monotonic() < deadline:
            await asyncio.sleep(min(POLL_S, max(deadline - time.monotonic(), 0.0)))
            await self.refresh(worker)
        left = len(worker.sessions)
        await self._guarded(worker, self._call(worker.actor.stop.remote(
            f"this worker was drained ({why}) and its {timeout_s:g} s for sessions to end have passed; start a new "
            "session at the front door"), timeout=30.0))
        ray.kill(worker.actor, no_restart=True)
        self.workers.pop(worker.name, None)
        log.info("worker %s: drained and stopped (%d session(s) ended at the timeout)", worker.name, left)

    async def _guarded(self, worker: Worker, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except Exception as err:  # noqa: BLE001 - a worker that died meanwhile is gone either way; _lose logs it
            self._lose(worker, err)
            return None


def _view(worker: Worker, answer: AdmissionAnswer | None, now: float) -> WorkerView:
    status = worker.status
    sessions, max_sessions = len(worker.sessions), status.max_sessions if status else 0
    if answer is None:
        return WorkerView(worker.name, up=False, draining=worker.draining, admits=False, reason=_state_words(worker),
                          load_after=0.0, need=0.0, sessions=sessions, max_sessions=max_sessions)
    return WorkerView(worker.name, up=True, draining=worker.draining or answer.reason == "draining", admits=answer.admits,
                      reason=answer.reason, load_after=answer.load_after, need=answer.need, sessions=sessions,
                      max_sessions=max_sessions, pending=worker.pending(now), max_fps=answer.max_fps)


def _state_words(worker: Worker) -> str:
    words = {"starting": "starting", "loading": "loading its models", "failed": "its models failed to load",
             "down": "not answering (Ray is restarting it)", "draining": "draining", "dead": "gone", "up": "not answering"}
    return words[worker.state] + (f" ({worker.error})" if worker.error and worker.state != "loading" else "")
