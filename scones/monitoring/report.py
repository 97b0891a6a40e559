"""Monitoring report: the capture records and the runs' outcomes, plotted, in one HTML file.

`build_report` plots confidence over time against the filter's threshold, predicted class over
time, pass/fail counts, latencies and the confusion matrix of the runs (`outcomes.json` from
`scones.testcases`), and writes `report.html` with every picture embedded as a data URI.

    python -m scones.monitoring --bucket B --capture-prefix P --endpoint NAME \
        --threshold 0.93 [--outcomes DIR/outcomes.json] [--out DIR] \
        [--expect-records N --wait SECONDS]

Exit status 1 when fewer than `--expect-records` records were read by the end of `--wait`.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from scones.monitoring.capture import CaptureRead, wait_for_capture
from scones.monitoring.plots import (
    plot_confidence_over_time,
    plot_confusion,
    plot_latency,
    plot_pass_fail,
    plot_predicted_class_over_time,
    png_bytes,
)
from scones.settings import REPO_ROOT
from scones.testcases import LOW_CONFIDENCE_ERROR, RunOutcome, load_outcomes, percentile

GRAPH_PNG = REPO_ROOT / "docs" / "stepfunctions_graph.png"


@dataclass
class Summary:
    """The report's numbers."""

    endpoint: str
    threshold: float
    capture_records: int
    capture_files: int
    first_inference: str | None
    last_inference: str | None
    captured_below_threshold: int
    captured_below_threshold_share: float | None
    runs: int
    classified_runs: int
    accuracy: float | None
    passed_accuracy: float | None
    passed: int
    filtered_out: int
    filtered_out_share: float | None
    unexpected: int
    latency_p50_s: float | None
    latency_p99_s: float | None
    wall_p50_s: float | None
    wall_p99_s: float | None


@dataclass
class Report:
    """What `build_report` made: the HTML file, PNG files, figures and numbers."""

    html_path: Path
    summary: Summary
    figures: dict[str, Figure]
    png_paths: dict[str, Path] = field(default_factory=dict)
    confusion: tuple[list[str], np.ndarray] | None = None
    capture: CaptureRead | None = None


def confusion_matrix(outcomes: Sequence[RunOutcome]) -> tuple[list[str], np.ndarray]:
    """`(labels, counts[true, predicted])` over the runs that got a prediction."""
    classified = [o for o in outcomes if o.predicted_label is not None]
    labels = sorted(
        {o.true_label for o in classified} | {str(o.predicted_label) for o in classified}
    )
    index = {label: i for i, label in enumerate(labels)}
    counts = np.zeros((len(labels), len(labels)), dtype=int)
    for o in classified:
        counts[index[o.true_label], index[str(o.predicted_label)]] += 1
    return labels, counts


def report_summary(
    endpoint: str, threshold: float, capture: CaptureRead, outcomes: Sequence[RunOutcome]
) -> Summary:
    """The report's summary numbers."""
    confidences = [r.confidence for r in capture.records if r.confidence is not None]
    below = sum(c < threshold for c in confidences)
    classified = [o for o in outcomes if o.correct is not None]
    passed_classified = [o for o in classified if o.passed]
    filtered = sum(o.error == LOW_CONFIDENCE_ERROR for o in outcomes)
    latencies = [o.latency_s for o in outcomes if o.latency_s is not None]
    walls = [o.wall_s for o in outcomes if o.wall_s is not None]
    times = [r.inference_time for r in capture.records]
    return Summary(
        endpoint=endpoint,
        threshold=threshold,
        capture_records=len(capture.records),
        capture_files=capture.files,
        first_inference=min(times).isoformat() if times else None,
        last_inference=max(times).isoformat() if times else None,
        captured_below_threshold=below,
        captured_below_threshold_share=below / len(confidences) if confidences else None,
        runs=len(outcomes),
        classified_runs=len(classified),
        accuracy=sum(bool(o.correct) for o in classified) / len(classified) if classified else None,
        passed_accuracy=(
            sum(bool(o.correct) for o in passed_classified) / len(passed_classified)
            if passed_classified
            else None
        ),
        passed=sum(o.passed for o in outcomes),
        filtered_out=filtered,
        filtered_out_share=filtered / len(outcomes) if outcomes else None,
        unexpected=sum(not o.expected for o in outcomes),
        latency_p50_s=percentile(latencies, 50),
        latency_p99_s=percentile(latencies, 99),
        wall_p50_s=percentile(walls, 50),
        wall_p99_s=percentile(walls, 99),
    )


# --- the HTML report --------------------------------------------------------------------------


def data_uri(png: bytes) -> str:
    """A PNG as a `data:` URI, so the report needs no other file."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def summary_rows(summary: Summary) -> list[tuple[str, str]]:
    """The summary as (name, value) rows for the report and the terminal."""

    def share(value: float | None) -> str:
        return f"{value:.1%}" if value is not None else "-"

    def seconds(value: float | None) -> str:
        return f"{value:.3f} s" if value is not None else "-"

    return [
        ("endpoint", summary.endpoint),
        ("capture records read", str(summary.capture_records)),
        ("capture files read", str(summary.capture_files)),
        ("first / last inference", f"{summary.first_inference} / {summary.last_inference}"),
        ("filter threshold", f"{summary.threshold:g}"),
        (
            "captured inferences below threshold",
            f"{summary.captured_below_threshold} ({share(summary.captured_below_threshold_share)})",
        ),
        ("workflow runs", str(summary.runs)),
        ("passed the filter", str(summary.passed)),
        (
            "filtered out (low confidence)",
            f"{summary.filtered_out} ({share(summary.filtered_out_share)})",
        ),
        ("other failures", str(summary.unexpected)),
        (
            "accuracy on the runs",
            f"{share(summary.accuracy)} of {summary.classified_runs} classified",
        ),
        ("accuracy of what passed the filter", share(summary.passed_accuracy)),
        (
            "latency p50 / p99",
            f"{seconds(summary.latency_p50_s)} / {seconds(summary.latency_p99_s)}",
        ),
        ("client wall p50 / p99", f"{seconds(summary.wall_p50_s)} / {seconds(summary.wall_p99_s)}"),
    ]


FIGURE_TITLES = {
    "confidence_over_time": "Confidence over time",
    "predicted_class_over_time": "Predicted class over time",
    "pass_fail": "Pass / fail",
    "latency": "Latency",
    "confusion_matrix": "Confusion matrix",
}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
"""


def render_html(
    summary: Summary,
    pictures: dict[str, bytes],
    outcomes: Sequence[RunOutcome],
    graph_png: bytes | None,
) -> str:
    """The report: summary, pictures as data URIs, state machine graph, runs; no external link."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Scones Unlimited monitoring: {e(summary.endpoint)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Monitoring report: endpoint {e(summary.endpoint)}</h1>",
        f"<p>Generated {e(datetime.now(UTC).isoformat(timespec='seconds'))}.</p>",
        "<h2>Summary</h2><table>",
        *(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in summary_rows(summary)),
        "</table>",
    ]
    for name, png in pictures.items():
        title = FIGURE_TITLES.get(name, name)
        parts.append(f"<h2>{e(title)}</h2>")
        parts.append(f'<img alt="{e(title)}" src="{data_uri(png)}">')
    if graph_png is not None:
        parts.append("<h2>State machine</h2>")
        parts.append(f'<img alt="Step Functions graph" src="{data_uri(graph_png)}">')
    if outcomes:
        header = ("#", "key", "true", "predicted", "confidence", "status", "error", "latency s")
        parts.append("<h2>Runs</h2><table><tr>")
        parts.extend(f"<th>{e(h)}</th>" for h in header)
        parts.append("</tr>")
        for o in outcomes:
            cells = (
                str(o.case),
                o.s3_key,
                o.true_label,
                o.predicted_label or "-",
                f"{o.confidence:.4f}" if o.confidence is not None else "-",
                o.status,
                o.error or "",
                f"{o.latency_s:.3f}" if o.latency_s is not None else "-",
            )
            parts.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def build_report(
    bucket: str,
    capture_prefix: str,
    endpoint: str,
    threshold: float,
    out_dir: Path,
    *,
    outcomes_path: Path | None = None,
    graph_path: Path | None = GRAPH_PNG,
    variant: str | None = None,
    expect_records: int = 0,
    wait_s: float = 0.0,
) -> Report:
    """Read the endpoint's capture and the runs' outcomes; write PNGs and `report.html`.

    With `expect_records`, waits up to `wait_s` for that many capture records to land.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"the threshold must be between 0 and 1, got {threshold}")
    capture = wait_for_capture(bucket, capture_prefix, endpoint, expect_records, wait_s, variant)
    outcomes = load_outcomes(outcomes_path) if outcomes_path else []
    return write_report(endpoint, threshold, capture, outcomes, out_dir, graph_path)


def write_report(
    endpoint: str,
    threshold: float,
    capture: CaptureRead,
    outcomes: Sequence[RunOutcome],
    out_dir: Path,
    graph_path: Path | None = GRAPH_PNG,
) -> Report:
    """Plot capture records read already with the runs' outcomes; write PNGs and `report.html`."""
    summary = report_summary(endpoint, threshold, capture, outcomes)
    figures = {
        "confidence_over_time": plot_confidence_over_time(capture.records, threshold),
        "predicted_class_over_time": plot_predicted_class_over_time(capture.records),
        "pass_fail": plot_pass_fail(capture.records, outcomes, threshold),
    }
    confusion = None
    if outcomes:
        figures["latency"] = plot_latency(outcomes)
        confusion = confusion_matrix(outcomes)
        figures["confusion_matrix"] = plot_confusion(*confusion)
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = {name: png_bytes(figure) for name, figure in figures.items()}
    png_paths = {}
    for name, png in pictures.items():
        png_paths[name] = out_dir / f"{name}.png"
        png_paths[name].write_bytes(png)
    graph_png = graph_path.read_bytes() if graph_path and graph_path.is_file() else None
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(summary, pictures, outcomes, graph_png), encoding="utf-8")
    (out_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return Report(html_path, summary, figures, png_paths, confusion, capture)


def main(argv: list[str] | None = None) -> int:
    """CLI: build the report and print where it is and its summary."""
    parser = argparse.ArgumentParser(
        prog="python -m scones.monitoring", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--capture-prefix", required=True, help="DestinationS3Uri's key prefix")
    parser.add_argument("--endpoint", required=True, help="endpoint name")
    parser.add_argument("--variant", default=None, help="one variant only (default: all)")
    parser.add_argument(
        "--threshold", type=float, required=True, help="the filter Lambda's THRESHOLD"
    )
    parser.add_argument(
        "--outcomes", type=Path, dest="outcomes_path", help="outcomes.json of the runs"
    )
    parser.add_argument(
        "--graph", type=Path, dest="graph_path", default=GRAPH_PNG, help="state machine picture"
    )
    parser.add_argument(
        "--out", type=Path, dest="out_dir", default=Path("report"), help="output folder"
    )
    parser.add_argument(
        "--expect-records", type=int, default=0, help="wait for this many capture records"
    )
    parser.add_argument(
        "--wait", type=float, dest="wait_s", default=0.0, help="seconds to wait for them"
    )
    args = parser.parse_args(argv)
    report = build_report(**vars(args))  # each option's dest is a parameter's name
    width = max(len(name) for name, _ in summary_rows(report.summary))
    for name, value in summary_rows(report.summary):
        print(f"{name.ljust(width)}  {value}")
    print(f"report: {report.html_path.resolve()}")
    if report.summary.capture_records < args.expect_records:
        print(
            f"error: {report.summary.capture_records} capture records read, "
            f"{args.expect_records} expected",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
