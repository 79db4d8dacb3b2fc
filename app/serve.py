"""`latentcast serve`: start the streaming server and say where the demo is once it is ready."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time

import uvicorn

from app.auth import TokenRequired, is_loopback
from app.cli import CliError, add_live_control_arguments, add_model_arguments, check_model_sources, settings_from_args
from app.server import create_app
from app.settings import Settings
from pipelines.registry import plan_pipelines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to bind (default 127.0.0.1; any other needs LATENTCAST_API_TOKEN)")
    parser.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--pipelines", type=lambda s: [p for p in s.split(",") if p],
                        help="comma-separated pipelines to load as NAME or NAME:PRESET, the first is the default "
                        "(default: the pipeline of --preset, stream-diffusion without one, and passthrough)")
    parser.add_argument("--max-sessions", type=int, help="admission limit: sessions beyond it are refused as busy")
    parser.add_argument("--stage-devices", type=lambda s: [d for d in s.split(",") if d],
                        help="split each pipeline that declares stages across these devices, one process each (e.g. cuda:0,cuda:1)")
    parser.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    add_model_arguments(parser)
    add_live_control_arguments(parser)


def uvicorn_config(app, settings: Settings, port: int | None = None) -> uvicorn.Config:
    """The server settings every launcher (CLI, tests, benchmarks) shares."""
    return uvicorn.Config(
        app, host=settings.host, port=settings.port if port is None else port, log_level=settings.log_level,
        # Messages up to max_message_bytes get a clear `error` reply; twice that closes the socket (1009).
        ws_max_size=2 * settings.max_message_bytes,
        ws_per_message_deflate=False,  # pictures are already compressed: deflate only costs CPU
        timeout_graceful_shutdown=5,
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        check_model_sources(plan_pipelines(settings.pipelines, settings.preset), settings)
        app = create_app(settings)
    except (TokenRequired, ValueError) as err:  # no token for a public bind; unknown pipeline or preset; OSC or MIDI that cannot start
        raise CliError(str(err)) from None
    server = uvicorn.Server(uvicorn_config(app, settings))
    worker = app.state.context.worker
    threading.Thread(target=_announce, args=(server, app, settings), daemon=True).start()
    server.run()
    return 1 if worker.failed else 0


def _announce(server: uvicorn.Server, app, settings: Settings) -> None:
    """Print the demo URL once the models are warm, or stop the server if they failed to load."""
    context = app.state.context
    context.worker.finished_loading.wait()
    if context.worker.failed:
        print(f"latentcast: loading the models failed: {context.worker.failed}", file=sys.stderr)
        server.should_exit = True
        return
    while not server.started and not server.should_exit:
        time.sleep(0.05)
    if not server.started:
        return
    port = server.servers[0].sockets[0].getsockname()[1]
    host = settings.host if is_loopback(settings.host) else "127.0.0.1"
    url = f"http://{host}:{port}/"
    if context.auth.enabled:
        token, _ = context.auth.issue(settings.browser_token_ttl_s)
        url += f"?token={token}"
    print(f"\nlatentcast ready: pipelines {', '.join(context.worker.pipelines)}\n  demo:    {url}\n"
          f"  API:     http://{host}:{port}/docs\n  metrics: http://{host}:{port}/metrics\n", flush=True)
