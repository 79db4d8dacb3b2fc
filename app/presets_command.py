"""`latentcast presets`: what can be loaded, for which pipeline, from where, with which defaults."""

from __future__ import annotations

import argparse
import json

from models.presets import PRESETS as IMAGE_PRESETS
from models.video.presets import PRESETS as VIDEO_PRESETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def preset_rows() -> list[dict]:
    rows = []
    for preset in IMAGE_PRESETS.values():
        if preset.built_in:
            weights = "built in"
        elif preset.embedded:
            weights = f"shipped in the package (models/weights/{preset.weights})"
        else:
            weights = " + ".join(p for p in (preset.base_model, preset.tiny_vae, preset.lora) if p)
        rows.append({"name": preset.name, "pipeline": "stream-diffusion", "weights": weights,
                     "defaults": preset.defaults, "description": preset.description})
    for preset in VIDEO_PRESETS.values():
        weights = "built in" if preset.built_in else " + ".join([preset.base_model, "/".join(preset.checkpoint)])
        rows.append({"name": preset.name, "pipeline": "rolling-kv-video", "weights": weights,
                     "defaults": preset.defaults, "description": preset.description})
    return rows


def run(args: argparse.Namespace) -> int:
    rows = preset_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        d = row["defaults"]
        steps = d.get("t_index_list") or f"{d.get('steps')} steps"
        print(f"{row['name']:<16} {row['pipeline']:<17} {d.get('width')}x{d.get('height')}  {steps}")
        print(f"{'':<16} {row['description']}")
        print(f"{'':<16} weights: {row['weights']}")
    return 0
