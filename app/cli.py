"""`latentcast` command line: one subcommand per module, each adding its own flags.

Flags shared by every command that loads models live here, so `serve` and `render` spell them
the same way and read the same `LATENTCAST_*` environment variables through `Settings`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

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


def settings_from_args(args: argparse.Namespace) -> Settings:
    known = Settings.model_fields
    return load_settings(**{k: v for k, v in vars(args).items() if k in known})


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
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
