"""The monitoring report (scones.monitoring.report), from SageMaker-format capture files in S3.

The capture spans several hours and more than 1000 objects (so listing needs more than one page);
every record must be read, decoded by its encoding and placed on a real time axis.
"""

from __future__ import annotations

import base64
import io
import json
import random
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import boto3
import numpy as np
import pytest
from botocore.config import Config
from matplotlib import dates as mdates
from PIL import Image

from scones import monitoring
from scones.testcases import LOW_CONFIDENCE_ERROR, RunOutcome, load_outcomes, write_outcomes
from tests.conftest import LocalAws

ENDPOINT = "scones-monitoring-test"
VARIANT = "AllTraffic"
CAPTURE_PREFIX = "datacapture/run-1"
THRESHOLD = 0.87  # not the default, so a plot that ignored the argument would show
FILES = 1010
LINES_PER_BIG_FILE = 5  # every 10th file holds several records, the others one
START = datetime(2026, 3, 4, 19, 5, 24, tzinfo=UTC)
CLASSES = ("bicycle", "motorcycle")


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (seed % 256, 40, 200)).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Written:
    """What the test put into S3, to compare against what the report read."""

    event_id: str
    time: datetime
    image: bytes
    probabilities: list[float]
    label: str


def capture_line(index: int, when: datetime, rng: random.Random) -> tuple[str, Written]:
    """One record exactly as SageMaker writes it (JSON output, or BASE64 when not listed)."""
    confidence = round(rng.uniform(0.5, 1.0), 4)
    winner = rng.randrange(2)
    probabilities = [confidence, round(1 - confidence, 4)][:: 1 if winner == 0 else -1]
    answer = json.dumps({"probabilities": probabilities, "label": CLASSES[winner]})
    image = png(index)
    # Every third output as SageMaker stores a content type missing from JsonContentTypes.
    output = (
        {"data": base64.b64encode(answer.encode()).decode(), "encoding": "BASE64"}
        if index % 3 == 0
        else {"data": answer, "encoding": "JSON"}
    )
    event_id = str(uuid.uuid4())
    record = {
        "captureData": {
            "endpointInput": {
                "observedContentType": "image/png",
                "mode": "INPUT",
                "data": base64.b64encode(image).decode(),
                "encoding": "BASE64",
            },
            "endpointOutput": {
                "observedContentType": "application/json",
                "mode": "OUTPUT",
                **output,
            },
        },
        "eventMetadata": {
            "eventId": event_id,
            "inferenceId": f"inference-{index}",
            "inferenceTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "eventVersion": "0",
    }
    return json.dumps(record, separators=(",", ":")), Written(
        event_id, when, image, probabilities, CLASSES[winner]
    )


def capture_files(prefix: str) -> tuple[dict[str, bytes], list[Written]]:
    """FILES capture files spread over several hours, keyed as SageMaker keys them."""
    rng = random.Random(3)
    files: dict[str, bytes] = {}
    written: list[Written] = []
    when = START
    index = 0
    for number in range(FILES):
        lines = []
        first = when
        for _ in range(LINES_PER_BIG_FILE if number % 10 == 0 else 1):
            line, record = capture_line(index, when, rng)
            lines.append(line)
            written.append(record)
            index += 1
            when += timedelta(seconds=3)
        name = f"{first:%M-%S}-{first.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl"
        key = f"{prefix}/{ENDPOINT}/{VARIANT}/{first:%Y/%m/%d/%H}/{name}"
        files[key] = ("\n".join(lines) + "\n").encode()
        when += timedelta(seconds=7)
    return files, written


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
            true_label_index=CLASSES.index(true),
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
    keys: list[str]


@pytest.fixture(scope="module")
def built(local_aws: LocalAws, tmp_path_factory: pytest.TempPathFactory) -> Built:
    bucket = f"scones-capture-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", config=Config(max_pool_connections=20))
    s3.create_bucket(Bucket=bucket)
    files, written = capture_files(CAPTURE_PREFIX)
    # Neighbours that must not be read: another endpoint whose name extends ours, and a
    # non-capture object.
    other, _ = capture_line(0, START, random.Random(0))
    files[f"{CAPTURE_PREFIX}/{ENDPOINT}-2/{VARIANT}/2026/03/04/19/00-00-000-x.jsonl"] = (
        other.encode()
    )
    files[f"{CAPTURE_PREFIX}/{ENDPOINT}/{VARIANT}/README.txt"] = b"not capture"
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(
            pool.map(lambda kv: s3.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), files.items())
        )
    out = tmp_path_factory.mktemp("report")
    outcomes = outcomes_of_runs()
    _, outcomes_path = write_outcomes(outcomes, out / "runs")
    report = monitoring.build_report(
        bucket, CAPTURE_PREFIX, ENDPOINT, THRESHOLD, out / "report", outcomes_path=outcomes_path
    )
    return Built(bucket, written, outcomes, report, sorted(files))


def test_the_capture_needs_more_than_one_listing_page(built: Built) -> None:
    page = boto3.client("s3").list_objects_v2(
        Bucket=built.bucket, Prefix=f"{CAPTURE_PREFIX}/{ENDPOINT}/"
    )
    assert page["IsTruncated"] and page["KeyCount"] == 1000
    hours = {k.split("/")[-2] for k in built.keys if k.endswith(".jsonl")}
    assert len(hours) >= 3, "the capture spans several hour folders"


def test_every_record_of_every_file_is_read_and_decoded(built: Built) -> None:
    capture = built.report.capture
    assert capture is not None and capture.files == FILES
    assert len(capture.records) == len(built.written) > FILES
    by_id = {w.event_id: w for w in built.written}
    assert {r.event_id for r in capture.records} == set(by_id)
    for record in capture.records:
        expected = by_id[record.event_id]
        assert record.inference_time == expected.time
        assert record.inference_time.tzinfo is not None
        assert record.input_data == expected.image
        assert record.input_content_type == "image/png"
        assert record.probabilities == expected.probabilities
        assert record.label == expected.label
        assert record.variant == VARIANT
    times = [r.inference_time for r in capture.records]
    assert times == sorted(times)
    assert built.report.summary.capture_records == len(built.written)
    assert built.report.summary.capture_files == FILES
    assert built.report.summary.first_inference == START.isoformat()


def test_one_variant_can_be_read_alone(built: Built) -> None:
    assert (
        len(monitoring.read_capture(built.bucket, CAPTURE_PREFIX, ENDPOINT, "Other").records) == 0
    )


def test_confidence_plot_has_a_time_axis_and_the_threshold_passed_in(built: Built) -> None:
    figure = built.report.figures["confidence_over_time"]
    assert monitoring.threshold_line_of(figure) == THRESHOLD
    ax = figure.axes[0]
    plotted = np.concatenate([c.get_offsets() for c in ax.collections])
    assert len(plotted) == len(built.written)
    # x values are matplotlib dates: the first point is the first inference time.
    assert min(plotted[:, 0]) == pytest.approx(mdates.date2num(START))
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
        when = START + timedelta(hours=hour)
        lines = [capture_line(hour * 10 + i, when + timedelta(seconds=i), rng)[0] for i in range(3)]
        key = f"{CAPTURE_PREFIX}/{endpoint}/{VARIANT}/{when:%Y/%m/%d/%H}/{uuid.uuid4()}.jsonl"
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


def test_waiting_for_capture_files_that_land_later(built: Built) -> None:
    endpoint = "scones-late-capture"
    rng = random.Random(9)
    s3 = boto3.client("s3")

    def land(hour: int) -> None:
        when = START + timedelta(hours=hour)
        lines = [capture_line(i, when + timedelta(seconds=i), rng)[0] for i in range(2)]
        key = f"{CAPTURE_PREFIX}/{endpoint}/{VARIANT}/{when:%Y/%m/%d/%H}/{uuid.uuid4()}.jsonl"
        s3.put_object(Bucket=built.bucket, Key=key, Body="\n".join(lines).encode())

    land(0)
    later = threading.Timer(0.3, land, args=(1,))
    later.start()
    try:
        capture = monitoring.wait_for_capture(built.bucket, CAPTURE_PREFIX, endpoint, 4, 30.0)
    finally:
        later.join()
    assert (len(capture.records), capture.files) == (4, 2)
    started = time.monotonic()
    short = monitoring.wait_for_capture(built.bucket, CAPTURE_PREFIX, endpoint, 5, 0.3)
    assert len(short.records) == 4 and time.monotonic() - started < 5
