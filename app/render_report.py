"""`latentcast render --report FILE.csv`: the temporal consistency of a render, frame by frame.

Every output frame is measured against the one before it (streaming.consistency: warp error
against the input's optical flow, flicker, and the statistics drift compares). The CSV has one
row per frame; drift is each frame's sharpness, contrast and mean colour against the mean of the
first seconds of the video. A plot of the same goes beside it (FILE.png).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from pathlib import Path

from streaming.consistency import REFERENCE_S, ConsistencyMeter, Sample, drift_between
from streaming.frames import VideoFrame

COLUMNS = ("frame_id", "time_s", "warp_error", "warp_error_input", "flicker", "flicker_input",
           "sharpness_ratio", "contrast_ratio", "color_shift", "input_sharpness_ratio")


def can_plot() -> bool:
    """The plot needs matplotlib (the `report` extra); render asks before it starts, not after."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def plot_path(report: Path) -> Path:
    return report.with_suffix(".png") if report.suffix != ".png" else report.with_name(report.stem + "-plot.png")


def noting_inputs(frames: Iterable[VideoFrame], meter: ConsistencyMeter) -> Iterator[VideoFrame]:
    for frame in frames:
        meter.note_input(frame)
        yield frame


def observing_outputs(frames: Iterable[VideoFrame], meter: ConsistencyMeter) -> Iterator[VideoFrame]:
    for frame in frames:
        meter.observe_output(frame, at=frame.pts if frame.pts is not None else float(frame.frame_id))
        yield frame


def rows(samples: list[Sample]) -> list[dict[str, float | int | None]]:
    """One row per measured frame; drift against the first REFERENCE_S seconds."""
    if not samples:
        return []
    start = samples[0].at
    reference = [s for s in samples if s.at - start <= REFERENCE_S]
    ref_inputs = [s.input for s in reference if s.input is not None]
    out = []
    for s in samples:
        drift = drift_between([r.output for r in reference], [s.output])
        input_drift = drift_between(ref_inputs, [s.input]) if s.input is not None and ref_inputs else None
        out.append({
            "frame_id": s.frame_id, "time_s": round(s.at, 4),
            "warp_error": s.pair.warp_error, "warp_error_input": s.pair.warp_error_input,
            "flicker": s.pair.flicker, "flicker_input": s.pair.flicker_input,
            "sharpness_ratio": drift["sharpness_ratio"], "contrast_ratio": drift["contrast_ratio"], "color_shift": drift["color_shift"],
            "input_sharpness_ratio": None if input_drift is None else input_drift["sharpness_ratio"],
        })
    return out


def write_report(samples: list[Sample], path: Path) -> Path:
    """Write the CSV at `path` and the plot beside it; returns the plot's path."""
    table = rows(samples)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in table)
    picture = plot_path(path)
    _plot(table, picture)
    return picture


def _plot(table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    t = [r["time_s"] for r in table]

    def series(name: str) -> list[float]:
        return [float("nan") if r[name] is None else r[name] for r in table]

    panels = [
        ("warp error (MSE, RGB 0-1)", [("warp_error", "output"), ("warp_error_input", "input (flow floor)")]),
        ("flicker (4x4 colour change)", [("flicker", "output"), ("flicker_input", "input")]),
        ("drift vs first seconds", [("sharpness_ratio", "sharpness ratio"), ("contrast_ratio", "contrast ratio"),
                                    ("input_sharpness_ratio", "input sharpness ratio"), ("color_shift", "colour shift")]),
    ]
    # Lines with data only (text-to-video has no input: no warp error), panels with a line only.
    drawn = [(title, [(label, series(name)) for name, label in lines if any(r[name] is not None for r in table)])
             for title, lines in panels]
    drawn = [(title, lines) for title, lines in drawn if lines]
    fig, axes = plt.subplots(len(drawn), 1, figsize=(9, 2.5 * len(drawn)), sharex=True, constrained_layout=True, squeeze=False)
    axes = axes[:, 0]
    for ax, (title, lines) in zip(axes, drawn):
        for label, values in lines:
            ax.plot(t, values, label=label, linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel("time (s)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
