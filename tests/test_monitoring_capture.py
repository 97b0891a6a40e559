"""The capture reader (scones.monitoring.capture): decoding (encodings, bad lines, times), and
whole captures read from S3 (pagination, variants, late files).

The capture in S3 is the session's (`sagemaker_capture` in tests/conftest.py): more than 1000
objects over several hours, read again by the report's tests (test_monitoring.py).
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from scones.monitoring import capture
from scones.testing_sagemaker import (
    CAPTURE_ENDPOINT,
    CAPTURE_PREFIX,
    CAPTURE_START,
    CAPTURE_VARIANT,
    capture_line,
)
from tests.conftest import CAPTURE_FILES, CaptureInS3

VARIANT = CAPTURE_VARIANT  # the decoding tests name it too


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"data": '{"probabilities": [0.1, 0.9]}', "encoding": "JSON"}, ([0.1, 0.9], "1")),
        (
            {"data": "0.2,0.8", "encoding": "CSV", "observedContentType": "text/csv"},
            ([0.2, 0.8], "1"),
        ),
        (
            {
                "data": base64.b64encode(b"[[0.7, 0.3]]").decode(),
                "encoding": "BASE64",
                "observedContentType": "application/json",
            },
            ([0.7, 0.3], "0"),
        ),
    ],
)
def test_outputs_are_decoded_by_their_encoding(
    entry: dict[str, Any], expected: tuple[list[float], str]
) -> None:
    output = capture.parse_output({"mode": "OUTPUT", **entry})
    assert capture.probabilities_and_label(output) == expected


def test_a_line_that_is_not_a_capture_record_names_its_file_and_line() -> None:
    with pytest.raises(capture.CaptureFormatError, match=r"k\.jsonl:7"):
        capture.parse_record('{"captureData": {}}', "k.jsonl", 7, VARIANT)
    bad_base64 = {
        "captureData": {"endpointInput": {"data": "%%", "encoding": "BASE64"}},
        "eventMetadata": {"eventId": "e", "inferenceTime": "2026-03-04T19:05:24Z"},
    }
    with pytest.raises(capture.CaptureFormatError, match="base64"):
        capture.parse_record(json.dumps(bad_base64), "k.jsonl", 1, VARIANT)


def test_times_with_fractions_or_offsets_are_utc() -> None:
    assert capture.parse_time("2026-03-04T19:05:24.123Z") == datetime(
        2026, 3, 4, 19, 5, 24, 123000, tzinfo=UTC
    )
    assert capture.parse_time("2026-03-04T20:05:24+01:00") == datetime(
        2026, 3, 4, 19, 5, 24, tzinfo=UTC
    )


# --- whole captures in S3 ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def read(sagemaker_capture: CaptureInS3) -> capture.CaptureRead:
    """The session's capture, read once for the module."""
    return capture.read_capture(sagemaker_capture.bucket, CAPTURE_PREFIX, CAPTURE_ENDPOINT)


def test_the_capture_needs_more_than_one_listing_page(sagemaker_capture: CaptureInS3) -> None:
    page = boto3.client("s3").list_objects_v2(
        Bucket=sagemaker_capture.bucket, Prefix=f"{CAPTURE_PREFIX}/{CAPTURE_ENDPOINT}/"
    )
    assert page["IsTruncated"] and page["KeyCount"] == 1000
    hours = {k.split("/")[-2] for k in sagemaker_capture.keys if k.endswith(".jsonl")}
    assert len(hours) >= 3, "the capture spans several hour folders"


def test_every_record_of_every_file_is_read_and_decoded(
    sagemaker_capture: CaptureInS3, read: capture.CaptureRead
) -> None:
    written = sagemaker_capture.written
    assert read is not None and read.files == CAPTURE_FILES
    assert len(read.records) == len(written) > CAPTURE_FILES
    by_id = {w.event_id: w for w in written}
    assert {r.event_id for r in read.records} == set(by_id)
    for record in read.records:
        expected = by_id[record.event_id]
        assert record.inference_time == expected.time
        assert record.inference_time.tzinfo is not None
        assert record.input_data == expected.image
        assert record.input_content_type == "image/png"
        assert record.probabilities == expected.probabilities
        assert record.label == expected.label
        assert record.variant == VARIANT
    times = [r.inference_time for r in read.records]
    assert times == sorted(times)


def test_one_variant_can_be_read_alone(sagemaker_capture: CaptureInS3) -> None:
    bucket = sagemaker_capture.bucket
    assert len(capture.read_capture(bucket, CAPTURE_PREFIX, CAPTURE_ENDPOINT, "Other").records) == 0


def test_waiting_for_capture_files_that_land_later(sagemaker_capture: CaptureInS3) -> None:
    bucket, endpoint = sagemaker_capture.bucket, "scones-late-capture"
    rng = random.Random(9)
    s3 = boto3.client("s3")

    def land(hour: int) -> None:
        when = CAPTURE_START + timedelta(hours=hour)
        lines = [capture_line(i, when + timedelta(seconds=i), rng)[0] for i in range(2)]
        key = f"{CAPTURE_PREFIX}/{endpoint}/{VARIANT}/{when:%Y/%m/%d/%H}/{uuid.uuid4()}.jsonl"
        s3.put_object(Bucket=bucket, Key=key, Body="\n".join(lines).encode())

    land(0)
    later = threading.Timer(0.3, land, args=(1,))
    later.start()
    try:
        found = capture.wait_for_capture(bucket, CAPTURE_PREFIX, endpoint, 4, 30.0)
    finally:
        later.join()
    assert (len(found.records), found.files) == (4, 2)
    started = time.monotonic()
    short = capture.wait_for_capture(bucket, CAPTURE_PREFIX, endpoint, 5, 0.3)
    assert len(short.records) == 4 and time.monotonic() - started < 5
