"""capture_spool: captured records on local disk first, then shipped to S3, one spool per place.

Durability (what the README promises):
- a record is written (`write(2)` on an `O_APPEND` file) before InvokeEndpoint answers: a
  SIGKILL or OOM kill of sagemaker-local loses nothing, the kernel holds the bytes;
- open spool files are `fdatasync`ed every `sync_interval_s` (0.1 s by default,
  `SAGEMAKER_LOCAL_CAPTURE_SYNC_SECONDS`): a power loss or kernel crash loses at most the last
  100 ms of records. The price, measured: an append that meets a running fdatasync of its file
  waits for it (ext4 holds the inode), so the p99 of the capture step grows from ~0.2 ms to
  0.4-4 ms on a loaded 2-CPU machine; p50 grows by ~4.5 us. With 0, files are synced only when
  sealed (every flush interval): no p99 cost, and a power loss may lose that interval;
- a spool file is sealed (fsync, then rename `.open` -> `.ready`: atomic) once it is
  `flush_bytes` large or `flush_interval_s` old; only sealed files are uploaded, and deleted
  only after S3 took them. After any crash, `.open` files are sealed on the next start (a torn
  last line, from a kill in mid-write, is cut off) and everything is shipped.

Each destination (`DestinationS3Uri`) has its own folder, its own shipping thread and its own
retry backoff, so one unreachable bucket never holds back another. Memory holds no records;
the disk is bounded by `max_spool_bytes`, and a full disk (or a full spool) drops the record
with a clear error in the log and `/_health`, rather than failing the invocation.

A spool file's first line is `{"bucket", "key"}`; the rest are the JSON lines of the object.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..durable_files import fsync_dir

log = logging.getLogger(__name__)

SYNC_INTERVAL_S = 0.1
MAX_BACKOFF_S = 60.0
DEFAULT_MAX_SPOOL_BYTES = 1 << 30


class ObjectWriter(Protocol):
    """What the spool needs from S3 (a boto3 S3 client fits)."""

    def put_object(self, **kwargs: Any) -> Any: ...


class SpoolFull(OSError):
    """The spool has no room for a record (disk full, or over its size bound)."""


def destination_id(bucket: str, prefix: str) -> str:
    """The folder name of a destination's spool."""
    return hashlib.sha256(f"{bucket}/{prefix}".encode()).hexdigest()[:16]


@dataclass
class SpoolFile:
    """An open spool file being appended to (one per endpoint, variant and hour)."""

    path: Path
    fd: int
    hour: str
    opened: float
    size: int = 0
    synced: bool = True

    def append(self, line: bytes) -> None:
        """Write one record; it is in the kernel's hands when this returns."""
        view = memoryview(line)
        try:
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
        except OSError:
            # A full disk accepts part of a line, then refuses the rest: cut the part off, or
            # the object would hold a torn line between whole ones.
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)
            raise
        self.size += len(line)
        self.synced = False

    def sync(self) -> None:
        """fsync what was appended so far."""
        if not self.synced:
            # fdatasync: the data and its length, not the timestamps; cheaper, and what the
            # promise needs.
            os.fdatasync(self.fd)
            self.synced = True

    def seal(self) -> Path:
        """fsync, close and rename to `.ready`: from now on the file is shipped."""
        self.sync()
        os.close(self.fd)
        ready = self.path.with_suffix(".ready")
        os.replace(self.path, ready)
        fsync_dir(ready.parent)  # the rename is durable only once the folder is synced
        return ready


def recover_open_file(path: Path) -> Path | None:
    """Seal a `.open` file left by a crash; a torn last line is cut off. None if empty."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    header, _, records = data[:end].partition(b"\n")
    try:
        meta = json.loads(header)
        valid = isinstance(meta, dict) and "bucket" in meta and "key" in meta
    except ValueError:
        valid = False
    if not valid or not records:
        path.unlink(missing_ok=True)
        return None
    if end != len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
            os.fsync(f.fileno())
    ready = path.with_suffix(".ready")
    os.replace(path, ready)
    return ready


class DestinationSpool:
    """The spool of one destination: its folder, its shipping thread, its backoff."""

    def __init__(self, folder: Path, s3: ObjectWriter, budget: SpoolBudget) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.s3 = s3
        self.budget = budget
        self.failures = 0
        self.last_error = ""
        self.shipped = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._ship_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._run, name=f"capture-ship-{folder.name}", daemon=True
        )
        self._thread.start()

    def open_file(self, bucket: str, key: str, hour: str) -> SpoolFile:
        """A new spool file whose object will be s3://bucket/key."""
        path = self.folder / f"{time.time_ns()}-{uuid.uuid4().hex}.open"
        header = json.dumps({"bucket": bucket, "key": key}).encode() + b"\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        spool_file = SpoolFile(path, fd, hour, time.monotonic())
        try:
            spool_file.append(header)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self.budget.add(len(header))
        return spool_file

    def wake(self) -> None:
        """Ship now (a file was sealed)."""
        self._wake.set()

    def pending(self) -> int:
        """Sealed files not yet shipped."""
        return len(list(self.folder.glob("*.ready")))

    def ship(self) -> bool:
        """Upload every sealed file, oldest first; False at the first failure."""
        with self._ship_lock:
            for path in sorted(self.folder.glob("*.ready")):
                try:
                    data = path.read_bytes()
                    header, _, body = data.partition(b"\n")
                    meta = json.loads(header)
                    self.s3.put_object(
                        Bucket=meta["bucket"],
                        Key=meta["key"],
                        Body=body,
                        ContentType="application/jsonl",
                    )
                except Exception as exc:  # kept on disk, retried with backoff
                    self.failures += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning(
                        "capture upload from %s failed (%s); retry %d pending",
                        path.name,
                        self.last_error,
                        self.failures,
                    )
                    return False
                path.unlink(missing_ok=True)
                self.budget.add(-len(data))
                self.shipped += 1
            self.failures = 0
            self.last_error = ""
            return True

    def _run(self) -> None:
        while not self._stop.is_set():
            delay = min(MAX_BACKOFF_S, 0.5 * 2**self.failures) if self.failures else None
            self._wake.wait(delay if delay is not None else 5.0)
            self._wake.clear()
            if self._stop.is_set():
                return
            with contextlib.suppress(Exception):  # the shipper must survive anything
                self.ship()

    def close(self) -> None:
        """Ship what is sealed once more, then stop the thread; the rest waits on disk."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        with contextlib.suppress(Exception):
            self.ship()


class SpoolBudget:
    """Bytes on disk across every spool, against a bound."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._lock = threading.Lock()

    def add(self, size: int) -> None:
        """Count bytes written (or, negative, removed)."""
        with self._lock:
            self.used = max(0, self.used + size)

    def check(self, size: int) -> None:
        """SpoolFull if size more bytes would pass the bound."""
        if self.max_bytes and self.used + size > self.max_bytes:
            raise SpoolFull(
                errno.ENOSPC,
                f"capture spool is full ({self.used} of {self.max_bytes} bytes, "
                "SAGEMAKER_LOCAL_CAPTURE_SPOOL_MAX_BYTES): S3 is not taking the files",
            )
