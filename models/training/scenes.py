"""Training images that need no download: scikit-image's bundled samples and procedural scenes,
cropped at random scales and colour-jittered.

`chelsea`/`cat` (the same photo) and `coffee` are held out of training and used to judge the
model; so is every procedural scene drawn from a seed of `HELD_OUT_SEED` and above.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

HELD_OUT_PHOTOS = ("chelsea", "coffee")
HELD_OUT_SEED = 10_000_000
# Bundled with scikit-image (no pooch fetch): the colour ones, and grey ones that get tinted.
COLOUR_PHOTOS = ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "logo", "colorwheel")
GREY_PHOTOS = ("camera", "brick", "grass", "gravel", "clock", "coins", "moon", "page", "text", "cell", "microaneurysms")


def load_photos(names: tuple[str, ...]) -> list[np.ndarray]:
    """Float RGB [0, 1] images from skimage.data (a training-only dependency)."""
    import skimage.data

    photos = []
    for name in names:
        image = np.asarray(getattr(skimage.data, name)())
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        photos.append(image[..., :3].astype(np.float32) / 255.0)
    return photos


def training_photos() -> list[np.ndarray]:
    return load_photos(COLOUR_PHOTOS) + load_photos(GREY_PHOTOS)


def centre_crop(photo: np.ndarray, size: int) -> np.ndarray:
    """The largest centred square, resized to `size`."""
    h, w, _ = photo.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray((photo[top : top + side, left : left + side] * 255).astype(np.uint8))
    return np.asarray(crop.resize((size, size), Image.LANCZOS), dtype=np.float32) / 255.0


def random_crop(rng: np.random.Generator, photo: np.ndarray, size: int) -> np.ndarray:
    """A square crop covering 25-100% of the shorter side, resized to `size`, maybe flipped."""
    h, w, _ = photo.shape
    side = int(min(h, w) * rng.uniform(0.25, 1.0))
    top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = Image.fromarray((photo[top : top + side, left : left + side] * 255).astype(np.uint8))
    out = np.asarray(crop.resize((size, size), Image.LANCZOS), dtype=np.float32) / 255.0
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def jitter_colour(rng: np.random.Generator, image: np.ndarray, grey: bool) -> np.ndarray:
    """Gain, contrast, saturation and a tint; grey photos get a strong random two-colour tint
    so they teach colour too."""
    if grey:
        dark, light = rng.uniform(0.0, 0.5, 3), rng.uniform(0.5, 1.0, 3)
        image = dark + image[..., :1] * (light - dark)
    mean = image.mean()
    image = (image - mean) * rng.uniform(0.7, 1.3) + mean * rng.uniform(0.8, 1.2)
    grey_level = image.mean(-1, keepdims=True)
    image = grey_level + (image - grey_level) * rng.uniform(0.6, 1.4)
    image = image * rng.uniform(0.9, 1.1, 3)
    if rng.random() < 0.3:
        image = image[..., rng.permutation(3)]
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def procedural_scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """Gradients, shapes, stripes, lines, text and faces drawn from primitives, at 2x then
    downsampled so edges are antialiased."""
    big = size * 2
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0.0, 1.0, big)[:, None, None]
    canvas = (top * (1 - ramp) + bottom * ramp) * np.ones((1, big, 1))
    image = Image.fromarray(canvas.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(3, 9)):
        kind = rng.choice(["ellipse", "rectangle", "polygon", "line", "stripes", "text", "face", "rings"])
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = rng.integers(-big // 4, big, 2)
        w, h = rng.integers(big // 10, big // 2, 2)
        box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
        if kind == "ellipse":
            draw.ellipse(box, fill=colour, outline=_dark(colour), width=int(rng.integers(0, 6)))
        elif kind == "rectangle":
            draw.rectangle(box, fill=colour)
        elif kind == "polygon":
            draw.polygon([tuple(int(v) for v in rng.integers(0, big, 2)) for _ in range(rng.integers(3, 6))], fill=colour)
        elif kind == "line":
            draw.line([tuple(int(v) for v in rng.integers(0, big, 2)) for _ in range(2)], fill=colour, width=int(rng.integers(2, 12)))
        elif kind == "stripes":
            step = int(rng.integers(8, 40))
            for x in range(box[0], box[2], step * 2):
                draw.rectangle([x, box[1], x + step, box[3]], fill=colour)
        elif kind == "text":
            font = ImageFont.load_default(size=int(rng.integers(16, 64)))
            word = "".join(chr(int(c)) for c in rng.integers(65, 91, rng.integers(2, 8)))
            draw.text((box[0], box[1]), word, fill=colour, font=font)
        elif kind == "face":
            _face(draw, rng, box)
        else:  # rings
            for r in range(int(w // 2), 4, -int(rng.integers(6, 20))):
                ring = tuple(int(c) for c in rng.integers(0, 256, 3))
                draw.ellipse([box[0] + w // 2 - r, box[1] + w // 2 - r, box[0] + w // 2 + r, box[1] + w // 2 + r], outline=ring, width=4)
    return np.asarray(image.resize((size, size), Image.LANCZOS), dtype=np.float32) / 255.0


def _dark(colour: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(c // 3 for c in colour)


def _face(draw: ImageDraw.ImageDraw, rng: np.random.Generator, box: list[int]) -> None:
    """A head with eyes, nose, mouth and hair: the subject a webcam sees most."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    skin = tuple(int(c) for c in np.array([224, 172, 140]) * rng.uniform(0.45, 1.1))
    hair = tuple(int(c) for c in rng.integers(0, 120, 3))
    draw.ellipse([x0 - w // 10, y0 - h // 10, x1 + w // 10, y0 + h // 2], fill=hair)
    draw.ellipse(box, fill=skin, outline=_dark(skin), width=2)
    eye = max(2, w // 10)
    for ex in (x0 + w * 0.32, x0 + w * 0.68):
        ey = y0 + h * 0.42
        draw.ellipse([ex - eye, ey - eye * 0.6, ex + eye, ey + eye * 0.6], fill=(245, 245, 245))
        draw.ellipse([ex - eye * 0.45, ey - eye * 0.45, ex + eye * 0.45, ey + eye * 0.45], fill=hair)
    draw.line([(x0 + w * 0.5, y0 + h * 0.45), (x0 + w * 0.47, y0 + h * 0.62)], fill=_dark(skin), width=max(1, w // 40))
    draw.arc([x0 + w * 0.3, y0 + h * 0.55, x0 + w * 0.7, y0 + h * 0.8], 20, 160, fill=(150, 40, 50), width=max(2, w // 25))


def sample_image(rng: np.random.Generator, photos: list[np.ndarray], num_colour: int, size: int) -> np.ndarray:
    """One training input: half photo crops, half procedural scenes."""
    if rng.random() < 0.5:
        index = int(rng.integers(len(photos)))
        return jitter_colour(rng, random_crop(rng, photos[index], size), grey=index >= num_colour)
    return jitter_colour(rng, procedural_scene(rng, size), grey=False)
