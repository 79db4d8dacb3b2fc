"""`latentcast cluster`: the front door on a Ray cluster, and one worker per GPU (or per node) on its machines.

    ray start --head --port 6379                      # on one machine
    ray start --address HEAD:6379                     # on every other
    LATENTCAST_API_TOKEN=... latentcast cluster --host 0.0.0.0 --preset sd-turbo

Ray is the `cluster` extra; `latentcast serve` never imports it.
"""

from __future__ import annotations

import argparse
import logging
import sys

from app.auth import TokenRequired, is_loopback
from app.cli import add_model_arguments, settings_from_args
from app.cluster.settings import ClusterSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address the front door binds (default 127.0.0.1; any other needs LATENTCAST_API_TOKEN)")
    parser.add_argument("--port", type=int, help="the front door's port (default 8000)")
    parser.add_argument("--pipelines", type=lambda s: [p for p in s.split(",") if p], help="as for `serve`: every worker loads these")
    parser.add_argument("--max-sessions", type=int, help="admission limit of each worker")
    parser.add_argument("--stage-devices", type=lambda s: [d for d in s.split(",") if d],
                        help="as for `serve`, on every worker (with --worker-per node: its node's GPUs, e.g. cuda:0,cuda:1)")
    parser.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    group = parser.add_argument_group("cluster")
    fields = ClusterSettings.model_fields
    group.add_argument("--address", help=fields["address"].description)
    group.add_argument("--node-ip-address", help=fields["node_ip_address"].description)
    group.add_argument("--worker-per", choices=["gpu", "node"], help=fields["worker_per"].description)
    group.add_argument("--worker-host", help=fields["worker_host"].description)
    group.add_argument("--worker-port", type=int, help=fields["worker_port"].description + " (default 8100)")
    group.add_argument("--worker-cpus", type=float, help=fields["worker_cpus"].description + " (default 1)")
    group.add_argument("--max-restarts", type=int, help=fields["max_restarts"].description + " (default 10)")
    group.add_argument("--drain-timeout", type=float, dest="drain_timeout_s", help=fields["drain_timeout_s"].description + " (default 600)")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    options = ClusterSettings(**{k: v for k, v in vars(args).items() if k in ClusterSettings.model_fields and v is not None})
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import ray
    except ImportError:
        print("latentcast: `cluster` needs Ray: pip install 'latentcast[cluster]' (on every machine of the cluster)", file=sys.stderr)
        return 2
    import uvicorn

    from app.cluster.front_door import create_front_door
    from app.serve import uvicorn_config

    try:
        ray.init(address=options.address, _node_ip_address=options.node_ip_address, logging_level=logging.WARNING, namespace="latentcast")
    except ConnectionError as err:
        print(f"latentcast: no Ray cluster at {options.address} ({err}); start one with `ray start --head` (docs/cluster.md)", file=sys.stderr)
        return 2
    try:
        check_workers_guarded(settings.api_token is not None, options, [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]])
        app = create_front_door(settings, options)
    except (TokenRequired, ValueError) as err:
        print(f"latentcast: {err}", file=sys.stderr)
        ray.shutdown()
        return 2
    try:
        uvicorn.Server(uvicorn_config(app, settings)).run()  # on SIGTERM or Ctrl-C the lifespan drains the workers
    finally:
        ray.shutdown()
    return 0


def check_workers_guarded(has_token: bool, options: ClusterSettings, node_ips: list[str]) -> None:
    """Workers serve on their node's address: beyond loopback they need the API token, as a lone server does."""
    hosts = [options.worker_host] if options.worker_host else node_ips
    exposed = [h for h in hosts if not is_loopback(h)]
    if exposed and not has_token:
        raise TokenRequired(f"refusing to start workers on {', '.join(sorted(set(exposed)))}: set LATENTCAST_API_TOKEN, which the "
                            "front door and every worker share, so that they are not open to anyone on the network")
