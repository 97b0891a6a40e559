"""The capture reader's decoding (scones.monitoring.capture): encodings, bad lines, times.

Reading whole captures from S3 (pagination, variants, late files) is exercised with the report
in test_monitoring.py, over the same real files.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from scones.monitoring import capture

VARIANT = "AllTraffic"


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
