"""`latentcast virtualcam`: a session's generated video as a webcam other apps can pick.

    latentcast virtualcam --session latest                  # follow whatever session runs
    latentcast virtualcam --session 9f2c41d07be3a655 --url http://gpu-box:8000 --token ...

Needs the `virtualcam` extra (pyvirtualcam) and a virtual camera device: v4l2loopback on Linux,
OBS Studio's virtual camera driver on Windows and macOS.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from streaming.virtualcam import PyVirtualCam, VirtualCamBridge, VirtualCamUnavailable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--session", required=True, help="session id to show, or `latest` for the newest one")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default http://127.0.0.1:8000)")
    parser.add_argument("--token", default=os.environ.get("LATENTCAST_API_TOKEN"),
                        help="API token of a server that needs one (default: LATENTCAST_API_TOKEN)")
    parser.add_argument("--fps", type=float, help="camera frame rate (default: the session's target fps)")
    parser.add_argument("--device", help="camera device, e.g. /dev/video10 (default: the first free one)")
    parser.add_argument("--backend", choices=["v4l2loopback", "obs", "unitycapture"],
                        help="pyvirtualcam backend (default: the first that works)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level="INFO", format="%(asctime)s %(message)s")
    try:
        camera = PyVirtualCam(device=args.device, backend=args.backend)
        bridge = VirtualCamBridge(args.url, args.session, camera, token=args.token, fps=args.fps,
                                  report=lambda line: print(f"latentcast virtualcam: {line}", flush=True))
        asyncio.run(bridge.run())
    except VirtualCamUnavailable as err:
        print(f"latentcast virtualcam: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0
