"""What `latentcast cluster` adds to the server's settings: the Ray cluster, how workers are laid out, draining.

The server settings (`app.settings.Settings`: pipelines, preset, engine, limits, the API token) are every
worker's; these say where the workers run. From `LATENTCAST_CLUSTER_*` variables and the command's flags.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ClusterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LATENTCAST_CLUSTER_", env_file=".env", extra="ignore")

    address: str = Field("auto", description="The Ray cluster to join (`ray start --head` printed it); auto: the one on this machine.")
    node_ip_address: str | None = Field(None, description="This machine's address in the Ray cluster, when Ray cannot tell "
                                        "(several nodes on one host, as in the tests).")
    worker_per: Literal["gpu", "node"] | None = Field(
        None, description="gpu: one worker per GPU (num_gpus=1); node: one per node, holding all its GPUs (for --stage-devices). "
        "Unset: gpu when the cluster has GPUs, else node.")
    worker_host: str | None = Field(None, description="Address workers bind (unset: their node's address in the Ray cluster; "
                                    "0.0.0.0 binds all and advertises the node's).")
    worker_port: int = Field(8100, ge=0, le=65535, description="Port of a node's first worker, the next ones count up; 0: any free port.")
    worker_cpus: float = Field(1.0, gt=0, description="CPUs each worker reserves in Ray (its share of a CPU-only node).")
    max_restarts: int = Field(10, ge=-1, description="Times Ray restarts a worker whose process died (-1: always).")
    drain_timeout_s: float = Field(600.0, ge=0, description="How long a draining worker's sessions may go on before they are "
                                   "ended (also when the front door stops).")
