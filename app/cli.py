"""`latentcast` command line: one subcommand per module, each adding its own flags.

Flags shared by every command that loads models live here, so `serve` and `render` spell them
the same way and read the same `LATENTCAST_*` environment variables through `Settings`.

A user's mistake (a bad flag value, a missing model folder, no network for a hub preset) ends a
command with one line on stderr and exit status 2, checked before any model loads: `CliError`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from pydantic import ValidationError

from app.settings import Settings, load_settings

# subcommand -> (module with add_arguments(parser) and run(args) -> int, one-line help)
COMMANDS = {
    "serve": ("app.serve", "start the streaming server"),
    "render": ("app.render", "render a video file (or a prompt) offline through a pipeline"),
    "presets": ("app.presets_command", "list the model presets"),
    "virtualcam": ("app.virtualcam", "show a session's generated video as a virtual camera (extra `virtualcam`)"),
    "cluster": ("app.cluster.command", "serve on a Ray cluster: one worker per GPU behind a front door that places sessions "
                "(extra `cluster`, docs/cluster.md)"),
}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset/--device/--dtype/--model-dir/--random-weights/--threads/--engine/--engine-cache; unset
    flags fall back to Settings."""
    group = parser.add_argument_group("model")
    group.add_argument("--preset", help="model preset, see `latentcast presets` (default: LATENTCAST_PRESET, "
                       "else the pipeline's own default)")
    group.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps")
    group.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"])
    group.add_argument("--model-dir", type=Path, help="local folder with the preset's weights (diffusers layout)")
    group.add_argument("--random-weights", action="store_true", default=None,
                       help="build the preset's real architecture with random weights (no download; for speed tests)")
    group.add_argument("--threads", type=int, help="CPU threads for model compute (default: LATENTCAST_THREADS or "
                       "OMP_NUM_THREADS, else this machine's usable cores minus one, at least 1)")
    group.add_argument("--engine", help="what runs each model component: auto (default: ONNX Runtime on the CPU, "
                       "torch.compile on CUDA), eager, compile, onnx, tensorrt, or per component, e.g. unet=compile,vae=eager "
                       "(LATENTCAST_ENGINE; docs/engines.md)")
    group.add_argument("--engine-cache", type=Path, help="folder of built engines (default: LATENTCAST_ENGINE_CACHE, "
                       "else ~/.cache/latentcast/engines)")
    control = parser.add_argument_group("creative controls (stream-diffusion; docs/control.md)")
    control.add_argument("--controlnet", action="append", metavar="NAME=SOURCE",
                         help="load a ControlNet under NAME: a hub id, a local folder, or `random` (repeatable)")
    control.add_argument("--lora", action="append", metavar="NAME=SOURCE",
                         help="load a LoRA under NAME: a .safetensors file, a folder, a hub id, or `random` (repeatable)")
    control.add_argument("--lora-dir", type=Path, help="folder of LoRA files streams may load on request, by file name")
    control.add_argument("--ip-adapter", metavar="SOURCE",
                         help="load an IP-Adapter (image prompts): a file, owner/repo/path on the hub, or `random`")


class CliError(Exception):
    """A user error: `main` prints it as one line (no traceback) and exits with status 2."""


def add_live_control_arguments(parser: argparse.ArgumentParser) -> None:
    """--osc-port/--osc-host/--osc-require-session-id/--midi-port/--midi-map (docs/live-control.md); unset flags fall back to
    Settings (LATENTCAST_OSC_PORT, ...)."""
    group = parser.add_argument_group("live control (OSC and MIDI, extra `live`; docs/live-control.md)")
    group.add_argument("--osc-port", type=int, help="listen for OSC on this UDP port (0 picks a free one; default: off)")
    group.add_argument("--osc-host", help="address the OSC listener binds (default 127.0.0.1; OSC is unauthenticated UDP)")
    group.add_argument("--osc-require-session-id", action=argparse.BooleanOptionalAction, default=None,
                       help="take OSC only at /latentcast/session/<id>/... and answer only messages naming a running session "
                       "(default: on when --osc-host is not loopback)")
    group.add_argument("--midi-port", help="MIDI input: a port name or unique prefix (python -c 'import mido; "
                       "print(mido.get_input_names())'), virtual:NAME (a port others connect to; ALSA/JACK, CoreMIDI), "
                       "or tcp:HOST:PORT (MIDI over TCP, mido.sockets)")
    group.add_argument("--midi-map", type=Path, help="TOML file mapping control changes and notes to parameters")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment and the flags; a value out of bounds is a CliError naming the flag."""
    known = Settings.model_fields
    try:
        return load_settings(**{k: v for k, v in vars(args).items() if k in known})
    except ValidationError as err:
        problem = err.errors()[0]
        name = str(problem["loc"][0]) if problem["loc"] else "settings"
        message = problem["msg"].removeprefix("Value error, ")
        raise CliError(f"--{name.replace('_', '-')} (or LATENTCAST_{name.upper()}): {message}, got {problem.get('input')!r}") from None


def check_model_sources(plan: list[tuple[str, str | None]], settings: Settings) -> None:
    """Before anything loads: the --model-dir folder exists, and a preset that downloads either finds the hub
    or finds its weights in the hub cache (a few seconds at most, instead of a minute of retries)."""
    from models.loading import ModelLoadError, check_hub_weights, preset_hub_repos

    if settings.model_dir is not None:
        if not settings.model_dir.is_dir():
            raise CliError(f"--model-dir {settings.model_dir}: no such folder (it should hold the preset's weights in "
                           "diffusers layout; README, Real weights)")
        return
    if settings.random_weights:
        return
    for _, preset in plan:
        if preset is not None:
            try:
                check_hub_weights(preset, preset_hub_repos(preset))
            except ModelLoadError as err:
                raise CliError(str(err)) from None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """All subcommands, or with `only` just that one's flags: each module imports its own stack
    (the server's, the codecs'), and a command should not pay for the others' imports."""
    parser = argparse.ArgumentParser(prog="latentcast", description="Real-time streaming media generation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if only in (None, name):
            module = importlib.import_module(module_name)
            module.add_arguments(command)
            command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(chosen if chosen in COMMANDS else "").parse_args(argv)  # "": no command, import none
    try:
        return int(args.run(args) or 0)
    except CliError as err:
        print(f"latentcast {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
