"""Prometheus metrics: server-wide counters and histograms, plus per-session gauges read from the
live sessions at scrape time (so a closed session's series disappear with it).

Each server owns its registry, so several servers in one process (tests) do not collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pipelines.base import Pipeline

disable_created_metrics()  # the `_created` twin of every series only doubles the scrape

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.033, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class PipelineMetrics:
    """The server-wide series of one pipeline, bound once so the hot path does no label lookups."""

    frames_received: Counter
    frames_sent: Counter
    dropped_input: Counter
    dropped_output: Counter
    dropped_stale: Counter
    deadline_misses: Counter
    latency: Histogram
    queue_wait: Histogram
    model_time: Histogram
    batch_size: Histogram
    time_to_first_frame: Histogram


@dataclass(frozen=True)
class SessionSample:
    session_id: str
    pipeline: str
    snapshot: dict


class _PipelineCollector(Collector):
    """Series a pipeline keeps itself (its `metric_families(name)`), read at each scrape: the
    relay-speech pipeline's per-turn latencies, for instance."""

    def __init__(self, pipelines: Callable[[], Iterable[tuple[str, Pipeline]]]):
        self._pipelines = pipelines

    def collect(self):
        for name, pipeline in self._pipelines():
            yield from pipeline.metric_families(name)


class _SessionCollector(Collector):
    def __init__(self, sessions: Callable[[], Iterable[SessionSample]]):
        self._sessions = sessions

    def collect(self):
        fps_in = GaugeMetricFamily("latentcast_session_fps_in", "Input frames per second of a session.", labels=["session", "pipeline"])
        fps_out = GaugeMetricFamily("latentcast_session_fps_out", "Output frames per second of a session.", labels=["session", "pipeline"])
        latency = GaugeMetricFamily("latentcast_session_latency_seconds", "Received-to-sent latency quantiles over the recent frames.",
                                    labels=["session", "pipeline", "quantile"])
        dropped = GaugeMetricFamily("latentcast_session_dropped_frames", "Frames dropped by a session so far.",
                                    labels=["session", "pipeline", "where"])
        misses = GaugeMetricFamily("latentcast_session_deadline_misses", "Frames sent later than the session's latency budget.",
                                   labels=["session", "pipeline"])
        # Temporal consistency of video sessions (streaming.consistency), `source` output or input.
        warp = GaugeMetricFamily("latentcast_session_warp_error", "Mean squared RGB difference between consecutive frames "
                                 "after warping by the input's optical flow, occlusions masked (recent samples).",
                                 labels=["session", "pipeline", "source"])
        flicker = GaugeMetricFamily("latentcast_session_flicker", "Frame-to-frame change of a 4x4 grid of mean colours (recent samples).",
                                    labels=["session", "pipeline", "source"])
        drift = GaugeMetricFamily("latentcast_session_drift", "The output's last seconds against its first: color_shift (RGB distance), "
                                  "contrast_ratio and sharpness_ratio (1: no drift).", labels=["session", "pipeline", "measure", "source"])
        for s in self._sessions():
            ids = [s.session_id, s.pipeline]
            fps_in.add_metric(ids, s.snapshot["fps_in"])
            fps_out.add_metric(ids, s.snapshot["fps_out"])
            for q, ms in s.snapshot["latency_ms"].items():
                if ms is not None:
                    latency.add_metric([*ids, f"0.{q[1:]}"], ms / 1000)
            dropped.add_metric([*ids, "input"], s.snapshot["dropped_input"])
            dropped.add_metric([*ids, "output"], s.snapshot["dropped_output"])
            dropped.add_metric([*ids, "stale"], s.snapshot["dropped_stale"])
            misses.add_metric(ids, s.snapshot["deadline_misses"])
            _add_consistency(s.snapshot.get("consistency"), ids, warp, flicker, drift)
        yield from (fps_in, fps_out, latency, dropped, misses, warp, flicker, drift)


def _add_consistency(section: dict | None, ids: list[str], warp: GaugeMetricFamily, flicker: GaugeMetricFamily,
                     drift: GaugeMetricFamily) -> None:
    """A session's measured consistency values (none until its first samples)."""
    if section is None:
        return
    for family, name in ((warp, "warp_error"), (flicker, "flicker")):
        for source, key in (("output", name), ("input", f"{name}_input")):
            if section[key] is not None:
                family.add_metric([*ids, source], section[key])
    sources = [("output", section["drift"])]
    if section["drift"] is not None:
        sources.append(("input", section["drift"].get("input")))
    for source, values in sources:
        for measure, value in (values or {}).items():
            if measure != "input" and value is not None:
                drift.add_metric([*ids, measure, source], value)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge("latentcast_sessions_active", "Sessions open now.", registry=r)
        self.ready = Gauge("latentcast_ready", "1 once the models are loaded and warm.", registry=r)
        self.sessions_refused = Counter("latentcast_sessions_refused_total", "Sessions refused by admission control.", ["reason"], registry=r)
        self.errors = Counter("latentcast_errors_total", "Error messages sent to clients, by code.", ["code"], registry=r)
        self._frames_received = Counter("latentcast_frames_received_total", "Input frames received.", ["pipeline"], registry=r)
        self._frames_sent = Counter("latentcast_frames_sent_total", "Output frames sent.", ["pipeline"], registry=r)
        self._dropped = Counter("latentcast_frames_dropped_total", "Frames dropped: input replaced before use (latest wins), "
                                "input older than its latency budget (stale), or output a slow client could not take.",
                                ["pipeline", "where"], registry=r)
        self._misses = Counter("latentcast_deadline_misses_total", "Frames sent later than their session's latency budget.", ["pipeline"], registry=r)
        self._latency = Histogram("latentcast_frame_latency_seconds", "Received-to-sent latency of output frames.", ["pipeline"],
                                  buckets=_LATENCY_BUCKETS, registry=r)
        self._queue_wait = Histogram("latentcast_queue_wait_seconds", "Time an input waited in its slot before a step took it.", ["pipeline"],
                                     buckets=_LATENCY_BUCKETS, registry=r)
        self._model_time = Histogram("latentcast_model_seconds", "Duration of one batched pipeline step.", ["pipeline"],
                                     buckets=_LATENCY_BUCKETS, registry=r)
        self._batch = Histogram("latentcast_batch_size", "Streams served by one pipeline step.", ["pipeline"],
                                buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=r)
        self._ttff = Histogram("latentcast_time_to_first_frame_seconds", "Session start to first output frame sent.", ["pipeline"],
                               buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=r)

    def track_sessions(self, sessions: Callable[[], Iterable[SessionSample]]) -> None:
        """Export per-session gauges read from `sessions()` at each scrape."""
        self.registry.register(_SessionCollector(sessions))

    def track_pipelines(self, pipelines: Callable[[], Iterable[tuple[str, Pipeline]]]) -> None:
        """Export the series pipelines keep themselves, from `(name, pipeline)` pairs at each scrape."""
        self.registry.register(_PipelineCollector(pipelines))

    def for_pipeline(self, pipeline: str) -> PipelineMetrics:
        return PipelineMetrics(
            frames_received=self._frames_received.labels(pipeline),
            frames_sent=self._frames_sent.labels(pipeline),
            dropped_input=self._dropped.labels(pipeline, "input"),
            dropped_output=self._dropped.labels(pipeline, "output"),
            dropped_stale=self._dropped.labels(pipeline, "stale"),
            deadline_misses=self._misses.labels(pipeline),
            latency=self._latency.labels(pipeline),
            queue_wait=self._queue_wait.labels(pipeline),
            model_time=self._model_time.labels(pipeline),
            batch_size=self._batch.labels(pipeline),
            time_to_first_frame=self._ttff.labels(pipeline),
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
