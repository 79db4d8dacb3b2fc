"""The front door's Prometheus series: the cluster's capacity and each worker's load, read from the pool at scrape.

Each worker keeps its own `/metrics` (frames, latency, per-session series) at its URL; scrape those too for the
media side. These say what placement sees.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from app.cluster.pool import WorkerPool

STATES = ("starting", "loading", "up", "failed", "down", "draining", "dead")


class _ClusterCollector(Collector):
    def __init__(self, pool: WorkerPool):
        self.pool = pool

    def collect(self):
        workers = list(self.pool.workers.values())
        states = GaugeMetricFamily("latentcast_cluster_workers", "Workers by state.", labels=["state"])
        for state in STATES:
            states.add_metric([state], sum(1 for w in workers if w.state == state))
        up = [w for w in workers if w.state == "up" and w.status is not None]
        capacity = GaugeMetricFamily("latentcast_cluster_session_slots", "Session slots of the workers that take sessions "
                                     "(up, not draining), and how many are in use.", labels=["use"])
        capacity.add_metric(["total"], sum(w.status.max_sessions for w in up if w.status))
        capacity.add_metric(["used"], sum(len(w.sessions) for w in up))
        sessions = GaugeMetricFamily("latentcast_worker_sessions", "Sessions running on a worker.", labels=["worker", "node"])
        slots = GaugeMetricFamily("latentcast_worker_session_slots", "A worker's max_sessions.", labels=["worker", "node"])
        load = GaugeMetricFamily("latentcast_worker_load", "Share of a worker's plannable compute its sessions need, as its "
                                 "admission control forecasts it from measured costs (1: all of it).", labels=["worker", "node"])
        queued = GaugeMetricFamily("latentcast_worker_queued", "Starts waiting in a worker's admission queue.", labels=["worker", "node"])
        worker_up = GaugeMetricFamily("latentcast_worker_up", "1 when a worker takes sessions, else 0.", labels=["worker", "node"])
        restarts = CounterMetricFamily("latentcast_worker_restarts", "Times Ray restarted a worker.", labels=["worker", "node"])
        for w in workers:
            labels = [w.name, w.node_ip]
            worker_up.add_metric(labels, 1 if w.state == "up" else 0)
            restarts.add_metric(labels, w.restarts)
            sessions.add_metric(labels, len(w.sessions))
            if w.status is not None:
                slots.add_metric(labels, w.status.max_sessions)
                load.add_metric(labels, w.status.load)
                queued.add_metric(labels, w.status.queued)
        placements = CounterMetricFamily("latentcast_cluster_placements", "New sessions placed on a worker, or refused "
                                         "because none admitted them.", labels=["result"])
        for result in ("placed", "refused"):
            placements.add_metric([result], self.pool.placements[result])
        failures = CounterMetricFamily("latentcast_cluster_worker_failures", "Workers seen to die or be restarted.")
        failures.add_metric([], self.pool.failures)
        yield from (states, capacity, sessions, slots, load, queued, worker_up, restarts, placements, failures)


def cluster_metrics(pool: WorkerPool) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ClusterCollector(pool))
    return registry
