"""Capture-to-output latency over WebRTC against the WebSocket API, passthrough pipeline, same run.

    python -m benchmarks.webrtc_latency                      # 512x512 and 1280x720, VP8, H.264, WebSocket JPEG
    python -m benchmarks.webrtc_latency --sizes 512x512 --seconds 30 --rounds 5

The server runs in this process (its own thread and event loop), on 127.0.0.1 only. A synthetic
camera makes frames at `--fps` on the wall clock with moving content; latency is from a frame's
capture to the arrival of the output made from it, matched by the capture time carried through
the server, not by pixels:
- WebRTC: the camera stamps its RTP pts from the capture clock; the server keeps each input's
  pts on its output and announces, on the control channel (`frame_info`), the RTP pts each
  output went out with. Includes encode, RTP, the server's decode, slot, tick and re-encode, and
  the client's decode. Two receiving jitter buffers are on the path (the server's and this
  client's): rows with `marker` release a frame at its last packet (streaming.webrtc.jitter, what
  the server runs), `aiortc` rows use aiortc's own rule (a frame waits for the next one's first
  packet) on both hops.
- WebSocket: the client JPEG-encodes the capture (quality 90) and sends it with its capture
  time as pts; outputs come back as JPEG carrying it.
Encode/decode columns time aiortc's own codec objects on the same kind of frames, one frame at a
time, so they say what each hop costs in CPU. The rows of a size take turns (`--rounds`) and
their samples are pooled, so a drifting load on a shared CPU hits them alike; absolute numbers
there are still noisy: compare rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from fractions import Fraction

import av
import httpx
import numpy as np
import uvicorn
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.codecs import depayload, get_decoder, get_encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from app.serve import uvicorn_config
from app.server import create_app
from app.settings import Settings
from benchmarks.common import machine
from pipelines.passthrough import PassthroughPipeline
from streaming.client import StreamClient
from streaming.codec import encode_image
from streaming.webrtc.codecs import H264_BOUNDS, VP8_BOUNDS, start_bitrate
from streaming.webrtc.jitter import release_frames_on_marker, stock_release
from streaming.webrtc.loopback import loopback_only_ice

CLOCK = 90000
CODECS = {"VP8": RTCRtpCodecParameters(mimeType="video/VP8", clockRate=CLOCK, payloadType=96),
          "H264": RTCRtpCodecParameters(mimeType="video/H264", clockRate=CLOCK, payloadType=97,
                                        parameters={"packetization-mode": "1", "profile-level-id": "42e01f"})}
SKIP_S = 2.0  # warm-up left out of the figures (first keyframe, encoder rate settling)


def moving_picture(index: int, width: int, height: int) -> np.ndarray:
    """Moving content, like a camera panning: scrolling gradients and a bright bar."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(x + 4 * index) % 256, (y + 2 * index) % 256, (x + y) % 256], -1).astype(np.uint8)
    image[:, (8 * index) % width:(8 * index) % width + 16] = 255
    return image


class Camera(MediaStreamTrack):
    """Frames on the wall clock; RTP pts is the capture time since the first frame."""

    kind = "video"

    def __init__(self, width: int, height: int, fps: float):
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self.start: float | None = None
        self.index = 0
        self.pictures = [moving_picture(i, width, height) for i in range(30)]

    async def recv(self) -> av.VideoFrame:
        if self.start is None:
            self.start = time.monotonic()
        await asyncio.sleep(max(0.0, self.start + self.index / self.fps - time.monotonic()))
        captured = time.monotonic()
        frame = av.VideoFrame.from_ndarray(self.pictures[self.index % len(self.pictures)], format="rgb24")
        frame.pts, frame.time_base = round((captured - self.start) * CLOCK), Fraction(1, CLOCK)
        self.index += 1
        return frame


def percentiles(latencies: list[float]) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(np.array(latencies) * 1000, [50, 95, 99]) if latencies else (np.nan,) * 3
    return float(p50), float(p95), float(p99)


async def webrtc_run(url: str, codec: str, width: int, height: int, fps: float, seconds: float) -> dict:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    camera = Camera(width, height, fps)
    transceiver = pc.addTransceiver(camera, direction="sendrecv")
    capabilities = RTCRtpSender.getCapabilities("video").codecs
    transceiver.setCodecPreferences([c for c in capabilities if c.mimeType == f"video/{codec}"])
    channel = pc.createDataChannel("control")
    opened, out_pts = asyncio.Event(), {}
    channel.on("open", opened.set)

    def on_message(text: str) -> None:
        message = json.loads(text)
        if message["type"] == "frame":
            out_pts[message["rtp_pts"]] = message["pts"]

    channel.on("message", on_message)
    arrivals: list[tuple[float, int]] = []

    async def receive(track) -> None:
        try:
            while True:
                frame = await track.recv()
                arrivals.append((time.monotonic(), frame.pts))
        except MediaStreamError:
            pass

    tasks = []
    pc.on("track", lambda track: tasks.append(asyncio.create_task(receive(track))))
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(base_url=url) as http:
        answer = (await http.post("/v1/webrtc/offer", json={"sdp": pc.localDescription.sdp, "frame_info": True})).json()
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    await asyncio.wait_for(opened.wait(), 10)
    channel.send(json.dumps({"type": "start", "request_id": "s", "pipeline": "passthrough",
                             "slo": {"target_fps": fps, "latency_budget_ms": 2000}}))
    await asyncio.sleep(seconds + SKIP_S)
    stats_reply = asyncio.get_running_loop().create_future()
    channel.on("message", lambda text: json.loads(text).get("request_id") == "q" and not stats_reply.done()
               and stats_reply.set_result(json.loads(text)))
    channel.send(json.dumps({"type": "stats", "request_id": "q"}))
    stats = await asyncio.wait_for(stats_reply, 5)
    await pc.close()
    for task in tasks:
        task.cancel()
    begin = camera.start + SKIP_S
    latencies = []
    for at, pts in arrivals:
        # The decoder may round the pts by a tick of the 90 kHz clock.
        sent_pts = next((p for p in (pts, pts - 1, pts + 1) if p in out_pts), None)
        if sent_pts is not None and at >= begin:
            latencies.append(at - (camera.start + out_pts[sent_pts]))
    return {"latencies": latencies, "fps": len(latencies) / seconds, "dropped": stats["dropped_input"] + stats["dropped_output"]}


async def websocket_run(url: str, width: int, height: int, fps: float, seconds: float) -> dict:
    pictures = [moving_picture(i, width, height) for i in range(30)]
    latencies: list[float] = []
    async with await StreamClient.connect(url) as client:
        await client.start("passthrough", slo={"target_fps": fps, "latency_budget_ms": 2000}, output_format="jpeg", quality=90)
        start = time.monotonic()

        async def receive() -> None:
            while True:
                frame = await client.receive_frame()
                now = time.monotonic()
                if now >= start + SKIP_S:
                    latencies.append(now - frame.pts)

        receiving = asyncio.create_task(receive())
        index = 0
        while time.monotonic() < start + SKIP_S + seconds:
            await asyncio.sleep(max(0.0, start + index / fps - time.monotonic()))
            captured = time.monotonic()
            payload = await asyncio.to_thread(encode_image, pictures[index % len(pictures)], "jpeg", 90)
            await client.send_encoded(payload, width, height, frame_id=index, pts=captured)
            index += 1
        await asyncio.sleep(0.5)
        receiving.cancel()
        stats = await client.stats()
    return {"latencies": latencies, "fps": len(latencies) / seconds, "dropped": stats["dropped_input"] + stats["dropped_output"]}


def codec_cost(codec: str, width: int, height: int, fps: float, frames: int = 60) -> tuple[float, float, int]:
    """(encode ms, decode ms, kbit/s) per frame with aiortc's codec objects at the start bitrate."""
    encoder = get_encoder(CODECS[codec])
    encoder.target_bitrate = start_bitrate(width, height, fps, VP8_BOUNDS if codec == "VP8" else H264_BOUNDS)
    decoder = get_decoder(CODECS[codec])
    encode_s = decode_s = 0.0
    sent_bytes = 0
    for index in range(frames):
        frame = av.VideoFrame.from_ndarray(moving_picture(index, width, height), format="rgb24")
        frame.pts, frame.time_base = round(index * CLOCK / fps), Fraction(1, CLOCK)
        started = time.perf_counter()
        payloads, timestamp = encoder.encode(frame, force_keyframe=index == 0)
        encode_s += time.perf_counter() - started
        data = b"".join(depayload(CODECS[codec], p) for p in payloads)
        sent_bytes += sum(len(p) for p in payloads)
        started = time.perf_counter()
        decoder.decode(JitterFrame(data=data, timestamp=timestamp))
        decode_s += time.perf_counter() - started
    return encode_s / frames * 1000, decode_s / frames * 1000, round(sent_bytes * 8 * fps / frames / 1000)


def serve(settings: Settings) -> tuple[uvicorn.Server, threading.Thread, str]:
    app = create_app(settings, lambda: {"passthrough": PassthroughPipeline()})
    server = uvicorn.Server(uvicorn_config(app, settings, port=0))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not (server.started and app.state.context.worker.ready.is_set()):
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


# (transport, codec, jitter-buffer rule) per row
CONFIGS = (("WebRTC", "VP8", "marker"), ("WebRTC", "H264", "marker"), ("WebRTC", "VP8", "aiortc"), ("WebSocket", "JPEG q90", "–"))


def run_config(url: str, config: tuple[str, str, str], width: int, height: int, fps: float, seconds: float) -> dict:
    transport, codec, release = config
    release_frames_on_marker() if release != "aiortc" else stock_release()
    if transport == "WebSocket":
        return asyncio.run(websocket_run(url, width, height, fps, seconds))
    return asyncio.run(webrtc_run(url, codec, width, height, fps, seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="512x512,1280x720")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=12.0, help="measured time per row, over all rounds")
    parser.add_argument("--rounds", type=int, default=3, help="rows take turns this many times (a shared CPU's load drifts)")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]

    with loopback_only_ice():
        server, thread, url = serve(Settings(_env_file=None, warmup=False, log_level="warning"))
        try:
            print(f"machine: {machine()}")
            print(f"settings: passthrough, {args.fps:g} fps camera, {args.seconds:g} s per row in {args.rounds} rounds "
                  f"(each after a {SKIP_S:g} s warm-up), server in this process on 127.0.0.1\n")
            print("| size | transport | codec | jitter buffer | p50 ms | p95 ms | p99 ms | fps out | drops "
                  "| encode ms/frame | decode ms/frame | kbit/s |")
            print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            for width, height in sizes:
                pooled = {config: {"latencies": [], "fps": 0.0, "dropped": 0} for config in CONFIGS}
                for _ in range(args.rounds):
                    for config in CONFIGS:
                        run = run_config(url, config, width, height, args.fps, args.seconds / args.rounds)
                        pooled[config]["latencies"] += run["latencies"]
                        pooled[config]["fps"] += run["fps"] / args.rounds
                        pooled[config]["dropped"] += run["dropped"]
                release_frames_on_marker()
                for (transport, codec, release), run in pooled.items():
                    p50, p95, p99 = percentiles(run["latencies"])
                    costs = "– | – | –"
                    if transport == "WebRTC":
                        encode_ms, decode_ms, kbits = codec_cost(codec, width, height, args.fps)
                        costs = f"{encode_ms:.1f} | {decode_ms:.1f} | {kbits}"
                    print(f"| {width}x{height} | {transport} | {codec} | {release} | {p50:.1f} | {p95:.1f} | {p99:.1f} | "
                          f"{run['fps']:.1f} | {run['dropped']} | {costs} |", flush=True)
        finally:
            server.should_exit = True
            thread.join(15)


if __name__ == "__main__":
    main()
