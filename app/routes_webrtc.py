"""WebRTC for the browser demo and apps: HTTP offer/answer, then media on the tracks and the
WebSocket API's control messages on a data channel named `control` (docs/protocol.md).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from app.auth import token_owner
from app.context import ServerContext, server_context
from app.peers import answer_or_close, new_peer
from streaming.protocol import PROTOCOL_VERSION
from streaming.webrtc.control import CHANNEL_LABEL, ControlChannel
from streaming.webrtc.offer import check_offer

router = APIRouter(prefix="/v1/webrtc", tags=["webrtc"])


class Offer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sdp: str = Field(description="The client's complete SDP offer (gathering finished: no trickle); at most 64 KiB.")
    type: Literal["offer"] = "offer"
    frame_info: bool = Field(False, description="Announce each generated frame on the data channel (`frame` messages) "
                             "with the RTP pts it was sent with, to match outputs to inputs.")


class Answer(BaseModel):
    sdp: str
    type: Literal["answer"] = "answer"
    peer_id: str
    protocol: int = Field(PROTOCOL_VERSION, description="Version of the control messages on the data channel.")


@router.post("/offer", response_model=Answer, responses={
    400: {"description": "bad_sdp: not a usable SDP offer (the message names the line)"},
    413: {"description": "message_too_large: an offer over 64 KiB"},
    422: {"description": "bad_message: a missing or ill-typed field; unsupported_format: no codec in common"},
    503: {"description": "busy: too many connections"}})
async def offer(body: Offer, request: Request, context: ServerContext = Depends(server_context)) -> Answer:
    """Answer a WebRTC offer. Send video (and audio) to be transformed, receive the generated
    media back, and open a data channel `control`: `start` on it creates the session."""
    check_offer(body.sdp)  # the whole offer is checked before a peer exists
    peer = new_peer(context, "webrtc", receive=True, send=True, owner=token_owner(request))
    settings = context.settings

    @peer.pc.on("datachannel")
    def on_channel(channel) -> None:
        if channel.label == CHANNEL_LABEL:
            ControlChannel(peer, channel, context.sessions, context.metrics, max_control_bytes=settings.max_control_bytes,
                           stats_interval_s=settings.stats_interval_s, frame_info=body.frame_info)

    sdp = await answer_or_close(peer, body.sdp, request)
    return Answer(sdp=sdp, peer_id=peer.id)
