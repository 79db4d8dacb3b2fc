"""`latentcast render`: a video file (or a prompt alone) through a pipeline, offline, to a file.

It runs the same pipeline code as live streaming, one stream, every frame: decoding and
encoding run on their own threads so the model is never waiting on them, and nothing is dropped.
The output keeps the input's timing (frame rate, per-frame timestamps, duration) and its audio.
With the same seed the same command gives the same frames.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, closing
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from tqdm import tqdm

from app.cli import add_model_arguments, check_model_sources, settings_from_args
from app.render_report import can_plot, noting_inputs, observing_outputs, write_report
from pipelines.base import ParamError, Pipeline, validation_to_param_error
from pipelines.registry import ModelOptions, PipelinePlanError, UnknownPipelineError, load_pipeline, plan_pipelines
from streaming.consistency import ConsistencyMeter
from streaming.frames import VideoFrame
from streaming.video_file import MediaFileError, NoAudioError, VideoFileReader, VideoFileWriter, resample_frame_rate

PROG = "latentcast render"
DEFAULT_TXT2IMG_FPS = Fraction(24)
# How many decoded frames wait for the model, and how many outputs wait for the encoder:
# enough to ride out jitter on either side, few enough to keep memory small at large sizes.
DECODE_AHEAD = 4
ENCODE_BEHIND = 4

# Generation flags (argparse dest) and the stream parameter each one sets.
PARAM_OF_FLAG = {
    "prompt": "prompt", "negative_prompt": "negative_prompt", "seed": "seed", "steps": "steps",
    "strength": "strength", "t_index_list": "t_index_list", "cfg": "cfg_type", "guidance": "guidance_scale",
    "delta": "delta", "filter_threshold": "filter_threshold", "filter_max_skip": "filter_max_skip",
    "control": "controlnets", "image_prompt": "image_prompt", "image_prompt_weight": "image_prompt_weight", "loras": "loras",
}

T = TypeVar("T")

# Every pipeline that loads a model works on a latent grid at least this fine (stream-diffusion's
# autoencoders: 8; the video presets: 16, checked again once the model is loaded): --width and
# --height are refused by it before a model loads for nothing.
LATENT_GRID = 8


class UsageError(Exception):
    """Arguments that cannot work together (exit status 2, like argparse's own errors)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", nargs="?", type=Path, help="video file to transform (omit it for txt2img)")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="file to write; its extension picks the container (.mp4, .mkv, .mov, .webm)")
    parser.add_argument("--pipeline",
                        help="pipeline to run (default: the one --preset belongs to, else stream-diffusion; "
                        "passthrough only re-encodes)")
    add_model_arguments(parser)

    gen = parser.add_argument_group("generation (defaults come from the preset)")
    gen.add_argument("--prompt", help="what to generate")
    gen.add_argument("--negative-prompt", help="used by --cfg full and onetime")
    gen.add_argument("--seed", type=int, help="noise seed; the same seed gives the same output")
    gen.add_argument("--steps", type=int, help="denoising steps (1-4), used with --strength")
    gen.add_argument("--strength", type=float, help="how far from the input to go, 0-1 (img2img)")
    gen.add_argument("--t-index-list", type=_int_list, metavar="I,J,...",
                     help="denoising steps as LCM timestep indices 0-49, e.g. 32,45 (instead of --strength)")
    gen.add_argument("--cfg", choices=["none", "full", "self", "onetime"], help="residual CFG type")
    gen.add_argument("--guidance", type=float, help="guidance scale (CFG is active above 1)")
    gen.add_argument("--delta", type=float, help="damping of the residual noise in self/onetime CFG")
    gen.add_argument("--filter-threshold", type=float,
                     help="similarity filter: skip frames more similar than this (0-1; 1 disables it)")
    gen.add_argument("--filter-max-skip", type=int, help="similarity filter: most frames skipped in a row")
    gen.add_argument("--control", action="append", type=_control, metavar="NAME[:PREPROCESSOR[:SCALE]]",
                     help="steer with the ControlNet loaded as NAME (--controlnet), its control image made by canny (default), "
                     "soft_edge, input or previous_output, at SCALE (default 1); repeatable (docs/control.md)")
    gen.add_argument("--image-prompt", type=_image_file, metavar="FILE", help="a picture as prompt (PNG, JPEG or WebP; needs --ip-adapter)")
    gen.add_argument("--image-prompt-weight", type=float, help="how strongly the image prompt steers (default 0.6)")
    gen.add_argument("--loras", type=_weights, metavar="NAME:WEIGHT,...", help="LoRAs loaded with --lora, with their weights")
    gen.add_argument("--fuse-loras", action="store_true",
                     help="merge the --loras into the UNet's weights before rendering: no per-frame cost for them")

    out = parser.add_argument_group("output")
    out.add_argument("--width", type=int, help="output width, a multiple of 8 (default: the input's rounded down to 8, "
                     "or from --height keeping the input's aspect; the preset's for txt2img)")
    out.add_argument("--height", type=int, help="output height, a multiple of 8 (default: like --width)")
    out.add_argument("--fps", type=_frame_rate, metavar="RATE",
                     help="output frame rate, e.g. 12 or 30000/1001 (default: the input's timing; 24 for txt2img)")
    out.add_argument("--frames", type=int, help="number of frames to generate without an input (txt2img)")
    out.add_argument("--crf", type=int, default=18, help="encoder quality, lower is better (default: 18)")
    out.add_argument("--no-audio", action="store_true", help="leave the input's audio out")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    out.add_argument("--report", type=Path, metavar="FILE.csv",
                     help="also measure temporal consistency (warp error, flicker, drift) of every frame: a CSV per "
                     "frame at FILE.csv and a plot at FILE.png (needs matplotlib: the `report` extra)")


def run(args: argparse.Namespace) -> int:
    """Render and return the exit status; every failure is one line on stderr, and no output file."""
    try:
        return _render(args)
    except UsageError as err:
        return _fail(str(err), status=2)
    except ParamError as err:
        hint = "; choose the size with --width/--height" if err.field in ("width", "height") else ""
        return _fail(f"invalid parameter {err}{hint}", status=2)
    except ValidationError as err:
        return _fail(f"invalid setting {validation_to_param_error(err)}", status=2)
    except NoAudioError as err:
        return _fail(f"{err}; leave the input's audio out with --no-audio")
    except MediaFileError as err:
        return _fail(str(err))
    except (UnknownPipelineError, PipelinePlanError) as err:
        return _fail(str(err), status=2)
    except ValueError as err:  # unknown preset, missing weights: the loaders' messages say it all
        return _fail(str(err))
    except (OSError, RuntimeError) as err:  # model files, devices, out of memory
        return _fail(f"{type(err).__name__}: {err}")
    except KeyboardInterrupt:
        return _fail("interrupted; no output written", status=130)


def _render(args: argparse.Namespace) -> int:
    _check_arguments(args)
    settings = settings_from_args(args)
    (pipeline_name, preset), *_ = plan_pipelines([args.pipeline] if args.pipeline else None, settings.preset)
    if preset is not None:
        _check_size_flags(args, LATENT_GRID, pipeline_name)
    check_model_sources([(pipeline_name, preset)], settings)
    # Unwound in reverse: the decode thread stops, then the output is finished (or removed),
    # then the input is closed.
    with ExitStack() as stack:
        reader = stack.enter_context(VideoFileReader(args.input)) if args.input is not None else None
        if reader is None:
            frame_rate = args.fps or DEFAULT_TXT2IMG_FPS
            time_base = 1 / frame_rate
            total = args.frames
            audio_from = None
        else:
            info = reader.info
            frame_rate = args.fps or info.frame_rate
            time_base = 1 / args.fps if args.fps else info.time_base
            total = round(info.duration * args.fps) if args.fps and info.duration else info.frame_count
            audio_from = args.input if info.has_audio and not args.no_audio else None

        # The output is checked before the model loads: loading may take minutes.
        writer = stack.enter_context(VideoFileWriter(
            args.output, frame_rate=frame_rate, time_base=time_base, audio_from=audio_from, crf=args.crf))
        options = settings.model_options(preset, settings.model_dir)
        if args.fuse_loras:
            options = _fusing(options, args)
        pipeline = load_pipeline(pipeline_name, options)
        multiple = pipeline.size_multiple
        _check_size_flags(args, multiple, pipeline.name)
        if reader is None:
            size = (args.width, args.height) if args.width and args.height else None
        else:
            size = _output_size(args.width, args.height, reader.info.width, reader.info.height, multiple)
        state = pipeline.new_state(_stream_params(args, pipeline, reader is not None, size))
        for note in pipeline.prompt_notes(state.params):  # the render would run, but not give what was asked
            print(f"{PROG}: warning: {note}", file=sys.stderr)
        meter = ConsistencyMeter(every=1, inline=True, keep_all=True) if args.report else None

        if reader is None:
            outputs = _generated(pipeline, state, args.frames, frame_rate)
        else:
            inputs = reader.frames(*size)
            if args.fps:
                inputs = resample_frame_rate(inputs, args.fps, reader.info.duration)
            if meter is not None:
                inputs = noting_inputs(inputs, meter)
            outputs = _transformed(pipeline, state, stack.enter_context(closing(_read_ahead(inputs, DECODE_AHEAD))))
        if meter is not None:
            outputs = observing_outputs(outputs, meter)

        started = time.monotonic()
        with tqdm(total=total, unit="frame", desc="render", file=sys.stderr, disable=args.quiet,
                  dynamic_ncols=True, smoothing=0.1) as progress:
            _encode_behind(outputs, writer.write, ENCODE_BEHIND, on_frame=progress.update)
    if meter is not None and meter.history is not None:
        plot = write_report(meter.history, args.report)
        if not args.quiet:
            print(f"wrote {args.report} and {plot}: consistency of {len(meter.history)} frames", file=sys.stderr)
    if not args.quiet:
        elapsed = time.monotonic() - started
        audio = f", audio {writer.audio_codec}" if writer.audio_codec else ""
        print(f"wrote {args.output}: {writer.frames_written} frames{audio} in {elapsed:.1f} s "
              f"({writer.frames_written / max(elapsed, 1e-9):.1f} fps)", file=sys.stderr)
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    """Combinations argparse cannot see, refused before any file is opened."""
    if args.input is None and args.frames is None:
        raise UsageError("give an input video, or --frames N to generate from the prompt alone")
    if args.input is not None and args.frames is not None:
        raise UsageError("--frames is for rendering without an input video; the input's length sets the frame count")
    if args.frames is not None and args.frames < 1:
        raise UsageError(f"--frames must be at least 1, got {args.frames}")
    for name in ("width", "height"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UsageError(f"--{name} must be positive, got {value}")
    if args.input is None and (args.width is None) != (args.height is None):
        raise UsageError("without an input video give both --width and --height, or neither")
    if args.input is not None and args.output.resolve() == args.input.resolve():
        raise UsageError("the output would overwrite the input; choose another output name")
    if args.report is not None and not can_plot():
        raise UsageError("--report plots with matplotlib: pip install 'latentcast[report]'")


def _fusing(options: ModelOptions, args: argparse.Namespace) -> ModelOptions:
    """Options that merge the --loras into the UNet at load; the stream then asks for none."""
    if not args.loras or options.controls is None:
        raise UsageError("--fuse-loras merges the --loras NAME:WEIGHT,... loaded with --lora NAME=SOURCE: give both")
    missing = set(args.loras) - set(options.controls.loras)
    if missing:
        raise UsageError(f"--fuse-loras: {', '.join(sorted(missing))} not loaded with --lora NAME=SOURCE (a --lora-dir LoRA "
                         "loads per stream, after the model)")
    fused = dataclasses.replace(options.controls, fuse=dict(args.loras))
    args.loras = None
    return dataclasses.replace(options, controls=fused)


def _check_size_flags(args: argparse.Namespace, multiple: int, pipeline: str) -> None:
    for name in ("width", "height"):
        if getattr(args, name) is not None and getattr(args, name) % multiple:
            raise UsageError(f"--{name} must be a multiple of {multiple} for the {pipeline} pipeline, got {getattr(args, name)}")


def _output_size(width: int | None, height: int | None, in_width: int, in_height: int, multiple: int) -> tuple[int, int]:
    """The requested size; a missing side follows the input's aspect, rounded down to `multiple`."""
    if width is None and height is None:
        width, height = in_width, in_height
    elif height is None:
        height = round(width * in_height / in_width)
    elif width is None:
        width = round(height * in_width / in_height)
    if width < multiple or height < multiple:
        raise UsageError(f"the output size {width}x{height} is too small; give --width and --height")
    return width // multiple * multiple, height // multiple * multiple


def _stream_params(args: argparse.Namespace, pipeline: Pipeline, has_input: bool,
                   size: tuple[int, int] | None) -> dict[str, Any]:
    """The stream's parameters: the flags the user gave, adjusted by the pipeline to run on the
    input video (or without one) at `size`; the preset fills the rest."""
    fields = pipeline.params_model.model_fields
    given = {}
    for dest, name in PARAM_OF_FLAG.items():
        value = getattr(args, dest)
        if value is None:
            continue
        if name not in fields:
            raise UsageError(f"the {pipeline.name} pipeline does not take --{dest.replace('_', '-')}")
        given[name] = value
    try:
        return pipeline.render_params(given, has_input=has_input, size=size)
    except ParamError as err:
        raise UsageError(str(err)) from None


def _transformed(pipeline: Pipeline, state: Any, frames: Iterable[VideoFrame]) -> Iterator[VideoFrame]:
    """One output per input frame, in order: the pipe's warm-up outputs nothing, so the frames
    still in flight at the end are drained with empty steps."""
    count = 0
    for frame in frames:
        consumed = False
        while not consumed:  # an input the pipeline did not take is offered again
            (out,) = pipeline.step([(state, frame)])
            consumed = out.consumed
            yield from out.frames
        count += 1
    in_flight = pipeline.in_flight(state)
    while in_flight > 0:
        (out,) = pipeline.step([(state, None)])
        yield from out.frames
        left = pipeline.in_flight(state)
        if left >= in_flight:
            raise RuntimeError(f"pipeline {pipeline.name!r} does not drain: {left} frames stay in flight")
        in_flight = left
    if count == 0:
        raise MediaFileError("the input has no video frames")


def _generated(pipeline: Pipeline, state: Any, count: int, frame_rate: Fraction) -> Iterator[VideoFrame]:
    """`count` generated frames, timed on a regular grid at `frame_rate`."""
    made = 0
    while made < count:
        (out,) = pipeline.step([(state, None)])
        for frame in out.frames[: count - made]:
            yield VideoFrame(frame.image, made, float(made / frame_rate), frame.stream_id, frame.timestamps)
            made += 1


def _read_ahead(items: Iterator[T], depth: int) -> Iterator[T]:
    """The items of `items`, produced up to `depth` ahead on a thread (decoding overlaps compute)."""
    end = object()
    with ThreadPoolExecutor(1, thread_name_prefix="decode") as decoder:
        ahead: deque[Future] = deque(decoder.submit(next, items, end) for _ in range(depth))
        try:
            while (item := ahead.popleft().result()) is not end:
                ahead.append(decoder.submit(next, items, end))
                yield item
        finally:
            decoder.shutdown(wait=True, cancel_futures=True)


def _encode_behind(frames: Iterable[VideoFrame], write: Callable[[Any, float], None], depth: int,
                   on_frame: Callable[[], Any]) -> None:
    """Hand each frame to `write` on a thread, at most `depth` behind (encoding overlaps compute).

    A failed write stops the render at the next frame; the frames keep their order.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="encode") as encoder:
        pending: deque[Future] = deque()
        try:
            for frame in frames:
                pending.append(encoder.submit(write, frame.image, frame.pts))
                on_frame()
                while pending and (len(pending) > depth or pending[0].done()):
                    pending.popleft().result()
            while pending:
                pending.popleft().result()
        finally:
            encoder.shutdown(wait=True, cancel_futures=True)


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


def _control(text: str) -> dict[str, Any]:
    name, _, rest = text.partition(":")
    preprocessor, _, scale = rest.partition(":")
    control: dict[str, Any] = {"model": name, "preprocessor": preprocessor or "canny"}
    try:
        if scale:
            control["scale"] = float(scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME[:PREPROCESSOR[:SCALE]], got {text!r}") from None
    return control


def _weights(text: str) -> dict[str, float]:
    try:
        return {name: float(weight or 1) for name, _, weight in (part.partition(":") for part in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME:WEIGHT,... (e.g. sketch:0.8,ink:0.3), got {text!r}") from None


def _image_file(text: str) -> str:
    """The picture as the data URL the image_prompt parameter takes."""
    kinds = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
    kind = kinds.get(Path(text).suffix.lower())
    if kind is None:
        raise argparse.ArgumentTypeError(f"expected a .png, .jpg or .webp picture, got {text!r}")
    try:
        payload = Path(text).read_bytes()
    except OSError as err:
        raise argparse.ArgumentTypeError(f"cannot read {text}: {err.strerror}") from None
    return f"data:image/{kind};base64," + base64.b64encode(payload).decode()


def _frame_rate(text: str) -> Fraction:
    try:
        rate = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number like 24 or 30000/1001, got {text!r}") from None
    if not 0 < rate <= 240:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 240, got {text}")
    return rate


def _fail(message: str, status: int = 1) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return status
