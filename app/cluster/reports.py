"""What a worker tells the front door through Ray: plain, picklable records (no server objects cross)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SessionEntry:
    id: str
    pipeline: str
    created_at: float   # unix time
    streaming: bool     # a stream connection is attached


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    incarnation: str    # new at every (re)start of the actor: a change means the sessions before it are gone
    url: str            # http://HOST:PORT where clients reach it
    node_ip: str
    pid: int
    ready: bool         # models loaded and warm
    failed: str | None  # loading the models failed
    draining: bool
    sessions: tuple[SessionEntry, ...]
    max_sessions: int
    queued: int         # starts waiting in its admission queue
    load: float         # share of its plannable compute the running sessions need (1: all of it)
    pipelines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AdmissionAnswer:
    """A worker's admission control on one session request (`SessionManager.forecast_admission`)."""

    admits: bool
    reason: str                 # why not, when not
    load_after: float           # share of its plannable compute its sessions would need with this one in
    need: float                 # the share this session alone would take
    max_fps: float | None = None
    error: dict | None = None   # a request no worker could take (unknown pipeline, bad parameters): the error body
