"""`latentcast presets`: what can be loaded, from where, and with which defaults."""

from __future__ import annotations

import argparse
import json

from models.presets import PRESETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    rows = []
    for preset in PRESETS.values():
        weights = "built in (random weights)" if preset.built_in else " + ".join(
            p for p in (preset.base_model, preset.tiny_vae, preset.lora) if p
        )
        rows.append({"name": preset.name, "family": preset.family, "weights": weights,
                     "defaults": preset.defaults, "description": preset.description})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        d = row["defaults"]
        size = f"{d.get('width', 512)}x{d.get('height', 512)}"
        print(f"{row['name']:<12} {row['family']:<5} {size:<8} steps {d.get('t_index_list')}  cfg {d.get('cfg_type')}")
        print(f"{'':<12} {row['description']}")
        print(f"{'':<12} weights: {row['weights']}")
    return 0
