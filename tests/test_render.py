"""`latentcast render`: the real command on small generated clips.

The file side (timing, audio, containers, errors, clean-up) runs through the passthrough
pipeline. A few cases run the real CLI in a fresh interpreter, as a user calls it; the rest call
the command in this process, which checks the same behaviour without paying interpreter and
model start-up each time (stderr is captured at the file-descriptor level, so anything FFmpeg
or a thread printed would show too). The stream-diffusion side runs the `tiny` preset once as a
subprocess and then in-process with one loaded pipeline.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from app import render
from pipelines.registry import ModelOptions, load_pipeline

from media import make_clip, make_tone_file, read_media

REPO = Path(__file__).resolve().parents[1]
FPS = 12
FRAMES = 12  # one second


def render_cli(*args: str | Path, **popen) -> subprocess.CompletedProcess:
    """Run `latentcast render ARGS` in a fresh interpreter."""
    command = [sys.executable, "-m", "app.cli", "render", *map(str, args)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, **popen)


@pytest.fixture
def render_here(capfd):
    """Run `latentcast render ARGS` in this process; returns what render_cli returns."""
    def run(*args: str | Path) -> subprocess.CompletedProcess:
        parser = argparse.ArgumentParser(prog=render.PROG)
        render.add_arguments(parser)
        capfd.readouterr()
        status = render.run(parser.parse_args([str(a) for a in args]))
        return subprocess.CompletedProcess(args, status, "", capfd.readouterr().err)
    return run


def assert_one_line_error(result: subprocess.CompletedProcess) -> None:
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latentcast render: error: "), result.stderr


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """1 s, 96x64 at 12 fps, with an AAC tone."""
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", width=96, height=64, frames=FRAMES, fps=FPS)


def test_passthrough_keeps_every_frame_in_order_with_timing_and_audio(clip, tmp_path):
    out = tmp_path / "out.mp4"
    result = render_cli(clip, "-o", out, "--pipeline", "passthrough")
    assert result.returncode == 0, result.stderr
    assert "frame/s" in result.stderr  # the progress bar
    source, rendered = read_media(clip), read_media(out)
    assert rendered.frame_count == source.frame_count == FRAMES
    assert rendered.frame_rate == FPS
    assert rendered.frame_times == pytest.approx(source.frame_times, abs=1e-3)
    assert rendered.video_codec == "h264"
    assert rendered.audio_codec == "aac"
    assert rendered.audio_duration == pytest.approx(source.audio_duration, abs=0.03)
    # Frame k came from input k: closer to it than to its neighbours.
    for k, frame in enumerate(rendered.frames):
        errors = [np.abs(frame.astype(int) - s.astype(int)).mean() for s in source.frames]
        assert int(np.argmin(errors)) == k and errors[k] < 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # no temporary file left


def test_variable_frame_rate_timestamps_are_kept(tmp_path, render_here):
    times = [0.0, 0.05, 0.1, 0.3, 0.35, 0.7, 0.75, 0.8]
    source = make_clip(tmp_path / "vfr.mkv", frame_times=times, fps=20)
    out = tmp_path / "out.mp4"
    assert render_here(source, "-o", out, "--pipeline", "passthrough", "-q").returncode == 0
    assert read_media(out).frame_times == pytest.approx(times, abs=1e-3)


def test_sideways_phone_video_is_rendered_upright(tmp_path, render_here):
    source = make_clip(tmp_path / "portrait.mp4", width=96, height=64, display_rotation=-90, audio_codec=None)
    out = tmp_path / "out.mp4"
    assert render_here(source, "-o", out, "--pipeline", "passthrough", "-q").returncode == 0
    stored, rendered = read_media(source).frames, read_media(out).frames
    assert rendered[0].shape == (96, 64, 3)
    for before, after in zip(stored, rendered, strict=True):  # -90 degrees: turned clockwise
        assert np.abs(np.rot90(before, -1).astype(int) - after.astype(int)).mean() < 4


def test_fps_override_resamples_and_keeps_duration_and_audio(clip, tmp_path, render_here):
    out = tmp_path / "out.mkv"
    result = render_here(clip, "-o", out, "--pipeline", "passthrough", "--fps", "6", "-q")
    assert result.returncode == 0, result.stderr
    rendered = read_media(out)
    assert rendered.frame_count == 6 and rendered.frame_rate == 6
    # Matroska shifts every stream by AAC's priming delay, so compare from the first frame.
    start = rendered.frame_times[0]
    assert [t - start for t in rendered.frame_times] == pytest.approx([k / 6 for k in range(6)], abs=1e-3)
    assert rendered.audio_duration == pytest.approx(read_media(clip).audio_duration, abs=0.05)


def test_webm_output_uses_vp9_and_reencodes_audio_it_cannot_copy(tmp_path, render_here):
    source = make_clip(tmp_path / "pcm.mov", audio_codec="pcm_s16le")
    out = tmp_path / "out.webm"
    result = render_here(source, "-o", out, "--pipeline", "passthrough", "--width", "48", "-q")
    assert result.returncode == 0, result.stderr
    rendered = read_media(out)
    assert rendered.video_codec == "vp9" and rendered.audio_codec == "opus"
    assert rendered.frames[0].shape == (32, 48, 3)  # height follows the aspect ratio, rounded to 8
    assert rendered.frame_count == FRAMES
    assert rendered.audio_duration == pytest.approx(1.0, abs=0.05)


def test_input_without_audio_and_no_audio_flag(clip, tmp_path, render_here):
    silent = make_clip(tmp_path / "silent.mp4", audio_codec=None)
    for source, extra in ((silent, []), (clip, ["--no-audio"])):
        out = tmp_path / f"out-{source.stem}.mp4"
        assert render_here(source, "-o", out, "--pipeline", "passthrough", "-q", *extra).returncode == 0
        assert read_media(out).audio_codec is None


BAD_INPUTS = [
    "missing input", "not a video", "audio only", "input is a folder", "output folder missing",
    "unwritable output", "unknown container", "width not a multiple of the pipeline's step", "unknown pipeline",
    "no input and no --frames", "flag the pipeline does not take", "gif cannot hold audio",
]


def bad_input_case(case: str, clip: Path, tmp_path: Path, out_dir: Path) -> tuple[list, Path]:
    """The arguments of one bad-input case and the output path it names."""
    out = out_dir / "out.mp4"
    passthrough = ["--pipeline", "passthrough"]
    if case == "missing input":
        return [tmp_path / "nope.mp4", "-o", out, *passthrough], out
    if case == "not a video":
        text = tmp_path / "notes.mp4"
        text.write_text("not a video\n")
        return [text, "-o", out, *passthrough], out
    if case == "audio only":
        return [make_tone_file(tmp_path / "tone.wav"), "-o", out, *passthrough], out
    if case == "input is a folder":
        return [tmp_path, "-o", out, *passthrough], out
    if case == "output folder missing":
        out = out_dir / "missing" / "out.mp4"
        return [clip, "-o", out, *passthrough], out
    if case == "unwritable output":
        if not Path("/proc/self").is_dir():
            pytest.skip("needs Linux /proc, where no one may create files")
        out = Path("/proc/latentcast-render-test.mp4")
        return [clip, "-o", out, *passthrough], out
    if case == "unknown container":
        out = out_dir / "out.xyz"
        return [clip, "-o", out, *passthrough], out
    if case == "width not a multiple of the pipeline's step":
        return [clip, "-o", out, "--width", "101", *passthrough], out  # 4:2:0 needs even sides
    if case == "unknown pipeline":
        return [clip, "-o", out, "--pipeline", "no-such-pipeline"], out
    if case == "no input and no --frames":
        return ["-o", out, "--prompt", "a cat"], out
    if case == "flag the pipeline does not take":
        return [clip, "-o", out, "--prompt", "a cat", *passthrough], out
    assert case == "gif cannot hold audio"
    out = out_dir / "out.gif"
    return [clip, "-o", out, *passthrough], out


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_fails_with_one_line_and_leaves_no_file(case, clip, tmp_path, render_here):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args, out = bad_input_case(case, clip, tmp_path, out_dir)
    assert_one_line_error(render_here(*args))
    assert not out.exists()
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("case", ["missing input", "not a video", "unknown pipeline"])
def test_bad_input_through_the_real_cli(case, clip, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args, out = bad_input_case(case, clip, tmp_path, out_dir)
    assert_one_line_error(render_cli(*args))
    assert list(out_dir.iterdir()) == []


def test_interrupt_removes_the_partial_file(clip, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # Upscaled and at 240 fps the passthrough render takes long enough to be interrupted.
    command = [sys.executable, "-m", "app.cli", "render", str(clip), "-o", str(out_dir / "out.mp4"),
               "--pipeline", "passthrough", "--fps", "240", "--width", "640", "-q"]
    # Restore the default SIGINT disposition: a background shell may have set it to "ignore".
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not any(out_dir.iterdir()) and time.monotonic() < deadline:  # the temporary file appears
        time.sleep(0.01)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["latentcast render: error: interrupted; no output written"]
    assert list(out_dir.iterdir()) == []


# --- stream-diffusion, tiny preset -------------------------------------------------------------

@pytest.fixture(scope="module")
def square_clip(tmp_path_factory) -> Path:
    """1 s, 64x64 at 12 fps with an AAC tone: the smallest size the diffusion pipeline takes."""
    return make_clip(tmp_path_factory.mktemp("clips") / "square.mp4", width=64, height=64, frames=FRAMES, fps=FPS)


# The subprocess and in-process renders both run with the suite's single thread (conftest.py),
# so their frames can be compared exactly.
@pytest.fixture(scope="module")
def tiny_pipeline():
    return load_pipeline("stream-diffusion", ModelOptions(preset="tiny", device="cpu"))


@pytest.fixture
def preloaded(monkeypatch, tiny_pipeline):
    """In-process renders reuse one loaded tiny pipeline (each stream still gets a fresh state)."""
    def load(name, options):
        assert (name, options.preset) == ("stream-diffusion", "tiny")
        return tiny_pipeline
    monkeypatch.setattr(render, "load_pipeline", load)


def test_tiny_img2img_render_is_complete_and_reproducible(square_clip, tmp_path, preloaded, render_here):
    clip = square_clip
    first, again, other_seed = tmp_path / "first.mp4", tmp_path / "again.mp4", tmp_path / "other.mp4"
    common = ["--preset", "tiny", "--device", "cpu", "--prompt", "a watercolor fox", "-q"]
    result = render_cli(clip, "-o", first, "--seed", "7", *common)
    assert result.returncode == 0, result.stderr
    source, rendered = read_media(clip), read_media(first)
    assert rendered.frame_count == source.frame_count
    assert rendered.frame_rate == FPS
    assert rendered.frame_times == pytest.approx(source.frame_times, abs=1e-3)
    assert rendered.audio_codec == "aac"
    assert rendered.audio_duration == pytest.approx(source.audio_duration, abs=0.03)
    assert rendered.frames[0].shape == (64, 64, 3)
    assert not np.array_equal(rendered.frames[5], source.frames[5])  # the model changed the picture

    # Same seed in another process: the same frames, exactly. Another seed: other frames.
    assert render_here(clip, "-o", again, "--seed", "7", *common).returncode == 0
    assert render_here(clip, "-o", other_seed, "--seed", "8", *common).returncode == 0
    repeated = read_media(again).frames
    assert all(np.array_equal(a, b) for a, b in zip(rendered.frames, repeated, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(rendered.frames, read_media(other_seed).frames))


def test_tiny_txt2img_renders_the_requested_frames(tmp_path, preloaded, render_here):
    out = tmp_path / "t2i.mp4"
    result = render_here("--prompt", "a lighthouse", "--frames", "5", "--width", "64", "--height", "64",
                         "-o", out, "--preset", "tiny", "--fps", "10", "-q")
    assert result.returncode == 0, result.stderr
    rendered = read_media(out)
    assert rendered.frame_count == 5 and rendered.frame_rate == 10
    assert rendered.frames[0].shape == (64, 64, 3)
    assert rendered.audio_codec is None


@pytest.mark.parametrize("args, status", [
    (["--width", "4096"], 2),  # beyond the pipeline's largest side
    (["--steps", "9"], 2),
    (["--t-index-list", "45,32"], 2),
    (["--preset", "no-such-preset"], 2),
])
def test_tiny_bad_parameters_fail_with_one_line(args, status, square_clip, tmp_path, tiny_pipeline, monkeypatch,
                                                render_here):
    if "--preset" not in args:  # unknown presets must reach the real planner
        monkeypatch.setattr(render, "load_pipeline", lambda name, options: tiny_pipeline)
    result = render_here(square_clip, "-o", tmp_path / "out.mp4", "--preset", "tiny", *args, "-q")
    assert result.returncode == status
    assert_one_line_error(result)
    assert list(tmp_path.iterdir()) == []
