"""The styles the embedded model learns: a classical filter that makes each target, and the
prompts that name it.

Every filter works on one float RGB image in [0, 1] (H, W, 3) and is deterministic and local at
a fixed pixel scale (no per-image min/max normalisation, no random texture), so a small
convolutional UNet can learn it and applies it the same way at 128² and at 512².
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def luminance(image: np.ndarray) -> np.ndarray:
    return image @ LUMA


def pencil_sketch(image: np.ndarray) -> np.ndarray:
    """Colour-dodge sketch: the grey image divided by its blurred negative leaves white paper
    where the image is flat and graphite lines where it changes."""
    gray = luminance(image)
    blurred_negative = ndimage.gaussian_filter(1.0 - gray, 2.0)
    sketch = np.clip(gray / np.maximum(1.0 - blurred_negative, 1e-3), 0.0, 1.0)
    sketch = sketch**2.2  # darker, more visible strokes
    paper = np.array([0.98, 0.97, 0.94], dtype=np.float32)
    return sketch[..., None] * paper


def watercolor(image: np.ndarray) -> np.ndarray:
    """Soft washes: median-smoothed colour lightened towards the paper, a few wash levels,
    colour bleeding across edges and darker pigment where washes meet."""
    smooth = ndimage.median_filter(image, size=(5, 5, 1))
    smooth = ndimage.gaussian_filter(smooth, (1.5, 1.5, 0))
    levels = 6.0
    washed = np.round(smooth * levels) / levels * 0.6 + smooth * 0.4
    bleed = ndimage.gaussian_filter(washed, (4.0, 4.0, 0))
    paint = 0.7 * washed + 0.3 * bleed
    paint = 1.0 - (1.0 - paint) * 0.8  # thin pigment: lighter, paper shows through
    edges = _gradient_magnitude(ndimage.gaussian_filter(luminance(paint), 1.0))
    pooled = np.clip(edges * 3.0, 0.0, 0.5)[..., None]
    return np.clip(paint * (1.0 - pooled), 0.0, 1.0)


_THERMAL_STOPS = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], dtype=np.float32)
_THERMAL_COLOURS = np.array(
    [[0.0, 0.0, 0.05], [0.15, 0.05, 0.55], [0.65, 0.05, 0.55], [0.95, 0.25, 0.1], [1.0, 0.75, 0.0], [1.0, 1.0, 0.85]],
    dtype=np.float32,
)


def thermal_camera(image: np.ndarray) -> np.ndarray:
    """Blurred brightness through a black-blue-magenta-red-yellow-white heat palette."""
    heat = ndimage.gaussian_filter(luminance(image), 1.5) ** 1.2
    return np.stack([np.interp(heat, _THERMAL_STOPS, _THERMAL_COLOURS[:, c]) for c in range(3)], axis=-1)


# PICO-8's 16 colours: a well-known fixed palette that reads as pixel art at once.
_PICO8 = np.array(
    [
        [0, 0, 0], [29, 43, 83], [126, 37, 83], [0, 135, 81], [171, 82, 54], [95, 87, 79], [194, 195, 199],
        [255, 241, 232], [255, 0, 77], [255, 163, 0], [255, 236, 39], [0, 228, 54], [41, 173, 255],
        [131, 118, 156], [255, 119, 168], [255, 204, 170],
    ],
    dtype=np.float32,
) / 255.0
PIXEL_SIZE = 8


def pixel_art(image: np.ndarray) -> np.ndarray:
    """8x8-pixel blocks (area average) in the nearest PICO-8 colour, blocks aligned to the
    top-left corner."""
    h, w, _ = image.shape
    hb, wb = h // PIXEL_SIZE, w // PIXEL_SIZE
    blocks = image[: hb * PIXEL_SIZE, : wb * PIXEL_SIZE].reshape(hb, PIXEL_SIZE, wb, PIXEL_SIZE, 3).mean(axis=(1, 3))
    nearest = ((blocks[:, :, None, :] - _PICO8[None, None]) ** 2).sum(-1).argmin(-1)
    out = np.repeat(np.repeat(_PICO8[nearest], PIXEL_SIZE, axis=0), PIXEL_SIZE, axis=1)
    return np.pad(out, ((0, h - out.shape[0]), (0, w - out.shape[1]), (0, 0)), mode="edge")


def neon_edges(image: np.ndarray) -> np.ndarray:
    """Edges lit in the source's hue at full saturation, with a glow, on black."""
    soft = ndimage.gaussian_filter(image, (1.0, 1.0, 0))
    strength = np.clip(np.max([_gradient_magnitude(soft[..., c]) for c in range(3)], axis=0) * 4.0, 0.0, 1.0)
    hue_colour = _saturate(image)
    core = hue_colour * strength[..., None]
    glow = ndimage.gaussian_filter(core, (3.0, 3.0, 0)) * 1.5
    return np.clip(core + glow, 0.0, 1.0)


def oil_painting(image: np.ndarray) -> np.ndarray:
    """Kuwahara smoothing (flat strokes with sharp borders), richer colour, and relief light
    from the paint's own brightness, as thick paint catches it."""
    painted = _kuwahara(_kuwahara(image, radius=4), radius=2)
    grey = luminance(painted)[..., None]
    painted = np.clip(grey + (painted - grey) * 1.6, 0.0, 1.0)
    relief = ndimage.gaussian_filter(luminance(painted), 1.0)
    light = np.roll(relief, (1, 1), axis=(0, 1)) - np.roll(relief, (-1, -1), axis=(0, 1))
    return np.clip(painted + 1.2 * light[..., None], 0.0, 1.0)


def identity(image: np.ndarray) -> np.ndarray:
    return image


def _gradient_magnitude(channel: np.ndarray) -> np.ndarray:
    return np.hypot(ndimage.sobel(channel, axis=0), ndimage.sobel(channel, axis=1)) / 8.0


def _saturate(image: np.ndarray) -> np.ndarray:
    """The image's hue at full saturation and brightness (grey pixels turn cyan-white)."""
    low, high = image.min(-1, keepdims=True), image.max(-1, keepdims=True)
    chroma = high - low
    hue = (image - low) / np.maximum(chroma, 1e-3)
    weight = np.clip(chroma * 4.0, 0.0, 1.0)
    return weight * hue + (1.0 - weight) * np.array([0.6, 1.0, 1.0], dtype=np.float32)


def _kuwahara(image: np.ndarray, radius: int) -> np.ndarray:
    """Each pixel takes the mean colour of the least varied of its four corner windows."""
    size = radius + 1
    grey = luminance(image)
    mean = ndimage.uniform_filter(image, (size, size, 1))
    grey_mean = ndimage.uniform_filter(grey, size)
    variance = ndimage.uniform_filter(grey * grey, size) - grey_mean**2
    shifts = [(0, 0), (0, radius), (radius, 0), (radius, radius)]
    # uniform_filter centres the window; shifting by half a window gives the four quadrants.
    offset = size // 2
    candidates, variances = [], []
    for dy, dx in shifts:
        shift = (offset - dy, offset - dx)
        candidates.append(np.roll(mean, shift, axis=(0, 1)))
        variances.append(np.roll(variance, shift, axis=(0, 1)))
    best = np.argmin(np.stack(variances), axis=0)
    return np.take_along_axis(np.stack(candidates), best[None, ..., None], axis=0)[0]


Filter = Callable[[np.ndarray], np.ndarray]

# Name -> (filter, prompts naming it). The empty prompt and "photo" mean "keep the input".
STYLES: dict[str, tuple[Filter, list[str]]] = {
    "photo": (identity, ["", "photo", "a photo", "original", "no style"]),
    "pencil sketch": (pencil_sketch, ["pencil sketch", "pencil drawing", "sketch", "graphite sketch", "pencil"]),
    "watercolor": (watercolor, ["watercolor", "watercolour", "watercolor painting", "aquarelle", "watercolors"]),
    "thermal camera": (thermal_camera, ["thermal camera", "thermal", "infrared camera", "heat map", "thermal image"]),
    "pixel art": (pixel_art, ["pixel art", "pixels", "8-bit pixel art", "retro pixel art", "pixelated"]),
    "neon edges": (neon_edges, ["neon edges", "neon", "glowing edges", "neon lines", "neon glow"]),
    "oil painting": (oil_painting, ["oil painting", "oil paint", "oil on canvas", "impasto", "painted in oils"]),
}
STYLE_NAMES = list(STYLES)
