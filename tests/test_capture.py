"""capture_writer and capture_spool: records on disk before the answer, shipped after any crash.

Against the real emulator's S3 (the session's `local_aws`); a crash is a real SIGKILL of a child
process that holds a `CaptureService`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from scones.deploy.hosting import capture_config
from services.sagemaker_local.capture import (
    CaptureService,
    CaptureSettings,
    capture_key,
    capture_record,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 30.0


def settings(destination: str) -> CaptureSettings:
    """Capture of inputs and outputs, every invocation, to destination."""
    return CaptureSettings.from_config(capture_config(destination))  # type: ignore[return-value]


def record(s: CaptureSettings, i: int) -> dict[str, Any]:
    """The capture record of invocation i."""
    return capture_record(
        s,
        input_content_type="application/json",
        input_data=json.dumps({"i": i}).encode(),
        output_content_type="application/json",
        output_data=b"[0.5]",
        inference_time=datetime.now(UTC),
        inference_id=f"inv-{i}",
    )


def captured_ids(bucket: str, prefix: str) -> list[str]:
    """inferenceId of every record under prefix, in S3."""
    s3 = boto3.client("s3")
    ids = []
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().decode()
        ids += [json.loads(line)["eventMetadata"]["inferenceId"] for line in body.splitlines()]
    return sorted(ids)


def wait_for(predicate: Callable[[], Any], what: str) -> Any:
    """Poll with a deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def bucket(local_aws: Any) -> str:
    """A fresh bucket."""
    name = f"capture-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def test_a_record_is_on_disk_when_add_returns(bucket: str, tmp_path: Path) -> None:
    service = CaptureService(boto3.client("s3"), tmp_path / "spool", flush_interval_s=300)
    try:
        s = settings(f"s3://{bucket}/cap")
        writer = service.writer("ep", s)
        writer.add("AllTraffic", record(s, 1), datetime.now(UTC))
        open_files = list((tmp_path / "spool").rglob("*.open"))
        assert len(open_files) == 1
        header, line = open_files[0].read_bytes().decode().splitlines()
        assert json.loads(header)["bucket"] == bucket
        assert json.loads(line)["eventMetadata"]["inferenceId"] == "inv-1"
        assert captured_ids(bucket, "cap/") == [], "nothing shipped before the flush interval"
    finally:
        service.close()
    assert captured_ids(bucket, "cap/") == ["inv-1"], "close seals and ships"
    assert not list((tmp_path / "spool").rglob("*.open"))
    assert not list((tmp_path / "spool").rglob("*.ready"))


CRASHING_WRITER = textwrap.dedent(
    """
    import json, os, signal, sys
    from datetime import UTC, datetime
    import boto3
    from pathlib import Path
    from services.sagemaker_local.capture import CaptureService
    from tests.test_capture import record, settings

    spool, destination, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    service = CaptureService(boto3.client("s3"), Path(spool), flush_interval_s=300)
    s = settings(destination)
    writer = service.writer("ep", s)
    for i in range(count):
        writer.add("AllTraffic", record(s, i), datetime.now(UTC))
    print("written", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_records_survive_a_sigkill_and_a_torn_line_and_ship_on_the_next_start(
    bucket: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(spool), f"s3://{bucket}/cap", "50"],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    assert b"written" in done.stdout
    (open_file,) = list(spool.rglob("*.open"))
    with open(open_file, "ab") as f:  # a kill in the middle of a write leaves half a line
        f.write(b'{"captureData": {"endpointInp')
    service = CaptureService(boto3.client("s3"), spool, flush_interval_s=300)
    try:
        expected = sorted(f"inv-{i}" for i in range(50))
        wait_for(lambda: captured_ids(bucket, "cap/") == expected, "the spool shipped")
    finally:
        service.close()
    assert not list(spool.rglob("*.ready")) and not list(spool.rglob("*.open"))


def test_one_failing_destination_does_not_hold_back_another(bucket: str, tmp_path: Path) -> None:
    missing = f"capture-later-{uuid.uuid4().hex[:8]}"
    service = CaptureService(boto3.client("s3"), tmp_path / "spool", flush_interval_s=0.2)
    try:
        bad, good = settings(f"s3://{missing}/cap"), settings(f"s3://{bucket}/cap")
        bad_writer, good_writer = service.writer("ep-a", bad), service.writer("ep-b", good)
        for i in range(3):
            bad_writer.add("AllTraffic", record(bad, i), datetime.now(UTC))
            good_writer.add("AllTraffic", record(good, 10 + i), datetime.now(UTC))
        wait_for(
            lambda: captured_ids(bucket, "cap/") == ["inv-10", "inv-11", "inv-12"],
            "the healthy destination's records",
        )
        status = wait_for(
            lambda: (st := service.status())["failingDestinations"] and st, "a failing one"
        )
        assert status["pendingFiles"] >= 1 and status["dropped"] == 0
        boto3.client("s3").create_bucket(Bucket=missing)
        wait_for(
            lambda: captured_ids(missing, "cap/") == ["inv-0", "inv-1", "inv-2"],
            "the late destination, retried with backoff",
        )
        wait_for(lambda: not service.status()["failingDestinations"], "recovery")
    finally:
        service.close()


def test_a_full_spool_drops_with_a_clear_error_and_never_raises(
    bucket: str, tmp_path: Path
) -> None:
    service = CaptureService(
        boto3.client("s3"), tmp_path / "spool", flush_interval_s=300, max_spool_bytes=2000
    )
    try:
        s = settings(f"s3://{bucket}/cap")
        writer = service.writer("ep", s)
        for i in range(20):
            writer.add("AllTraffic", record(s, i), datetime.now(UTC))
        status = service.status()
        assert 0 < writer.captured < 20 and writer.dropped == 20 - writer.captured
        assert status["dropped"] == writer.dropped
        assert "SAGEMAKER_LOCAL_CAPTURE_SPOOL_MAX_BYTES" in status["lastDrop"]
        assert status["spoolBytes"] <= 2000
    finally:
        service.close()
    assert len(captured_ids(bucket, "cap/")) == writer.captured


def test_spool_entries_of_the_previous_format_are_shipped(bucket: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    line = json.dumps(record(settings(f"s3://{bucket}/cap"), 7)).encode() + b"\n"
    (spool / "1-old.jsonl").write_bytes(line)
    (spool / "1-old.json").write_text(json.dumps({"bucket": bucket, "key": "cap/old.jsonl"}))
    service = CaptureService(boto3.client("s3"), spool, flush_interval_s=300)
    try:
        wait_for(lambda: captured_ids(bucket, "cap/") == ["inv-7"], "the old entry shipped")
    finally:
        service.close()
    assert not list(spool.glob("*.json*"))


def test_capture_record_and_key_follow_sagemaker() -> None:
    settings = CaptureSettings.from_config(
        {
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": "s3://b/capture/",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"]},
        }
    )
    assert settings is not None
    when = datetime(2024, 3, 11, 12, 32, 18, 648123, tzinfo=UTC)
    record = capture_record(
        settings,
        input_content_type="text/csv; charset=utf-8",
        input_data=b"1,2,3",
        output_content_type="application/json",
        output_data=b"[0.5]",
        inference_time=when,
        inference_id="abc",
        event_id="e-1",
    )
    assert record == {
        "captureData": {
            "endpointInput": {
                "observedContentType": "text/csv; charset=utf-8",
                "mode": "INPUT",
                "data": "1,2,3",
                "encoding": "CSV",
            },
            "endpointOutput": {
                "observedContentType": "application/json",
                "mode": "OUTPUT",
                "data": base64.b64encode(b"[0.5]").decode(),
                "encoding": "BASE64",
            },
        },
        "eventMetadata": {
            "eventId": "e-1",
            "inferenceTime": "2024-03-11T12:32:18Z",
            "inferenceId": "abc",
        },
        "eventVersion": "0",
    }
    key = capture_key("capture", "ep", "AllTraffic", when)
    assert re.fullmatch(r"capture/ep/AllTraffic/2024/03/11/12/32-18-648-[0-9a-f-]{36}\.jsonl", key)
    assert (
        CaptureSettings.from_config({"EnableCapture": False, "DestinationS3Uri": "s3://b"}) is None
    )


DISK_FULL_WRITER = textwrap.dedent(
    """
    import json, sys
    from datetime import UTC, datetime
    from pathlib import Path
    import boto3
    from services.sagemaker_local.capture import CaptureService
    from tests.test_capture import record, settings

    spool, destination = Path(sys.argv[1]), sys.argv[2]
    service = CaptureService(boto3.client("s3"), spool, flush_interval_s=300)
    s = settings(destination)
    writer = service.writer("ep", s)
    for i in range(400):  # ~100 KB of records on a 64 KiB file system
        writer.add("AllTraffic", record(s, i), datetime.now(UTC))
    status = service.status()
    service.close()
    print(json.dumps({"captured": writer.captured, "dropped": writer.dropped, **status}))
    """
)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) for a private mount")
def test_a_full_disk_drops_records_with_a_clear_error_and_the_rest_ship(
    bucket: str, tmp_path: Path
) -> None:
    spool = tmp_path / "tiny-disk"
    spool.mkdir()
    script = (
        f"mount -t tmpfs -o size=64k tmpfs {spool} && "
        f'exec "{sys.executable}" -c "$0" {spool / "spool"} s3://{bucket}/cap'
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, DISK_FULL_WRITER],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        timeout=120,
    )
    if done.returncode != 0 and b"mount" in done.stderr and b"ermission" in done.stderr:
        pytest.skip(f"no private tmpfs here: {done.stderr.decode()[:200]}")
    assert done.returncode == 0, done.stderr.decode()
    outcome = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert outcome["captured"] > 0 and outcome["dropped"] > 0
    assert outcome["captured"] + outcome["dropped"] == 400
    assert "disk full" in outcome["lastDrop"]
    assert "dropped (disk full)" in done.stderr.decode(), "said loudly in the log"
    assert len(captured_ids(bucket, "cap/")) == outcome["captured"], "every kept record shipped"
