"""The shipped `style` preset: its weights load from the package with no network, run through
the real stream-diffusion pipeline, and move a held-out input towards the style each prompt
names, by an image statistic that style is known for."""

import numpy as np
import pytest

from models.presets import get_preset
from models.training.scenes import HELD_OUT_SEED, procedural_scene
from pipelines.registry import ModelOptions, load_pipeline
from streaming.frames import VideoFrame

STYLE_PROMPTS = ["pencil sketch", "watercolor", "thermal camera", "pixel art", "neon edges", "oil painting"]


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("stream-diffusion", ModelOptions(preset="style", device="cpu"))


@pytest.fixture(scope="module")
def scene():
    """A bright, colourful scene no training sample was drawn from (seeds from HELD_OUT_SEED up
    are held out)."""
    return np.round(procedural_scene(np.random.default_rng(HELD_OUT_SEED + 2), 256) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def outputs(pipe, scene):
    """Each style prompt's output for the scene, with the preset's default schedule."""
    result = {}
    for prompt in [""] + STYLE_PROMPTS:
        state = pipe.new_state({"prompt": prompt})
        frames = pipe.step([(state, VideoFrame(scene, 0, 0.0))])[0].frames
        while not frames:  # multi-step schedules hand the frame back after draining
            frames = pipe.step([(state, None)])[0].frames
        result[prompt] = frames[0].image
    return result


def as_float(image):
    return image.astype(np.float32) / 255.0


def saturation(image):
    x = as_float(image)
    return float((x.max(-1) - x.min(-1)).mean())


def brightness(image):
    return float((as_float(image) @ np.array([0.299, 0.587, 0.114])).mean())


def dark_share(image, level=0.15):
    return float(((as_float(image) @ np.array([0.299, 0.587, 0.114])) < level).mean())


def block_variance_share(image, block=8):
    """How much of the image's variance lies inside 8x8 blocks: near 0 for pixel art."""
    x = as_float(image)
    h, w = (s // block * block for s in x.shape[:2])
    blocks = x[:h, :w].reshape(h // block, block, w // block, block, 3)
    return float(blocks.var(axis=(1, 3)).mean() / x.var(axis=(0, 1)).mean())


def green_cyan_share(image):
    """Share of clearly coloured pixels with a hue between green and cyan (90-200 degrees): a
    heat palette (black, blue, magenta, red, yellow, white) has none."""
    x = as_float(image)
    high, low = x.max(-1), x.min(-1)
    chroma = high - low
    r, g, b = np.moveaxis(x, -1, 0)
    hue = np.degrees(np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b)) % 360
    return float(((chroma > 0.15) & (hue > 90) & (hue < 200)).mean())


def test_the_preset_ships_its_weights_and_how_they_were_made():
    preset = get_preset("style")
    assert preset.embedded and not preset.built_in
    record = (preset.weights_dir() / "training.json").read_text()
    assert '"command": "nice -n 19 python -m models.training.train' in record and '"commit"' in record


def test_empty_prompt_keeps_the_input_close(outputs, scene):
    assert np.abs(as_float(outputs[""]) - as_float(scene)).mean() < 0.08


def test_pencil_sketch_is_grey_and_paper_white(outputs, scene):
    out = outputs["pencil sketch"]
    assert saturation(out) < 0.4 * saturation(scene)
    assert brightness(out) > brightness(scene) + 0.1


def test_thermal_camera_maps_colours_onto_the_heat_palette(outputs, scene):
    assert green_cyan_share(scene) > 0.3
    assert green_cyan_share(outputs["thermal camera"]) < 0.3 * green_cyan_share(scene)


def test_pixel_art_flattens_the_8_pixel_blocks(outputs, scene):
    # Compared with the unstyled output too: the model's softness alone also lowers this share.
    share = block_variance_share(outputs["pixel art"])
    assert share < 0.6 * block_variance_share(scene) and share < block_variance_share(outputs[""])


def test_neon_edges_glow_on_black(outputs, scene):
    out = outputs["neon edges"]
    assert dark_share(out) > dark_share(scene) + 0.3
    assert brightness(out) < 0.6 * brightness(scene)


def test_watercolor_is_lighter_and_paler(outputs, scene):
    out = outputs["watercolor"]
    assert brightness(out) > brightness(scene) + 0.02
    assert saturation(out) < saturation(scene)


def test_oil_painting_has_richer_colour(outputs, scene):
    assert saturation(outputs["oil painting"]) > max(saturation(scene), saturation(outputs[""]))


def test_different_prompts_give_different_outputs(outputs):
    images = [as_float(outputs[p]) for p in STYLE_PROMPTS]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.abs(images[i] - images[j]).mean() > 0.02, (STYLE_PROMPTS[i], STYLE_PROMPTS[j])
