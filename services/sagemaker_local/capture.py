"""capture_writer: SageMaker data capture, written exactly as SageMaker writes it.

Each captured invocation is one JSON line::

    {"captureData": {"endpointInput": {"observedContentType", "mode": "INPUT", "data", "encoding"},
                     "endpointOutput": {..., "mode": "OUTPUT"}},
     "eventMetadata": {"eventId", "inferenceTime", "inferenceId"?}, "eventVersion": "0"}

in objects at
``{DestinationS3Uri}/{EndpointName}/{VariantName}/yyyy/mm/dd/hh/{MM}-{SS}-{mmm}-{uuid}.jsonl``
(hour folder and file name from the first record's time, UTC). Content types listed in
`CaptureContentTypeHeader` are stored as CSV/JSON text, everything else as BASE64.

Every record goes to the destination's spool on local disk before the invocation is answered,
and is shipped from there (`capture_spool`: what a crash can lose, retries, bounds).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .capture_spool import (
    DEFAULT_MAX_SPOOL_BYTES,
    SYNC_INTERVAL_S,
    DestinationSpool,
    ObjectWriter,
    SpoolBudget,
    SpoolFile,
    destination_id,
    recover_open_file,
)
from .s3io import split_s3_uri

log = logging.getLogger(__name__)

DEFAULT_FLUSH_INTERVAL_S = 2.0
DEFAULT_FLUSH_BYTES = 1 << 20


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


class CaptureWriter:
    """capture_writer of one endpoint config: samples, and appends each record to the spool."""

    def __init__(self, endpoint_name: str, settings: CaptureSettings, service: CaptureService):
        self.endpoint_name = endpoint_name
        self.settings = settings
        self._service = service
        self._spool = service.spool_for(settings.destination_s3_uri)
        self._bucket, self._prefix = split_s3_uri(settings.destination_s3_uri)
        self._lock = threading.Lock()
        self._files: dict[str, SpoolFile] = {}
        self.captured = 0
        self.dropped = 0
        self.retired = False

    def sampled(self) -> bool:
        """Whether this invocation is captured (`InitialSamplingPercentage`)."""
        pct = self.settings.sampling_percentage
        return pct >= 100 or (pct > 0 and random.random() * 100 < pct)

    def add(self, variant: str, record: dict[str, Any], when: datetime) -> None:
        """Write one record to the spool (on disk when this returns); never raises."""
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        hour = when.astimezone(UTC).strftime("%Y%m%d%H")
        sealed: list[SpoolFile] = []
        try:
            with self._lock:
                self._service.budget.check(len(line))
                current = self._files.get(variant)
                if current is not None and current.hour != hour:
                    sealed.append(self._files.pop(variant))  # an hour folder per object
                    current = None
                if current is None:
                    key = capture_key(self._prefix, self.endpoint_name, variant, when)
                    current = self._spool.open_file(self._bucket, key, hour)
                    self._files[variant] = current
                current.append(line)
                self._service.budget.add(len(line))
                self.captured += 1
                if current.size >= self._service.flush_bytes:
                    sealed.append(self._files.pop(variant))
        except OSError as exc:
            self.dropped += 1
            self._service.record_drop(self.endpoint_name, exc)
        for spool_file in sealed:
            self._service.seal(self._spool, spool_file)

    def sync(self) -> None:
        """fsync the open files (the flusher's 100 ms beat)."""
        with self._lock:
            files = list(self._files.values())
        for spool_file in files:
            with contextlib.suppress(OSError):
                spool_file.sync()

    def take_files(self, older_than_s: float | None = None) -> list[SpoolFile]:
        """Hand over the open files to seal (all of them, or those older than a bound)."""
        now = time.monotonic()
        with self._lock:
            variants = [
                v
                for v, f in self._files.items()
                if older_than_s is None or now - f.opened >= older_than_s
            ]
            return [self._files.pop(v) for v in variants]

    @property
    def spool(self) -> DestinationSpool:
        """The spool of this writer's destination."""
        return self._spool


class CaptureService:
    """Owns every capture_writer, the spools of their destinations and the flusher thread."""

    def __init__(
        self,
        s3: ObjectWriter,
        spool_dir: Path,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        flush_bytes: int = DEFAULT_FLUSH_BYTES,
        max_spool_bytes: int = DEFAULT_MAX_SPOOL_BYTES,
        sync_interval_s: float = SYNC_INTERVAL_S,
    ) -> None:
        self.s3 = s3
        self.spool_dir = spool_dir
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.flush_interval_s = flush_interval_s
        self.flush_bytes = flush_bytes
        self.budget = SpoolBudget(max_spool_bytes)
        self.sync_interval_s = sync_interval_s
        self.dropped = 0
        self.last_drop = ""
        self._spools: dict[str, DestinationSpool] = {}
        self._writers: set[CaptureWriter] = set()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._recover()
        self._thread = threading.Thread(target=self._run, name="capture-flusher", daemon=True)
        self._thread.start()

    def _recover(self) -> None:
        """Seal what a crash left open, adopt the old spool format, ship everything."""
        for legacy in sorted(self.spool_dir.glob("*.json")):  # before: meta + body files
            body = legacy.with_suffix(".jsonl")
            try:
                meta = json.loads(legacy.read_text(encoding="utf-8"))
                folder = self.spool_dir / destination_id(meta["bucket"], "")
                folder.mkdir(exist_ok=True)
                target = folder / f"{legacy.stem}.ready"
                header = json.dumps({"bucket": meta["bucket"], "key": meta["key"]}).encode()
                target.write_bytes(header + b"\n" + body.read_bytes())
            except (OSError, ValueError, KeyError) as exc:
                log.warning("unreadable old capture spool entry %s: %s", legacy.name, exc)
                continue
            legacy.unlink(missing_ok=True)
            body.unlink(missing_ok=True)
        for folder in sorted(p for p in self.spool_dir.iterdir() if p.is_dir()):
            for path in sorted(folder.glob("*.open")):
                recover_open_file(path)
            sizes = [p.stat().st_size for p in folder.glob("*.ready")]
            self.budget.add(sum(sizes))
            if sizes:
                log.info("capture spool %s: %d file(s) to ship from before", folder, len(sizes))
                self._spool(folder.name).wake()

    def _spool(self, folder_name: str) -> DestinationSpool:
        with self._lock:
            spool = self._spools.get(folder_name)
            if spool is None:
                spool = DestinationSpool(self.spool_dir / folder_name, self.s3, self.budget)
                self._spools[folder_name] = spool
            return spool

    def spool_for(self, destination_s3_uri: str) -> DestinationSpool:
        """The spool of one destination (created on first use)."""
        return self._spool(destination_id(*split_s3_uri(destination_s3_uri)))

    def writer(self, endpoint_name: str, settings: CaptureSettings) -> CaptureWriter:
        """A new capture_writer for an endpoint's active config."""
        w = CaptureWriter(endpoint_name, settings, self)
        with self._lock:
            self._writers.add(w)
        return w

    def retire(self, writer: CaptureWriter) -> None:
        """Seal a writer whose endpoint config is gone (endpoint updated or deleted).

        Invocations still in flight on the old route may add records afterwards: they open
        new spool files, which the flusher seals by age and then forgets the writer.
        """
        writer.retired = True
        for spool_file in writer.take_files():
            self.seal(writer.spool, spool_file)

    def seal(self, spool: DestinationSpool, spool_file: SpoolFile) -> None:
        """Seal one spool file and wake its destination's shipper."""
        try:
            spool_file.seal()
        except OSError as exc:
            log.error("could not seal capture spool file %s: %s", spool_file.path, exc)
            return
        spool.wake()

    def record_drop(self, endpoint_name: str, exc: OSError) -> None:
        """A record that could not be spooled: said loudly, counted in /_health."""
        self.dropped += 1
        reason = "disk full" if exc.errno == errno.ENOSPC else "write failed"
        self.last_drop = f"{endpoint_name}: {reason}: {exc}"
        log.error("capture record of endpoint %s dropped (%s): %s", endpoint_name, reason, exc)

    def _seal_all(self, older_than_s: float | None = None) -> list[DestinationSpool]:
        """Seal the open files of every writer (or those older than a bound); the spools."""
        with self._lock:
            writers = list(self._writers)
            spools = list(self._spools.values())
        for w in writers:
            for spool_file in w.take_files(older_than_s):
                self.seal(w.spool, spool_file)
        return spools

    def flush(self) -> None:
        """Seal every open spool file now and ship every destination."""
        for spool in self._seal_all():
            spool.ship()

    def status(self) -> dict[str, Any]:
        """What /_health says about capture."""
        with self._lock:
            spools = list(self._spools.values())
        return {
            "spoolBytes": self.budget.used,
            "pendingFiles": sum(s.pending() for s in spools),
            "dropped": self.dropped,
            "lastDrop": self.last_drop,
            "failingDestinations": [s.folder.name for s in spools if s.failures],
        }

    def close(self) -> None:
        """Stop the flusher, seal everything, ship once; what S3 does not take stays spooled."""
        self._closing.set()
        self._thread.join(timeout=30)
        for spool in self._seal_all():
            spool.close()

    def _run(self) -> None:
        last_seal = time.monotonic()
        beat = self.sync_interval_s or SYNC_INTERVAL_S
        while not self._closing.wait(beat):
            try:
                with self._lock:
                    writers = list(self._writers)
                if self.sync_interval_s:
                    for w in writers:
                        w.sync()
                if time.monotonic() - last_seal < min(self.flush_interval_s, 1.0):
                    continue
                last_seal = time.monotonic()
                self._seal_all(older_than_s=self.flush_interval_s)
                with self._lock:
                    self._writers = {w for w in self._writers if not (w.retired and not w._files)}
            except Exception:  # the flusher must survive anything
                log.exception("capture flush failed")
