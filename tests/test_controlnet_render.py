"""Creative controls in `latentcast render`: --controlnet/--control, --ip-adapter/--image-prompt,
--lora/--loras and --fuse-loras, on the tiny preset with random control models, in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.cli import main

from media import make_clip, read_media

MODEL = ["--preset", "tiny", "--device", "cpu", "--engine", "eager", "--seed", "7", "--prompt", "a fox", "-q"]
CONTROLS = ["--controlnet", "edges=random", "--lora", "ink=random", "--ip-adapter", "random"]


@pytest.fixture
def render_here(capfd):
    """`latentcast render ARGS` through the CLI's entry point, in this process: (exit status, stderr)."""
    def run(*args: str | Path) -> tuple[int, str]:
        capfd.readouterr()
        return main(["render", *map(str, args)]), capfd.readouterr().err
    return run


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clips") / "square.mp4", width=64, height=64, frames=6, fps=12, audio_codec=None)


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pictures") / "prompt.png"
    pixels = np.zeros((48, 48, 3), np.uint8)
    pixels[::6] = (255, 0, 0)
    Image.fromarray(pixels).save(path)
    return path


def difference(a: Path, b: Path) -> float:
    """Mean absolute difference of two videos' frames, in levels. A render is exactly reproducible
    (same seed, same threads), so any difference comes from what the flags changed; the tiny
    random models make low-contrast pictures, hence the small numbers."""
    pairs = zip(read_media(a).frames, read_media(b).frames, strict=True)
    return float(np.mean([np.abs(x.astype(int) - y.astype(int)).mean() for x, y in pairs]))


def test_render_with_every_control_and_with_fused_loras(clip, picture, tmp_path, render_here):
    plain, controlled, per_row, fused = (tmp_path / f"{name}.mp4" for name in ("plain", "controlled", "per_row", "fused"))
    assert render_here(clip, "-o", plain, *MODEL)[0] == 0
    status, error = render_here(clip, "-o", controlled, *MODEL, *CONTROLS, "--control", "edges:canny:1.5", "--loras", "ink:0.8",
                                "--image-prompt", picture, "--image-prompt-weight", "1.5")
    assert status == 0, error
    assert read_media(controlled).frame_count == read_media(plain).frame_count == 6
    assert difference(controlled, plain) > 0.1  # the controls changed the picture

    assert render_here(clip, "-o", per_row, *MODEL, "--lora", "ink=random", "--loras", "ink:1.5")[0] == 0
    assert render_here(clip, "-o", fused, *MODEL, "--lora", "ink=random", "--loras", "ink:1.5", "--fuse-loras")[0] == 0
    assert difference(per_row, plain) > 0.1
    assert difference(per_row, fused) < 0.02  # the same LoRA, merged into the weights: the same video, up to encoding


@pytest.mark.parametrize(("args", "message"), [
    (["--loras", "ink:1", "--fuse-loras"], "--fuse-loras merges the --loras"),
    (["--lora", "ink=random", "--loras", "oil:1", "--fuse-loras"], "oil not loaded with --lora"),
    (["--controlnet", "edges=random", "--control", "depth:canny"], "no ControlNet 'depth' is loaded; loaded: edges"),
    (["--image-prompt", "prompt.png"], "no IP-Adapter is loaded"),
])
def test_control_flags_that_cannot_work_fail_with_one_line(args, message, clip, picture, tmp_path, render_here):
    args = [str(picture) if a == "prompt.png" else a for a in args]
    status, error = render_here(clip, "-o", tmp_path / "out.mp4", *MODEL, *args)
    assert status == 2 and message in error, error
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error
    assert not (tmp_path / "out.mp4").exists()


def test_a_control_model_flag_without_a_source_fails_before_anything_loads(clip, tmp_path, render_here):
    status, error = render_here(clip, "-o", tmp_path / "out.mp4", *MODEL, "--controlnet", "edges")
    assert status == 2 and "give NAME=SOURCE, got 'edges'" in error and len(error.strip().splitlines()) == 1, error
