"""Pipelines by name, built with their models. The one place that maps a name to code."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipelines.base import Pipeline


class UnknownPipelineError(ValueError):
    pass


@dataclass(frozen=True)
class ModelOptions:
    """Where a pipeline's weights come from and where they run."""

    preset: str = "tiny"
    device: str = "auto"
    dtype: str = "auto"
    model_dir: Path | None = None
    random_weights: bool = False


def _passthrough(options: ModelOptions) -> Pipeline:
    from pipelines.passthrough import PassthroughPipeline

    return PassthroughPipeline()


def _stream_diffusion(options: ModelOptions) -> Pipeline:
    from models.loading import load_diffusion_models
    from pipelines.stream_diffusion.pipeline import StreamDiffusionPipeline

    models = load_diffusion_models(
        options.preset, options.device, options.dtype, options.model_dir, options.random_weights
    )
    return StreamDiffusionPipeline(models)


def _rolling_kv_video(options: ModelOptions) -> Pipeline:
    from models.video.loading import load_video_models
    from pipelines.rolling_kv.pipeline import RollingKVPipeline

    models = load_video_models(
        options.preset, options.device, options.dtype, options.model_dir, options.random_weights
    )
    return RollingKVPipeline(models)


_BUILDERS: dict[str, Callable[[ModelOptions], Pipeline]] = {
    "passthrough": _passthrough,
    "stream-diffusion": _stream_diffusion,
    "rolling-kv-video": _rolling_kv_video,
}


def pipeline_names() -> list[str]:
    return sorted(_BUILDERS)


def load_pipeline(name: str, options: ModelOptions | None = None) -> Pipeline:
    """Build pipeline `name`, loading its models once (weights are shared by all its streams)."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise UnknownPipelineError(f"unknown pipeline {name!r}; choose one of {', '.join(pipeline_names())}") from None
    return builder(options or ModelOptions())
