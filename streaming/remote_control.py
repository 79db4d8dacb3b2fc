"""Parameter changes from controllers that are not a stream's own connection (OSC, MIDI): which
session they go to, how a controller's 0..1 position becomes a parameter value, and the order
they are applied in. Transport-agnostic: `app/live_control` turns OSC packets and MIDI messages
into `RemoteUpdate`s and their outcomes back into replies.

Every change goes through `SessionManager.update`, the path a WebSocket `update` takes, so it is
validated, normalised and acknowledged exactly like one. A fader sends dozens of values a second
and an update waits for a tick boundary, so changes are coalesced per session and key: while one
update is being applied, a newer value for the same key replaces the one waiting (last value
wins, as DESIGN.md asks of parameters); the replaced value is never applied nor answered.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic import BaseModel

from streaming.errors import ErrorCode, StreamError
from streaming.session import Session
from streaming.sessions import SessionManager, UpdateReport

log = logging.getLogger(__name__)

# What a remote update's sender is told: the report of the applied update, or why it was refused.
Outcome = UpdateReport | StreamError


@dataclass(frozen=True)
class RemoteUpdate:
    """One change asked for by a controller.

    `session_id` None means the latest session. `changes` computes the parameter changes against the
    session when it is applied (a toggle reads the value then in force; a scaled value reads the
    session's schema); it raises StreamError to refuse. Updates with the same `key` on one session
    coalesce (None: never coalesced, as a toggle must not be). `reply` hears the outcome.
    """

    session_id: str | None
    changes: Callable[[Session], dict[str, Any]]
    key: str | None
    reply: Callable[[Session | None, Outcome], Awaitable[None]]


def latest_session(sessions: SessionManager) -> Session:
    """The session created last among those still open; StreamError(unknown_session) when none is."""
    for session in reversed(list(sessions.sessions.values())):
        if not session.closed:
            return session
    raise StreamError(ErrorCode.UNKNOWN_SESSION, "no session is running")


class RemoteControl:
    """Applies controllers' updates to sessions, one at a time per session, newest value per key."""

    def __init__(self, sessions: SessionManager):
        self.sessions = sessions
        self._pending: dict[str, dict[object, RemoteUpdate]] = {}  # session id -> key -> the update waiting
        self._appliers: dict[str, asyncio.Task] = {}
        self._replies: set[asyncio.Task] = set()
        self._unkeyed = 0

    def target(self, session_id: str | None) -> Session:
        return latest_session(self.sessions) if session_id is None else self.sessions.get(session_id)

    def submit(self, update: RemoteUpdate) -> None:
        """Queue an update (on the event loop); its outcome goes to `update.reply`."""
        try:
            session = self.target(update.session_id)
        except StreamError as err:
            self._spawn_reply(update.reply(None, err))
            return
        pending = self._pending.setdefault(session.id, {})
        key: object = update.key
        if key is None:
            self._unkeyed += 1
            key = self._unkeyed
        pending.pop(key, None)  # the newer value goes to the back of the line
        pending[key] = update
        if session.id not in self._appliers:
            task = asyncio.create_task(self._apply_pending(session))
            self._appliers[session.id] = task

    async def _apply_pending(self, session: Session) -> None:
        try:
            while pending := self._pending.get(session.id):
                update = pending.pop(next(iter(pending)))
                outcome: Outcome
                try:
                    outcome = await self.sessions.update(session, update.changes(session))
                except StreamError as err:
                    outcome = err
                await self._reply(update.reply(session, outcome))
        finally:
            self._pending.pop(session.id, None)
            self._appliers.pop(session.id, None)

    def _spawn_reply(self, reply: Awaitable[None]) -> None:
        task = asyncio.ensure_future(self._reply(reply))
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    @staticmethod
    async def _reply(reply: Awaitable[None]) -> None:
        try:
            await reply
        except Exception:  # a controller that cannot be answered must not stop the others' updates
            log.exception("answering a remote update failed")

    async def close(self) -> None:
        """Drop what waits and stop applying (the server is shutting down)."""
        self._pending.clear()
        tasks = [*self._appliers.values(), *self._replies]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ---- a controller's position as a parameter value -------------------------------------------------


POSITIONS = 127  # steps of a controller's travel (a MIDI CC's); an open end of a range lies one step beyond it


@cache
def _schema(params_model: type[BaseModel]) -> dict[str, Any]:
    return params_model.model_json_schema()


def param_schema(params_model: type[BaseModel], name: str) -> dict[str, Any]:
    """The JSON schema of one parameter (a nullable one: of its non-null form); StreamError(bad_params) for a
    name the model does not have."""
    prop = _schema(params_model)["properties"].get(name)
    if prop is None:
        raise StreamError(ErrorCode.BAD_PARAMS, f"{name}: not a parameter of this session's pipeline", field=name)
    options = [p for p in prop.get("anyOf", []) if p.get("type") != "null"]
    if len(options) != 1:
        return prop
    return {**{k: v for k, v in prop.items() if k != "anyOf"}, **options[0]}


def scale_to_param(prop: dict[str, Any], name: str, position: float, low: float | None = None,
                   high: float | None = None) -> Any:
    """The value of parameter `name` (JSON schema `prop`) at `position` in 0..1 of its range.

    Numbers span [minimum, maximum] of the schema, or [low, high] where given; an exclusive bound is
    never reached (the positions spread evenly inside the open end), integers round (to `multipleOf`
    too). A boolean is on from the middle up; a choice (`enum`) splits the range evenly. Anything else
    (text, lists) has no position: StreamError(bad_params)."""
    position = min(1.0, max(0.0, position))
    kind = prop.get("type")
    if kind == "boolean":
        return position >= 0.5
    if "enum" in prop:
        choices = prop["enum"]
        return choices[min(len(choices) - 1, int(position * len(choices)))]
    if kind not in ("number", "integer"):
        raise StreamError(ErrorCode.BAD_PARAMS, f"{name}: a {kind or 'composite'} parameter has no range to scale onto; "
                          "set it with a value instead", field=name)
    open_low = low is None and "minimum" not in prop and "exclusiveMinimum" in prop
    open_high = high is None and "maximum" not in prop and "exclusiveMaximum" in prop
    low = low if low is not None else prop.get("minimum", prop.get("exclusiveMinimum"))
    high = high if high is not None else prop.get("maximum", prop.get("exclusiveMaximum"))
    if low is None or high is None:
        raise StreamError(ErrorCode.BAD_PARAMS, f"{name}: its schema has no {'minimum' if low is None else 'maximum'}; "
                          "give the range to scale onto (min and max)", field=name)
    value = low + (high - low) * (position * POSITIONS + open_low) / (POSITIONS + open_low + open_high)
    if kind == "number":
        return value
    step = prop.get("multipleOf", 1)
    lowest, highest = math.ceil(low / step) * step, math.floor(high / step) * step
    lowest += step if open_low and lowest <= low else 0
    highest -= step if open_high and highest >= high else 0
    return int(min(highest, max(lowest, round(value / step) * step)))
