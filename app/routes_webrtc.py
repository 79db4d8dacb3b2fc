"""WebRTC for the browser demo and apps: HTTP offer/answer, then media on the tracks and the
WebSocket API's control messages on a data channel named `control` (docs/protocol.md).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app.context import ServerContext, server_context
from app.peers import new_peer, peer_registry
from app.sdp_exchange import MAX_SDP_BYTES
from streaming.errors import ErrorCode, StreamError
from streaming.protocol import PROTOCOL_VERSION
from streaming.webrtc.codecs import UnsupportedOffer
from streaming.webrtc.control import CHANNEL_LABEL, ControlChannel
from streaming.webrtc.peer import PeerRegistry

router = APIRouter(prefix="/v1/webrtc", tags=["webrtc"])


class Offer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sdp: str = Field(max_length=MAX_SDP_BYTES, description="The client's complete SDP offer (gathering finished: no trickle).")
    type: Literal["offer"] = "offer"
    frame_info: bool = Field(False, description="Announce each generated frame on the data channel (`frame` messages) "
                             "with the RTP pts it was sent with, to match outputs to inputs.")


class Answer(BaseModel):
    sdp: str
    type: Literal["answer"] = "answer"
    peer_id: str
    protocol: int = Field(PROTOCOL_VERSION, description="Version of the control messages on the data channel.")


@router.post("/offer", response_model=Answer, responses={
    400: {"description": "bad_message: not an SDP offer"}, 422: {"description": "unsupported_format: no codec in common"},
    503: {"description": "busy: too many connections"}})
async def offer(body: Offer, context: ServerContext = Depends(server_context),
                peers: PeerRegistry = Depends(peer_registry)) -> Answer | JSONResponse:
    """Answer a WebRTC offer. Send video (and audio) to be transformed, receive the generated
    media back, and open a data channel `control`: `start` on it creates the session."""
    peer = new_peer(context, peers, "webrtc", receive=True, send=True)
    settings = context.settings

    @peer.pc.on("datachannel")
    def on_channel(channel) -> None:
        if channel.label == CHANNEL_LABEL:
            ControlChannel(peer, channel, context.sessions, context.metrics, max_control_bytes=settings.max_control_bytes,
                           stats_interval_s=settings.stats_interval_s, frame_info=body.frame_info)

    try:
        sdp = await peer.answer(body.sdp)
    except UnsupportedOffer as err:
        await peer.close()
        return JSONResponse({"error": StreamError(ErrorCode.UNSUPPORTED_FORMAT, str(err)).to_dict()}, status_code=422)
    except ValueError as err:
        await peer.close()
        raise StreamError(ErrorCode.BAD_MESSAGE, str(err), field="sdp") from None
    return Answer(sdp=sdp, peer_id=peer.id)
