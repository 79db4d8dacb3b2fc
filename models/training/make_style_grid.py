"""Write docs/styles.png: held-out inputs restyled by the shipped `style` preset, through the
real stream-diffusion pipeline with the preset's defaults, one column per style prompt, then a
prompt blend; and a txt2img row per style.

    python -m models.training.make_style_grid [--out docs/styles.png]

Needs scikit-image for the held-out photos (pip install -e '.[train]').
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from models.training.dataset import held_out_images
from models.training.styles import STYLE_NAMES
from pipelines.registry import ModelOptions, load_pipeline
from streaming.frames import VideoFrame

PRESET = "style"
STYLE_PROMPTS = [name for name in STYLE_NAMES if name != "photo"]
BLEND = [{"text": "pencil sketch", "weight": 0.5}, {"text": "watercolor", "weight": 0.5}]
TXT2IMG_STEPS = [0, 16, 32, 45]
LABEL_HEIGHT = 22


def restyle(pipe, image: np.ndarray, params: dict) -> np.ndarray:
    """One frame through a fresh stream, drained, so multi-step schedules also give it back."""
    state = pipe.new_state(params)
    frames = pipe.step([(state, VideoFrame(image, 0, 0.0))])[0].frames
    while not frames:
        frames = pipe.step([(state, None)])[0].frames
    return frames[0].image


def generate(pipe, prompt: str, seed: int) -> np.ndarray:
    state = pipe.new_state({"mode": "txt2img", "prompt": prompt, "t_index_list": TXT2IMG_STEPS, "seed": seed})
    while True:
        frames = pipe.step([(state, None)])[0].frames
        if frames:
            return frames[0].image


def labelled(cells: list[np.ndarray], labels: list[str]) -> np.ndarray:
    """A row of images with a caption strip above each."""
    side = cells[0].shape[0]
    row = Image.new("RGB", (side * len(cells), side + LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(row)
    font = ImageFont.load_default(size=15)
    for k, (cell, label) in enumerate(zip(cells, labels)):
        row.paste(Image.fromarray(cell), (k * side, LABEL_HEIGHT))
        draw.text((k * side + 4, 3), label, fill="black", font=font)
    return np.asarray(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/styles.png"))
    args = parser.parse_args()
    pipe = load_pipeline("stream-diffusion", ModelOptions(preset=PRESET))
    size = pipe.params_model().width
    rows = []
    for image in held_out_images(size):
        source = (image * 255).round().astype(np.uint8)
        outputs = [restyle(pipe, source, {"prompt": p}) for p in STYLE_PROMPTS]
        outputs.append(restyle(pipe, source, {"prompts": BLEND}))
        rows.append(labelled([source, *outputs], ["input (held out)", *STYLE_PROMPTS, "sketch + watercolor"]))
    generated = [generate(pipe, p, seed=3) for p in STYLE_PROMPTS]
    blank = np.full_like(generated[0], 255)
    rows.append(labelled([blank, *generated, blank], ["txt2img, 4 steps:", *STYLE_PROMPTS, ""]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
