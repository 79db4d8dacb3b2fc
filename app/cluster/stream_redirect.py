"""The front door's WebSocket: it places the session a `start` asks for and tells the client where to reconnect.

    client                     front door                       worker
      | -- (connect) ----------> |                                 |
      | <---------------- hello  |  "role": "front-door"           |
      | -- start --------------> |  placed on the least loaded worker that admits it
      | <------------- redirect  |  {"url": "ws://worker/v1/stream", "worker", "reason"}; the socket closes (1000)
      | -- (connect) ------------------------------------------->  |
      | <------------------------------------------------ hello -- |
      | -- the same start --------------------------------------->  |  admitted there (its own admission control)
      | <---------------------------------------------- started -- |

A redirect, not a proxy: media then flows between the client and its worker only, and the front door carries
no frame. It costs one more connection and one round trip at the start, and a client that follows it
(`streaming.client.StreamClient`, the demo). `start` with `session_id` is sent to that session's worker; a start
that may wait in line (`queue`) goes to the least loaded worker when none admits it now, and waits there.
"""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Depends, WebSocket, WebSocketDisconnect

from app import __version__
from app.cluster.context import FrontDoor, front_door
from app.cluster.pool import Worker
from streaming.errors import ErrorCode, StreamError
from streaming.protocol import PROTOCOL_VERSION, StartMessage, parse_control, request_id_of

router = APIRouter()


@router.websocket("/v1/stream")
async def stream(websocket: WebSocket, door: FrontDoor = Depends(front_door)) -> None:
    await websocket.accept()
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, ConnectionError):  # the client left: nothing to tell it
        await websocket.send_json(hello(door))
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            try:
                worker, reason, request_id = await _placed(door, text)
            except StreamError as err:
                body = {"type": "error", **err.to_dict()}
                if text is not None and (request_id := request_id_of(text)) is not None:
                    body["request_id"] = request_id
                await websocket.send_json(body)
                continue
            url = door.worker_url(worker, "/v1/stream", websocket, scheme="wss" if websocket.url.scheme == "wss" else "ws")
            await websocket.send_json({"type": "redirect", "request_id": request_id, "url": url, "worker": worker.name, "reason": reason})
            await websocket.close(1000, "redirect")
            return


async def _placed(door: FrontDoor, text: str | None) -> tuple[Worker, str, str | None]:
    """The worker a `start` goes to; StreamError for anything else, or a start no worker takes."""
    if text is None:
        raise StreamError(ErrorCode.NOT_STARTED, "send 'start' first: the front door places the session and sends you to its worker")
    if len(text) > door.settings.max_control_bytes:
        raise StreamError(ErrorCode.MESSAGE_TOO_LARGE, f"control message over {door.settings.max_control_bytes} bytes")
    message = parse_control(text)
    if not isinstance(message, StartMessage):
        raise StreamError(ErrorCode.NOT_STARTED, f"send 'start' before '{message.type}': the front door places the session first")
    if message.version != PROTOCOL_VERSION:
        raise StreamError(ErrorCode.UNSUPPORTED_VERSION, f"protocol version {message.version}; this server speaks {PROTOCOL_VERSION}")
    if message.session_id is not None:
        return await door.pool.locate(message.session_id), "the session runs there", message.request_id
    worker, reason = await door.pool.place(message.pipeline, message.params, message.slo, queue=message.queue)
    return worker, reason, message.request_id


def hello(door: FrontDoor) -> dict:
    """The lone server's `hello` (docs/protocol.md), from a front door: `role` says a `start` will be redirected."""
    s = door.settings
    up = [w for w in door.pool.workers.values() if w.state == "up" and w.status is not None]
    pipelines = list(up[0].status.pipelines) if up and up[0].status else []
    return {"type": "hello", "protocol": PROTOCOL_VERSION, "server": f"latentcast {__version__}", "role": "front-door",
            "ready": bool(up), "pipelines": pipelines, "default_pipeline": pipelines[0] if pipelines else None,
            "limits": {"max_message_bytes": s.max_message_bytes, "max_control_bytes": s.max_control_bytes,
                       "max_frame_width": s.max_frame_width, "max_frame_height": s.max_frame_height,
                       "formats": s.allowed_formats, "audio_buffer_s": s.audio_buffer_s}}
