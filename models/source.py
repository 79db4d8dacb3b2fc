"""Where a set of loaded weights came from, so another process can load the same ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelSource:
    """The arguments a loader was called with, but the device: a stage process on another GPU
    calls the same loader with them and its own device (`streaming.stages`)."""

    arguments: dict[str, Any]

    def on_device(self, device: str) -> dict[str, Any]:
        return {**self.arguments, "device": device}
