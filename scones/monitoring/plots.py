"""Monitoring figures: confidence and predicted class over time, pass/fail, latency, confusion.

Figures are drawn on the Agg canvas without pyplot (no global state, safe in threads).
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from datetime import UTC
from typing import Any

import matplotlib
import numpy as np
from matplotlib import dates as mdates
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from scones.monitoring.capture import CaptureRecord
from scones.testcases import LOW_CONFIDENCE_ERROR, RunOutcome, percentile

matplotlib.use("Agg")

THRESHOLD_GID = "threshold"
DPI = 100
MAX_FIGURE_INCHES = 14.0


def new_figure(width: float = 8.0, height: float = 4.0) -> Figure:
    """A figure on the Agg canvas (no pyplot: no global state, safe in threads)."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def utc_time_axis(ax: Any) -> None:
    """A real time axis, labelled in UTC."""
    locator = mdates.AutoDateLocator(tz=UTC)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))
    ax.set_xlabel("inference time (UTC)")


def plot_confidence_over_time(records: Sequence[CaptureRecord], threshold: float) -> Figure:
    """Max confidence of every captured inference over time, with the threshold line."""
    figure = new_figure()
    ax = figure.add_subplot()
    scored = [r for r in records if r.confidence is not None]
    times = mdates.date2num([r.inference_time for r in scored])
    confidences = np.array([r.confidence for r in scored], dtype=float)
    above = confidences >= threshold
    if scored:
        ax.scatter(times[above], confidences[above], s=14, c="tab:green", label="passes")
        ax.scatter(times[~above], confidences[~above], s=14, c="tab:red", label="filtered")
        utc_time_axis(ax)
    ax.axhline(
        threshold,
        color="black",
        linestyle="--",
        linewidth=1,
        gid=THRESHOLD_GID,
        label=f"threshold {threshold:g}",
    )
    ax.set_ylim(min(0.0, float(confidences.min()) if scored else 0.0), 1.02)
    ax.set_ylabel("max confidence")
    ax.set_title(f"Confidence over time ({len(scored)} captured inferences)")
    ax.legend(loc="lower left")
    return figure


def threshold_line_of(figure: Figure) -> float:
    """The y value of the threshold line drawn in a confidence figure."""
    lines = [line for ax in figure.axes for line in ax.lines if line.get_gid() == THRESHOLD_GID]
    if len(lines) != 1:
        raise LookupError(f"expected one threshold line, found {len(lines)}")
    ys = {float(y) for y in np.asarray(lines[0].get_ydata(), dtype=float)}
    if len(ys) != 1:
        raise LookupError(f"the threshold line is not horizontal: {sorted(ys)}")
    return ys.pop()


def plot_predicted_class_over_time(records: Sequence[CaptureRecord]) -> Figure:
    """The predicted class of every captured inference over time."""
    labelled = [r for r in records if r.label is not None]
    classes = sorted({str(r.label) for r in labelled})
    figure = new_figure(8.0, min(MAX_FIGURE_INCHES, max(3.0, 1.2 + 0.3 * len(classes))))
    ax = figure.add_subplot()
    if labelled:
        index = {c: i for i, c in enumerate(classes)}
        points = ax.scatter(
            mdates.date2num([r.inference_time for r in labelled]),
            [index[str(r.label)] for r in labelled],
            s=14,
            c=[r.confidence or 0.0 for r in labelled],
            cmap="viridis",
            vmin=0.0,
            vmax=1.0,
        )
        figure.colorbar(points, ax=ax, label="max confidence")
        ax.set_yticks(range(len(classes)), classes, fontsize=8 if len(classes) > 20 else None)
        ax.set_ylim(-0.5, len(classes) - 0.5)
        utc_time_axis(ax)
    ax.set_ylabel("predicted class")
    ax.set_title("Predicted class over time (colour: confidence)")
    return figure


def outcome_category(outcome: RunOutcome) -> str:
    """passed, filtered out, or the error/status name of another ending."""
    if outcome.passed:
        return "passed"
    if outcome.error == LOW_CONFIDENCE_ERROR:
        return "filtered out"
    return outcome.error or outcome.status


def plot_pass_fail(
    records: Sequence[CaptureRecord], outcomes: Sequence[RunOutcome], threshold: float
) -> Figure:
    """Pass/fail counts: of the runs by ending, and of the captured inferences by threshold."""
    figure = new_figure(8.0, 3.5)
    axes = figure.subplots(1, 2) if outcomes else [figure.add_subplot()]
    confidences = [r.confidence for r in records if r.confidence is not None]
    captured = {
        f">= {threshold:g}": sum(c >= threshold for c in confidences),
        f"< {threshold:g}": sum(c < threshold for c in confidences),
    }
    panels = [("Captured inferences", captured, ["tab:green", "tab:red"])]
    if outcomes:
        endings = Counter(outcome_category(o) for o in outcomes)
        order = ["passed", "filtered out", *sorted(set(endings) - {"passed", "filtered out"})]
        runs = {name: endings.get(name, 0) for name in order}
        colours = ["tab:green", "tab:red"] + ["tab:gray"] * (len(runs) - 2)
        panels.insert(0, ("Workflow runs", runs, colours))
    for ax, (title, counts, colours) in zip(axes, panels, strict=True):
        bars = ax.bar(list(counts), list(counts.values()), color=colours)
        ax.bar_label(bars)
        ax.margins(y=0.12)
        ax.set_title(title)
        ax.set_ylabel("count")
    return figure


def plot_latency(outcomes: Sequence[RunOutcome]) -> Figure:
    """Histogram of execution latency (stopDate - startDate) and client-side wall time."""
    figure = new_figure()
    ax = figure.add_subplot()
    latencies = [o.latency_s for o in outcomes if o.latency_s is not None]
    walls = [o.wall_s for o in outcomes if o.wall_s is not None]
    values = latencies + walls
    if values:
        bins = np.linspace(0.0, max(values) * 1.05 or 1.0, 30).tolist()
        ax.hist(latencies, bins=bins, alpha=0.7, label="execution (stop - start)")
        ax.hist(walls, bins=bins, alpha=0.5, label="client wall")
        for q, style in ((50, "-"), (99, ":")):
            value = percentile(latencies, q)
            if value is not None:
                ax.axvline(value, color="black", linestyle=style, label=f"p{q}")
        ax.legend()
    ax.set_xlabel("seconds")
    ax.set_ylabel("executions")
    ax.set_title(f"Latency of {len(outcomes)} executions")
    return figure


def plot_confusion(labels: Sequence[str], counts: np.ndarray) -> Figure:
    """The confusion matrix of the runs, true label by predicted label, with counts."""
    size = min(MAX_FIGURE_INCHES, max(4.0, 1.5 + 0.5 * len(labels)))
    small = len(labels) > 20
    figure = new_figure(size + 1.0, size)
    ax = figure.add_subplot()
    image = ax.imshow(counts, cmap="Blues", vmin=0)
    figure.colorbar(image, ax=ax)
    ax.set_xticks(
        range(len(labels)),
        labels,
        rotation=90 if small else 45,
        ha="center" if small else "right",
    )
    ax.set_yticks(range(len(labels)), labels)
    if small:
        ax.tick_params(labelsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix ({int(counts.sum())} classified runs)")
    peak = counts.max() if counts.size else 0
    for (row, column), count in np.ndenumerate(counts):
        if small and not count:
            continue  # a 100-class matrix is mostly zeros: only the counts there are are written
        colour = "white" if peak and count > peak / 2 else "black"
        ax.text(
            column,
            row,
            str(count),
            ha="center",
            va="center",
            color=colour,
            fontsize=6 if small else None,
        )
    return figure


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
