"""Monitoring report: every data-capture record of an endpoint, plotted, in one HTML file.

`read_capture` lists `s3://<bucket>/<capture-prefix>/<EndpointName>/<Variant>/yyyy/mm/dd/hh/`
with a paginator and reads every line of every `.jsonl` file, decoding input and output by their
`encoding` (BASE64, JSON or CSV) and `eventMetadata.inferenceTime` as a UTC datetime.
`build_report` plots confidence over time against the filter's threshold, predicted class over
time, pass/fail counts, latencies and the confusion matrix of the runs (`outcomes.json` from
`scripts.testcases`), and writes `report.html` with every picture embedded as a data URI.

    python -m scripts.monitoring --bucket B --capture-prefix P --endpoint NAME \
        --threshold 0.93 [--outcomes DIR/outcomes.json] [--out DIR] \
        [--expect-records N --wait SECONDS]

Exit status 1 when fewer than `--expect-records` records were read by the end of `--wait`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import csv
import html
import io
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import matplotlib
import numpy as np
from botocore.config import Config
from matplotlib import dates as mdates
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from scripts.testcases import LOW_CONFIDENCE_ERROR, Outcome, load_outcomes

matplotlib.use("Agg")

REPO_ROOT = Path(__file__).resolve().parent.parent
GRAPH_PNG = REPO_ROOT / "docs" / "stepfunctions_graph.png"
THRESHOLD_GID = "threshold"
READ_WORKERS = 16
DPI = 100
MAX_FIGURE_INCHES = 14.0
CAPTURE_POLL_FIRST_S = 0.5
CAPTURE_POLL_MAX_S = 15.0


class CaptureFormatError(ValueError):
    """A capture line is not a SageMaker data-capture record."""


@dataclass(frozen=True)
class CaptureRecord:
    """One captured invocation, decoded."""

    key: str
    line: int
    variant: str
    event_id: str
    inference_id: str | None
    inference_time: datetime
    input_content_type: str | None
    input_data: bytes | None
    output_content_type: str | None
    output: Any
    probabilities: list[float] | None
    label: str | None

    @property
    def confidence(self) -> float | None:
        """The highest probability the endpoint returned."""
        return max(self.probabilities) if self.probabilities else None


@dataclass
class CaptureRead:
    """Every record read under an endpoint's capture prefix, in time order."""

    records: list[CaptureRecord]
    files: int
    prefix: str


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


# --- reading the capture ----------------------------------------------------------------------


def endpoint_capture_prefix(capture_prefix: str, endpoint: str, variant: str | None = None) -> str:
    """The S3 prefix holding an endpoint's (or one variant's) capture files."""
    parts = [p for p in (capture_prefix.strip("/"), endpoint, variant) if p]
    return "/".join(parts) + "/"


def decode_payload(entry: dict[str, Any]) -> bytes:
    """The bytes of an `endpointInput`/`endpointOutput` entry, by its `encoding`."""
    encoding = str(entry.get("encoding", "")).upper()
    data = entry.get("data", "")
    if not isinstance(data, str):
        raise CaptureFormatError(f"capture data must be a string, got {type(data).__name__}")
    if encoding == "BASE64":
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as error:
            raise CaptureFormatError(f"capture data is not valid base64: {error}") from error
    if encoding in ("JSON", "CSV"):
        return data.encode("utf-8")
    raise CaptureFormatError(f"unknown capture encoding {entry.get('encoding')!r}")


def parse_output(entry: dict[str, Any]) -> Any:
    """An output entry's content: JSON as a value, CSV as rows of numbers, else bytes."""
    raw = decode_payload(entry)
    encoding = str(entry.get("encoding", "")).upper()
    content_type = str(entry.get("observedContentType", "")).lower()
    if encoding == "JSON" or "json" in content_type:
        return json.loads(raw)
    if encoding == "CSV" or "csv" in content_type:
        rows = csv.reader(io.StringIO(raw.decode("utf-8")))
        return [[float(v) for v in row] for row in rows if row]
    return raw


def prediction_of(output: Any) -> tuple[list[float] | None, str | None]:
    """`(probabilities, label)` from the endpoint's answer (as the classify Lambda reads it)."""
    label: Any = None
    if isinstance(output, dict):
        label = output.get("label")
        output = output.get("probabilities")
    if isinstance(output, list) and len(output) == 1 and isinstance(output[0], list):
        output = output[0]
    is_numbers = isinstance(output, list) and all(
        isinstance(p, (int, float)) and not isinstance(p, bool) for p in output
    )
    if not is_numbers or not output:
        return None, None if label is None else str(label)
    probabilities = [float(p) for p in output]
    if label is None:
        label = int(np.argmax(probabilities))
    return probabilities, str(label)


def parse_time(value: str) -> datetime:
    """An ISO-8601 `inferenceTime` as an aware UTC datetime."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_record(line: str, key: str, line_number: int, variant: str) -> CaptureRecord:
    """One capture line as a decoded record."""
    where = f"{key}:{line_number}"
    try:
        record = json.loads(line)
        capture = record["captureData"]
        metadata = record["eventMetadata"]
        inference_time = parse_time(metadata["inferenceTime"])
        endpoint_input = capture.get("endpointInput")
        endpoint_output = capture.get("endpointOutput")
        input_data = decode_payload(endpoint_input) if endpoint_input else None
        output = parse_output(endpoint_output) if endpoint_output else None
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CaptureFormatError(f"{where}: not a data-capture record ({error!r})") from error
    probabilities, label = prediction_of(output)
    return CaptureRecord(
        key=key,
        line=line_number,
        variant=variant,
        event_id=str(metadata.get("eventId", "")),
        inference_id=metadata.get("inferenceId"),
        inference_time=inference_time,
        input_content_type=endpoint_input.get("observedContentType") if endpoint_input else None,
        input_data=input_data,
        output_content_type=endpoint_output.get("observedContentType") if endpoint_output else None,
        output=output,
        probabilities=probabilities,
        label=label,
    )


def read_capture_file(s3: Any, bucket: str, key: str, endpoint_prefix: str) -> list[CaptureRecord]:
    """Every record (every non-empty line) of one capture file."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
    variant = key[len(endpoint_prefix) :].split("/", 1)[0]
    return [
        parse_record(line, key, number, variant)
        for number, line in enumerate(body.splitlines(), start=1)
        if line.strip()
    ]


def read_capture(
    bucket: str,
    capture_prefix: str,
    endpoint: str,
    variant: str | None = None,
    s3: Any = None,
    cache: dict[str, list[CaptureRecord]] | None = None,
) -> CaptureRead:
    """Every capture record of the endpoint (all variants unless one is named), time-ordered.

    `cache` (key -> records) skips files read before: capture files are written once, never
    appended to.
    """
    s3 = s3 or boto3.client("s3", config=Config(max_pool_connections=READ_WORKERS + 4))
    cache = {} if cache is None else cache
    endpoint_prefix = endpoint_capture_prefix(capture_prefix, endpoint)
    prefix = endpoint_capture_prefix(capture_prefix, endpoint, variant)
    keys = [
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
        if item["Key"].endswith(".jsonl")
    ]
    unread = [k for k in keys if k not in cache]
    with ThreadPoolExecutor(max_workers=READ_WORKERS, thread_name_prefix="capture") as pool:
        read = pool.map(lambda k: read_capture_file(s3, bucket, k, endpoint_prefix), unread)
        cache.update(zip(unread, read, strict=True))
    records = [r for key in keys for r in cache[key]]
    records.sort(key=lambda r: (r.inference_time, r.key, r.line))
    return CaptureRead(records, len(keys), prefix)


def wait_for_capture(
    bucket: str,
    capture_prefix: str,
    endpoint: str,
    at_least: int,
    timeout_s: float,
    variant: str | None = None,
) -> CaptureRead:
    """Read the capture again (backing off) until it holds `at_least` records or time is up.

    Capture files land a little after the invocations (seconds locally, minutes on AWS); what
    was read by the deadline is returned either way, so the caller compares the count.
    """
    cache: dict[str, list[CaptureRecord]] = {}
    deadline = time.monotonic() + timeout_s
    delay = CAPTURE_POLL_FIRST_S
    while True:
        capture = read_capture(bucket, capture_prefix, endpoint, variant, cache=cache)
        remaining = deadline - time.monotonic()
        if len(capture.records) >= at_least or remaining <= 0:
            return capture
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, CAPTURE_POLL_MAX_S)


# --- numbers ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (numpy's linear interpolation), or None without values."""
    return float(np.percentile(values, q)) if len(values) else None


def confusion_matrix(outcomes: Sequence[Outcome]) -> tuple[list[str], np.ndarray]:
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


def summarize(
    endpoint: str, threshold: float, capture: CaptureRead, outcomes: Sequence[Outcome]
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


# --- plots ------------------------------------------------------------------------------------


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


def outcome_category(outcome: Outcome) -> str:
    """passed, filtered out, or the error/status name of another ending."""
    if outcome.passed:
        return "passed"
    if outcome.error == LOW_CONFIDENCE_ERROR:
        return "filtered out"
    return outcome.error or outcome.status


def plot_pass_fail(
    records: Sequence[CaptureRecord], outcomes: Sequence[Outcome], threshold: float
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


def plot_latency(outcomes: Sequence[Outcome]) -> Figure:
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
    outcomes: Sequence[Outcome],
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
    outcomes: Sequence[Outcome],
    out_dir: Path,
    graph_path: Path | None = GRAPH_PNG,
) -> Report:
    """Plot capture records read already with the runs' outcomes; write PNGs and `report.html`."""
    summary = summarize(endpoint, threshold, capture, outcomes)
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
        prog="python -m scripts.monitoring", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--capture-prefix", required=True, help="DestinationS3Uri's key prefix")
    parser.add_argument("--endpoint", required=True, help="endpoint name")
    parser.add_argument("--variant", default=None, help="one variant only (default: all)")
    parser.add_argument(
        "--threshold", type=float, required=True, help="the filter Lambda's THRESHOLD"
    )
    parser.add_argument("--outcomes", type=Path, default=None, help="outcomes.json of the runs")
    parser.add_argument("--graph", type=Path, default=GRAPH_PNG, help="state machine picture")
    parser.add_argument("--out", type=Path, default=Path("report"), help="output folder")
    parser.add_argument(
        "--expect-records", type=int, default=0, help="wait for this many capture records"
    )
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for them")
    args = parser.parse_args(argv)
    report = build_report(
        args.bucket,
        args.capture_prefix,
        args.endpoint,
        args.threshold,
        args.out,
        outcomes_path=args.outcomes,
        graph_path=args.graph,
        variant=args.variant,
        expect_records=args.expect_records,
        wait_s=args.wait,
    )
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
