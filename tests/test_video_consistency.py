"""Temporal-consistency measures (streaming.consistency) on clips whose answer is known: an
output that follows its input's motion has a low warp error and one that flickers or changes
unlike its input a high one; occluded pixels do not count; flicker sees a brightness pump and not
motion; drift sees blur creep in; the meter samples, stays bounded and never runs on the caller's
thread unless asked to."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from streaming.consistency import ConsistencyMeter, flow_between, measure_pair, small, warp_error
from streaming.frames import VideoFrame

W, H = 160, 120


def texture(seed: int = 0) -> np.ndarray:
    """Smooth random texture."""
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (12, 20, 3)).astype(np.uint8), (W, H), interpolation=cv2.INTER_CUBIC)


def sliding(n: int, speed: int = 2, seed: int = 0) -> list[np.ndarray]:
    """A camera pan over a texture that wraps around (so its statistics stay the same): it
    slides `speed` pixels a frame."""
    tex = texture(seed)
    return [np.roll(tex, k * speed, axis=1) for k in range(n)]


def stylised(frames: list[np.ndarray]) -> list[np.ndarray]:
    """A temporally consistent 'generation': the same colour transform of every input."""
    return [np.ascontiguousarray(255 - f[..., ::-1]) for f in frames]


def test_an_output_that_follows_its_input_has_a_low_warp_error_and_flicker_or_noise_raise_it():
    inputs = sliding(3)
    steady = stylised(inputs)
    rng = np.random.default_rng(1)
    pumped = [np.clip(f.astype(int) + (30 if k % 2 else -30), 0, 255).astype(np.uint8) for k, f in enumerate(steady)]
    boiling = [np.clip(f + rng.normal(0, 20, f.shape), 0, 255).astype(np.uint8) for f in steady]
    good, _, _ = measure_pair(steady[1], steady[2], inputs[1], inputs[2])
    assert good.warp_error < 2e-3 and good.warp_error == pytest.approx(good.warp_error_input, rel=0.5)
    for bad in (pumped, boiling):
        measured, _, _ = measure_pair(bad[1], bad[2], inputs[1], inputs[2])
        assert measured.warp_error > 5 * good.warp_error
    assert measure_pair(pumped[1], pumped[2], inputs[1], inputs[2])[0].flicker > 10 * good.flicker
    assert good.flicker == pytest.approx(good.flicker_input, rel=0.2)  # a pan moves little of a 4x4 grid of means


def test_occluded_pixels_are_left_out_of_the_warp_error():
    """A square slides over a static background: the strip it uncovers has no past. An output
    that paints that strip at random is as consistent as one that does not, once masked."""
    rng = np.random.default_rng(2)
    background = cv2.GaussianBlur(rng.integers(0, 256, (H, W, 3)).astype(np.uint8), (0, 0), 2)
    frames = []
    for x in (40, 52):
        f = background.copy()
        f[30:90, x : x + 50] = (230, 40, 40)
        frames.append(f)
    size = (W, H)
    prev, now = small(frames[0], size), small(frames[1], size)
    flow = flow_between(prev, now)
    uncovered = np.zeros((H, W), bool)
    uncovered[30:90, 40:52] = True
    assert not flow.valid[uncovered].mean() > 0.5  # most of the uncovered strip is masked
    assert flow.valid.mean() > 0.6
    painted = now.copy()
    painted[uncovered] = rng.random((int(uncovered.sum()), 3), dtype=np.float32)
    masked, clean = warp_error(flow, prev, painted), warp_error(flow, prev, now)
    unmasked = float(((painted - cv2.remap(prev, flow.map_x, flow.map_y, cv2.INTER_LINEAR)) ** 2).mean())
    assert masked < unmasked / 2 and masked < clean + 0.01


def run_meter(meter: ConsistencyMeter, outputs: list[np.ndarray], inputs: list[np.ndarray] | None, fps: float = 16.0) -> None:
    for k, out in enumerate(outputs):
        if inputs is not None:
            meter.note_input(VideoFrame(inputs[k], k))
        meter.observe_output(VideoFrame(out, k), at=k / fps)


def test_the_meter_measures_one_pair_in_every_n_and_reports_warp_error_and_flicker():
    inputs = sliding(33)
    meter = ConsistencyMeter(every=8, inline=True)
    run_meter(meter, stylised(inputs), inputs)
    snap = meter.snapshot()
    assert snap["samples"] == 4 and snap["every"] == 8 and snap["skipped"] == 0  # frames 8, 16, 24, 32
    assert snap["warp_error"] is not None and snap["warp_error"] < 2e-3 and snap["flicker_input"] is not None
    assert snap["cost_ms"] > 0
    text = ConsistencyMeter(every=2, inline=True)  # text-to-video: no inputs, no warp error
    run_meter(text, stylised(inputs), None)
    assert text.snapshot()["warp_error"] is None and text.snapshot()["flicker"] is not None


def test_drift_compares_the_last_seconds_with_the_first():
    inputs = sliding(200, speed=1)
    outputs = []
    for k, f in enumerate(stylised(inputs)):  # sharp for 3 s, then ever blurrier
        sigma = 0.0 if k < 48 else 0.3 + (k - 48) / 40
        outputs.append(cv2.GaussianBlur(f, (0, 0), sigma) if sigma else f)
    blurring, steady = ConsistencyMeter(every=4, inline=True), ConsistencyMeter(every=4, inline=True)
    run_meter(blurring, outputs[:40], inputs[:40])
    assert blurring.snapshot()["drift"] is None  # not 6 s of stream yet
    run_meter(blurring, outputs[40:], inputs[40:]), run_meter(steady, stylised(inputs), inputs)
    drift, calm = blurring.snapshot()["drift"], steady.snapshot()["drift"]
    assert drift["sharpness_ratio"] < 0.5 and drift["input"]["sharpness_ratio"] > 0.7
    assert 0.8 < calm["sharpness_ratio"] < 1.25 and calm["color_shift"] < 0.05


def test_the_meter_is_bounded_and_measures_off_the_callers_thread():
    meter = ConsistencyMeter(every=1)
    frames = sliding(40)
    threads = set()
    measure = meter._measure

    def recording(*args):
        threads.add(threading.current_thread().name)
        time.sleep(0.05)  # slower than frames arrive: later samples are skipped, not queued
        measure(*args)

    meter._measure = recording
    for k in range(600):  # inputs whose outputs never come (dropped): the meter keeps a bounded number
        meter.note_input(VideoFrame(frames[k % 40], k))
    assert len(meter._inputs) <= 96
    for k, f in enumerate(frames):
        meter.observe_output(VideoFrame(f, 600 + k))
    assert len(meter._inputs) == 0  # older inputs go once a later output is out
    deadline = time.monotonic() + 10
    while meter.snapshot()["samples"] + meter.skipped < 39 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threads == {t for t in threads if t.startswith("consistency")} and threads
    assert meter.skipped > 0 and meter.samples + meter.skipped == 39
