"""Pipelines by name, built with their models. The one place that maps a name to code."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.base import Pipeline

if TYPE_CHECKING:  # the registry stays importable without torch (the CLI's settings import it)
    from models.control.registry import ControlSpec


class UnknownPipelineError(ValueError):
    pass


@dataclass(frozen=True)
class ModelOptions:
    """Where a pipeline's weights come from and where they run."""

    preset: str | None = None
    """None: the pipeline's default preset."""
    device: str = "auto"
    dtype: str = "auto"
    model_dir: Path | None = None
    random_weights: bool = False
    threads: int | None = None
    """CPU threads for compute (torch's intra-op pool, ONNX Runtime's sessions); None: chosen from
    the machine (models.engines.threads)."""
    engine: str = "auto"
    """What runs each model component (models.engines): `auto` (per device), `eager`, `compile`,
    `onnx`, `tensorrt`, or per component (`unet=compile,vae=eager`)."""
    engine_cache: Path | None = None
    """Where built engines are kept; None: $LATENTCAST_ENGINE_CACHE, else ~/.cache/latentcast/engines."""
    controls: ControlSpec | None = None
    """ControlNets, IP-Adapter and LoRAs loaded beside a diffusion model (docs/control.md)."""


def _passthrough(options: ModelOptions) -> Pipeline:
    from pipelines.passthrough import PassthroughPipeline

    return PassthroughPipeline()


def _stream_diffusion(options: ModelOptions) -> Pipeline:
    from models.loading import load_diffusion_models
    from pipelines.stream_diffusion.pipeline import StreamDiffusionPipeline

    models = load_diffusion_models(
        options.preset or DEFAULT_PRESETS["stream-diffusion"], options.device, options.dtype, options.model_dir, options.random_weights,
        engine=options.engine, engine_cache=options.engine_cache, controls=options.controls,
    )
    return StreamDiffusionPipeline(models)


def _rolling_kv_video(options: ModelOptions) -> Pipeline:
    from models.video.loading import load_video_models
    from pipelines.rolling_kv.pipeline import RollingKVPipeline

    models = load_video_models(
        options.preset or DEFAULT_PRESETS["rolling-kv-video"], options.device, options.dtype, options.model_dir, options.random_weights,
        engine=options.engine, engine_cache=options.engine_cache,
    )
    return RollingKVPipeline(models)


def _relay_speech(options: ModelOptions) -> Pipeline:
    """Models from packages, or those named by LATENTCAST_SPEECH_* (docs/speech.md)."""
    from models.speech.bundle import load_speech_models
    from models.speech.config import SpeechConfig
    from pipelines.relay_speech.pipeline import RelaySpeechPipeline

    config = SpeechConfig()
    if options.device.startswith("cuda"):
        config.device = "cuda"
    if options.threads:
        config.threads = options.threads
    return RelaySpeechPipeline(load_speech_models(config))


_BUILDERS: dict[str, Callable[[ModelOptions], Pipeline]] = {
    "passthrough": _passthrough,
    "stream-diffusion": _stream_diffusion,
    "rolling-kv-video": _rolling_kv_video,
    "relay-speech": _relay_speech,
}


def _diffusion_presets() -> list[str]:
    from models.presets import preset_names

    return preset_names()


def _video_presets() -> list[str]:
    from models.video.presets import video_preset_names

    return video_preset_names()


# Pipelines that load a model: their presets, and the preset used when none of theirs is named
# (one whose weights need no download, so a plain `latentcast serve` works anywhere).
_PRESETS: dict[str, Callable[[], list[str]]] = {"stream-diffusion": _diffusion_presets, "rolling-kv-video": _video_presets}
DEFAULT_PRESETS = {"stream-diffusion": "style", "rolling-kv-video": "tiny-video"}
DEFAULT_PIPELINE = "stream-diffusion"


class PipelinePlanError(ValueError):
    pass


def pipeline_names() -> list[str]:
    return sorted(_BUILDERS)


def pipeline_for_preset(preset: str) -> str:
    for name, presets in _PRESETS.items():
        if preset in presets():
            return name
    known = [p for presets in _PRESETS.values() for p in presets()]
    raise PipelinePlanError(f"unknown preset {preset!r}; choose one of {', '.join(known)}")


def plan_pipelines(entries: list[str] | None, preset: str | None) -> list[tuple[str, str | None]]:
    """Which pipelines to load and each one's preset, from `name` or `name:preset` entries.

    `preset` (the --preset flag) goes to the pipeline it belongs to; without entries that
    pipeline comes first, with passthrough beside it. A pipeline given no preset of its own
    loads its default one.
    """
    if not entries:
        entries = list(dict.fromkeys([pipeline_for_preset(preset) if preset else DEFAULT_PIPELINE, "passthrough"]))
    plan, used = [], False
    for entry in entries:
        name, _, explicit = entry.partition(":")
        if name not in _BUILDERS:
            raise UnknownPipelineError(f"unknown pipeline {name!r}; choose one of {', '.join(pipeline_names())}")
        if name not in _PRESETS:
            if explicit:
                raise PipelinePlanError(f"pipeline {name!r} loads no model, so it takes no preset ({entry!r})")
            plan.append((name, None))
            continue
        own = _PRESETS[name]()
        chosen = explicit or (preset if preset in own else DEFAULT_PRESETS[name])
        if chosen not in own:
            raise PipelinePlanError(f"preset {chosen!r} is not a {name} preset; choose one of {', '.join(own)}")
        used |= chosen == preset
        plan.append((name, chosen))
    if preset and not used:
        raise PipelinePlanError(f"preset {preset!r} is for the {pipeline_for_preset(preset)} pipeline, which is not loaded")
    return plan


def load_pipeline(name: str, options: ModelOptions | None = None) -> Pipeline:
    """Build pipeline `name`, loading its models once (weights are shared by all its streams)."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise UnknownPipelineError(f"unknown pipeline {name!r}; choose one of {', '.join(pipeline_names())}") from None
    options = options or ModelOptions()
    from models.engines.threads import apply_compute_threads

    apply_compute_threads(options.threads)
    return builder(options)
