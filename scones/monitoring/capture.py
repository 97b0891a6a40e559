"""Data-capture reader: every record SageMaker wrote for an endpoint, decoded, in time order.

`read_capture` lists `s3://<bucket>/<capture-prefix>/<EndpointName>/<Variant>/yyyy/mm/dd/hh/`
with a paginator and reads every line of every `.jsonl` file, decoding input and output by their
`encoding` (BASE64, JSON or CSV) and `eventMetadata.inferenceTime` as a UTC datetime.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config

READ_WORKERS = 16
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


def probabilities_and_label(output: Any) -> tuple[list[float] | None, str | None]:
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
        label = max(range(len(probabilities)), key=probabilities.__getitem__)
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
    probabilities, label = probabilities_and_label(output)
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
