"""The monitoring report (scones.monitoring.report and .plots, the CLI), from SageMaker-format
capture files in S3.

The capture is the session's (`sagemaker_capture` in tests/conftest.py): several hours, more than
1000 objects; its records must be placed on a real time axis and counted. How each record is
read and decoded is tested with the reader (test_monitoring_capture.py).
"""

from __future__ import annotations

import base64
import random
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import boto3
import numpy as np
import pytest
from matplotlib import dates as mdates

from scones import monitoring
from scones.testcases import LOW_CONFIDENCE_ERROR, RunOutcome, load_outcomes, write_outcomes
from scones.testing_sagemaker import (
    CAPTURE_CLASSES,
    CAPTURE_ENDPOINT,
    CAPTURE_PREFIX,
    CAPTURE_START,
    CAPTURE_VARIANT,
    Written,
    capture_line,
)
from tests.conftest import CAPTURE_FILES, CaptureInS3

THRESHOLD = 0.87  # not the default, so a plot that ignored the argument would show


def outcomes_of_runs() -> list[RunOutcome]:
    """Run outcomes with a known confusion matrix: passed, filtered out and a broken run."""
    rows = [
        # (true, predicted, status, error, latency)
        *[("bicycle", "bicycle", "SUCCEEDED", None, 1.0 + i / 10) for i in range(6)],
        *[("motorcycle", "motorcycle", "SUCCEEDED", None, 1.2) for _ in range(4)],
        ("bicycle", "motorcycle", "FAILED", LOW_CONFIDENCE_ERROR, 1.5),
        ("motorcycle", "bicycle", "FAILED", LOW_CONFIDENCE_ERROR, 1.6),
        ("motorcycle", "bicycle", "SUCCEEDED", None, 2.0),
        ("bicycle", None, "FAILED", "ImageNotFound", 0.4),
    ]
    return [
        RunOutcome(
            case=i,
            execution_name=f"tc-run-{i:04d}",
            execution_arn=f"arn:aws:states:us-east-1:123456789012:execution:m:tc-run-{i:04d}",
            s3_bucket="b",
            s3_key=f"cifar100/test/{true}/{i:05d}.png",
            true_label=true,
            true_label_index=CAPTURE_CLASSES.index(true),
            status=status,
            error=error,
            predicted_label=predicted,
            confidence=None if predicted is None else (0.97 if status == "SUCCEEDED" else 0.6),
            passed=status == "SUCCEEDED",
            correct=None if predicted is None else predicted == true,
            latency_s=latency,
            wall_s=latency + 0.05,
        )
        for i, (true, predicted, status, error, latency) in enumerate(rows)
    ]


@dataclass
class Built:
    bucket: str
    written: list[Written]
    outcomes: list[RunOutcome]
    report: monitoring.Report


@pytest.fixture(scope="module")
def built(sagemaker_capture: CaptureInS3, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The report over the session's capture (tests/conftest.py) and runs of known outcomes."""
    out = tmp_path_factory.mktemp("report")
    outcomes = outcomes_of_runs()
    _, outcomes_path = write_outcomes(outcomes, out / "runs")
    report = monitoring.build_report(
        sagemaker_capture.bucket,
        CAPTURE_PREFIX,
        CAPTURE_ENDPOINT,
        THRESHOLD,
        out / "report",
        outcomes_path=outcomes_path,
    )
    return Built(sagemaker_capture.bucket, sagemaker_capture.written, outcomes, report)


def test_the_summary_counts_every_capture_record(built: Built) -> None:
    assert built.report.summary.capture_records == len(built.written)
    assert built.report.summary.capture_files == CAPTURE_FILES
    assert built.report.summary.first_inference == CAPTURE_START.isoformat()


def test_confidence_plot_has_a_time_axis_and_the_threshold_passed_in(built: Built) -> None:
    figure = built.report.figures["confidence_over_time"]
    assert monitoring.threshold_line_of(figure) == THRESHOLD
    ax = figure.axes[0]
    plotted = np.concatenate([c.get_offsets() for c in ax.collections])
    assert len(plotted) == len(built.written)
    # x values are matplotlib dates: the first point is the first inference time.
    assert min(plotted[:, 0]) == pytest.approx(mdates.date2num(CAPTURE_START))
    expected_below = sum(max(w.probabilities) < THRESHOLD for w in built.written)
    assert built.report.summary.captured_below_threshold == expected_below
    red = next(c for c in ax.collections if c.get_label() == "filtered")
    assert len(red.get_offsets()) == expected_below
    other = monitoring.plot_confidence_over_time([], 0.5)
    assert monitoring.threshold_line_of(other) == 0.5


def test_confusion_matrix_counts_add_up(built: Built) -> None:
    assert built.report.confusion is not None
    labels, counts = built.report.confusion
    assert labels == ["bicycle", "motorcycle"]
    classified = [o for o in built.outcomes if o.predicted_label is not None]
    assert counts.sum() == len(classified) == 13
    assert np.trace(counts) == sum(bool(o.correct) for o in classified) == 10
    assert counts.tolist() == [[6, 1], [2, 4]]
    summary = built.report.summary
    assert summary.accuracy == pytest.approx(10 / 13)
    assert summary.passed_accuracy == pytest.approx(10 / 11)
    assert (summary.runs, summary.passed, summary.filtered_out, summary.unexpected) == (
        14,
        11,
        2,
        1,
    )
    assert summary.filtered_out_share == pytest.approx(2 / 14)
    latencies = [o.latency_s for o in built.outcomes if o.latency_s is not None]
    assert summary.latency_p50_s == pytest.approx(float(np.percentile(latencies, 50)))
    assert summary.latency_p99_s == pytest.approx(float(np.percentile(latencies, 99)))


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.attributes: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.attributes += [(tag, name, value or "") for name, value in attrs]


def test_report_is_one_self_contained_file_with_the_numbers(built: Built) -> None:
    text = built.report.html_path.read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(text)
    sources = [v for tag, name, v in parser.attributes if name == "src"]
    assert not [a for a in parser.attributes if a[1] in ("href", "srcset", "action", "data")]
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "url(" not in text and "@import" not in text
    for source in sources:
        assert base64.b64decode(source.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    graph = monitoring.GRAPH_PNG
    assert len(sources) == len(built.report.figures) + graph.is_file() == 5 + graph.is_file()
    if graph.is_file():
        assert monitoring.data_uri(graph.read_bytes()) in sources
    summary = built.report.summary
    for number in (
        str(summary.capture_records),
        f"{THRESHOLD:g}",
        "76.9%",  # accuracy 10/13
        "14.3%",  # filtered out 2/14
        f"{summary.latency_p50_s:.3f} s",
        f"{summary.latency_p99_s:.3f} s",
    ):
        assert number in text, number
    for name, path in built.report.png_paths.items():
        assert path.read_bytes().startswith(b"\x89PNG"), name


def test_outcomes_round_trip_through_the_json_file(built: Built, tmp_path: Path) -> None:
    _, path = write_outcomes(built.outcomes, tmp_path)
    assert load_outcomes(path) == built.outcomes


def test_cli_prints_the_report_path_and_summary(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = "scones-cli-test"
    s3 = boto3.client("s3")
    rng = random.Random(5)
    for hour in range(3):
        when = CAPTURE_START + timedelta(hours=hour)
        lines = [capture_line(hour * 10 + i, when + timedelta(seconds=i), rng)[0] for i in range(3)]
        key = (
            f"{CAPTURE_PREFIX}/{endpoint}/{CAPTURE_VARIANT}/{when:%Y/%m/%d/%H}/{uuid.uuid4()}.jsonl"
        )
        s3.put_object(Bucket=built.bucket, Key=key, Body="\n".join(lines).encode())
    _, outcomes_path = write_outcomes(built.outcomes, tmp_path / "runs")
    arguments = ["--bucket", built.bucket, "--capture-prefix", CAPTURE_PREFIX]
    arguments += ["--endpoint", endpoint, "--threshold", "0.5", "--out", str(tmp_path / "r")]
    assert (
        monitoring.main([*arguments, "--outcomes", str(outcomes_path), "--expect-records", "9"])
        == 0
    )
    printed = capsys.readouterr().out
    assert f"report: {(tmp_path / 'r' / 'report.html').resolve()}" in printed
    assert re.search(r"capture records read\s+9\n", printed)
    assert re.search(r"accuracy on the runs\s+76.9% of 13 classified", printed)
    assert (tmp_path / "r" / "report.html").is_file()
    assert monitoring.main([*arguments, "--expect-records", "10", "--wait", "0.2"]) == 1
    assert "9 capture records read, 10 expected" in capsys.readouterr().err
