"""capture_writer: SageMaker data capture, written exactly as SageMaker writes it.

Each captured invocation is one JSON line::

    {"captureData": {"endpointInput": {"observedContentType", "mode": "INPUT", "data", "encoding"},
                     "endpointOutput": {..., "mode": "OUTPUT"}},
     "eventMetadata": {"eventId", "inferenceTime", "inferenceId"?}, "eventVersion": "0"}

in objects at
``{DestinationS3Uri}/{EndpointName}/{VariantName}/yyyy/mm/dd/hh/{MM}-{SS}-{mmm}-{uuid}.jsonl``
(hour folder and file name from the first record's time, UTC). Content types listed in
`CaptureContentTypeHeader` are stored as CSV/JSON text, everything else as BASE64.

Records are buffered and written on size or every few seconds by one flusher thread; an upload
that fails is spooled to disk and retried (also after a restart), so no record is lost.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from .s3io import split_s3_uri

log = logging.getLogger(__name__)

DEFAULT_FLUSH_INTERVAL_S = 2.0
DEFAULT_FLUSH_BYTES = 1 << 20
# Longer than an invocation may take (60 s): a retired writer outlives every request using it.
RETIRED_WRITER_GRACE_S = 120.0


class ObjectWriter(Protocol):
    """What the writer needs from S3 (a boto3 S3 client fits)."""

    def put_object(self, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class CaptureSettings:
    """An endpoint config's `DataCaptureConfig`, resolved."""

    sampling_percentage: int
    destination_s3_uri: str
    capture_input: bool
    capture_output: bool
    csv_content_types: frozenset[str]
    json_content_types: frozenset[str]
    kms_key_id: str | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> CaptureSettings | None:
        """None when capture is absent or disabled."""
        if not config or not config.get("EnableCapture", True):
            return None
        modes = {o.get("CaptureMode") for o in config.get("CaptureOptions", [])}
        header = config.get("CaptureContentTypeHeader") or {}
        return cls(
            sampling_percentage=int(config.get("InitialSamplingPercentage", 0)),
            destination_s3_uri=config["DestinationS3Uri"],
            capture_input="Input" in modes,
            capture_output="Output" in modes,
            csv_content_types=frozenset(t.lower() for t in header.get("CsvContentTypes", [])),
            json_content_types=frozenset(t.lower() for t in header.get("JsonContentTypes", [])),
            kms_key_id=config.get("KmsKeyId"),
        )

    def encoding_for(self, content_type: str) -> str:
        """CSV or JSON for the listed content types (with or without parameters), else BASE64."""
        full = content_type.strip().lower()
        media = full.split(";", 1)[0].strip()
        if full in self.csv_content_types or media in self.csv_content_types:
            return "CSV"
        if full in self.json_content_types or media in self.json_content_types:
            return "JSON"
        return "BASE64"


def payload_entry(settings: CaptureSettings, mode: str, content_type: str, data: bytes) -> dict:
    """One `endpointInput`/`endpointOutput` entry of a capture record."""
    encoding = settings.encoding_for(content_type)
    if encoding != "BASE64":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            encoding = "BASE64"
    if encoding == "BASE64":
        text = base64.b64encode(data).decode("ascii")
    return {
        "observedContentType": content_type,
        "mode": mode,
        "data": text,
        "encoding": encoding,
    }


def capture_record(
    settings: CaptureSettings,
    *,
    input_content_type: str,
    input_data: bytes,
    output_content_type: str,
    output_data: bytes,
    inference_time: datetime,
    inference_id: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """The capture record of one invocation, as SageMaker writes it."""
    capture_data: dict[str, Any] = {}
    if settings.capture_input:
        capture_data["endpointInput"] = payload_entry(
            settings, "INPUT", input_content_type, input_data
        )
    if settings.capture_output:
        capture_data["endpointOutput"] = payload_entry(
            settings, "OUTPUT", output_content_type, output_data
        )
    metadata: dict[str, Any] = {
        "eventId": event_id or str(uuid.uuid4()),
        "inferenceTime": inference_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if inference_id:
        metadata["inferenceId"] = inference_id
    return {"captureData": capture_data, "eventMetadata": metadata, "eventVersion": "0"}


def capture_key(prefix: str, endpoint: str, variant: str, first_time: datetime) -> str:
    """S3 key of a capture file: hour folder and name from the first record's UTC time."""
    t = first_time.astimezone(UTC)
    name = f"{t:%M}-{t:%S}-{t.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl"
    path = f"{endpoint}/{variant}/{t:%Y/%m/%d/%H}/{name}"
    prefix = prefix.strip("/")
    return f"{prefix}/{path}" if prefix else path


@dataclass
class _Pending:
    variant: str
    time: datetime
    line: bytes


class CaptureWriter:
    """capture_writer of one endpoint: samples, buffers and hands out files to upload."""

    def __init__(self, endpoint_name: str, settings: CaptureSettings, service: CaptureService):
        self.endpoint_name = endpoint_name
        self.settings = settings
        self._service = service
        self._lock = threading.Lock()
        self._buffer: list[_Pending] = []
        self._buffered_bytes = 0
        self.captured = 0
        self.retired_at: float | None = None

    def sampled(self) -> bool:
        """Whether this invocation is captured (`InitialSamplingPercentage`)."""
        pct = self.settings.sampling_percentage
        return pct >= 100 or (pct > 0 and random.random() * 100 < pct)

    def add(self, variant: str, record: dict[str, Any], when: datetime) -> None:
        """Buffer one record; a full buffer wakes the flusher."""
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            self._buffer.append(_Pending(variant, when, line))
            self._buffered_bytes += len(line)
            self.captured += 1
            full = self._buffered_bytes >= self._service.flush_bytes
        if full:
            self._service.wake()

    def drain(self) -> list[tuple[str, str, bytes]]:
        """Take the buffer as (bucket, key, body) files, one per variant and hour."""
        with self._lock:
            pending, self._buffer, self._buffered_bytes = self._buffer, [], 0
        if not pending:
            return []
        groups: dict[tuple[str, str], list[_Pending]] = defaultdict(list)
        for item in pending:
            groups[(item.variant, item.time.astimezone(UTC).strftime("%Y%m%d%H"))].append(item)
        bucket, prefix = split_s3_uri(self.settings.destination_s3_uri)
        files = []
        for (variant, _hour), items in groups.items():
            key = capture_key(prefix, self.endpoint_name, variant, items[0].time)
            files.append((bucket, key, b"".join(i.line for i in items)))
        return files


class CaptureService:
    """Owns every capture_writer and the one thread that writes their files to S3."""

    def __init__(
        self,
        s3: ObjectWriter,
        spool_dir: Path,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        flush_bytes: int = DEFAULT_FLUSH_BYTES,
    ) -> None:
        self.s3 = s3
        self.spool_dir = spool_dir
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.flush_interval_s = flush_interval_s
        self.flush_bytes = flush_bytes
        self._writers: set[CaptureWriter] = set()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="capture-flusher", daemon=True)
        self._thread.start()

    def writer(self, endpoint_name: str, settings: CaptureSettings) -> CaptureWriter:
        """A new capture_writer for an endpoint's active config."""
        w = CaptureWriter(endpoint_name, settings, self)
        with self._lock:
            self._writers.add(w)
        return w

    def retire(self, writer: CaptureWriter) -> None:
        """Flush a writer whose endpoint config is gone (endpoint updated or deleted).

        It stays registered for a while: invocations already in flight on the old route may
        still add records to it, and those must be written too.
        """
        writer.retired_at = time.monotonic()
        self._write_files(writer.drain())

    def wake(self) -> None:
        """Ask the flusher for an early flush."""
        self._wake.set()

    def flush(self) -> None:
        """Write every buffered record now, and retry spooled files."""
        with self._lock:
            writers = list(self._writers)
        with self._flush_lock:
            for w in writers:
                self._write_files(w.drain())
            self._retry_spool()
        now = time.monotonic()
        with self._lock:
            for w in writers:
                if w.retired_at is not None and now - w.retired_at > RETIRED_WRITER_GRACE_S:
                    self._writers.discard(w)
        for w in writers:  # a record added between the drain and the discard
            if w.retired_at is not None and w not in self._writers:
                self._write_files(w.drain())

    def close(self) -> None:
        """Stop the flusher and write everything; what cannot be uploaded stays spooled."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout=30)
        self.flush()

    def _run(self) -> None:
        while not self._closing:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # the flusher must survive anything
                log.exception("capture flush failed")

    def _write_files(self, files: list[tuple[str, str, bytes]]) -> None:
        for bucket, key, body in files:
            try:
                self._put(bucket, key, body)
            except Exception as exc:  # any failure: keep the records on disk
                log.warning("capture upload to s3://%s/%s failed (%s); spooled", bucket, key, exc)
                self._spool(bucket, key, body)

    def _put(self, bucket: str, key: str, body: bytes) -> None:
        self.s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/jsonl")

    def _spool(self, bucket: str, key: str, body: bytes) -> None:
        stem = f"{time.time_ns()}-{uuid.uuid4().hex}"
        (self.spool_dir / f"{stem}.jsonl").write_bytes(body)
        # The meta file is written last: a spool entry exists once both are there.
        meta = json.dumps({"bucket": bucket, "key": key})
        (self.spool_dir / f"{stem}.json").write_text(meta, encoding="utf-8")

    def _retry_spool(self) -> None:
        for meta_path in sorted(self.spool_dir.glob("*.json")):
            body_path = meta_path.with_suffix(".jsonl")
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                self._put(meta["bucket"], meta["key"], body_path.read_bytes())
            except Exception as exc:
                log.debug("spooled capture file %s still pending: %s", meta_path.name, exc)
                return
            meta_path.unlink(missing_ok=True)
            body_path.unlink(missing_ok=True)
