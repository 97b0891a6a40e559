"""S3 metadata on disk: a snapshot generation of the S3 backends plus its journal of key
changes and of multipart uploads in progress, compacted into the next generation (unreferenced
blobs removed then)."""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .persistence_blobs import BlobStore
from .persistence_files import atomic_write, frame, fsync_dir, read_frames
from .persistence_pickle import (
    FORMAT_VERSION,
    StateUnpickler,
    backends_state,
    dump,
    install_backends,
)

log = logging.getLogger("local_aws.persistence")

COMPACT_RECORDS = 20_000
# First field of a journal record of a key's multipart uploads (no bucket name has a '#').
MULTIPARTS_RECORD = "#multiparts"


class S3Store:
    """S3 metadata: a snapshot generation plus its journal of key changes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(root / "blobs")
        self.generation = 0
        self.records = 0
        self._journal: Any = None

    def load(self) -> int:
        """Install the snapshot and replay its journal; return the number of objects."""
        from moto.s3.models import s3_backends

        snapshot = self.root / "snapshot.pkl"
        if snapshot.exists():
            data = StateUnpickler(io.BytesIO(snapshot.read_bytes()), self.blobs).load()
            self.generation = int(data["generation"])
            install_backends(s3_backends, data["backends"])
            s3_backends.bucket_accounts.update(data["bucket_accounts"])
        for record in self._read_journal(self._journal_path(self.generation)):
            if record[0] == MULTIPARTS_RECORD:
                _, bucket_name, key_name, uploads = record
                bucket = _find_bucket(bucket_name)
                if bucket is not None:
                    _replace_uploads(bucket, key_name, uploads)
                self.records += 1
                continue
            bucket_name, key_name, versions = record
            bucket = _find_bucket(bucket_name)
            if bucket is None:
                continue
            if versions:
                bucket.keys.setlist(key_name, versions)
            elif key_name in bucket.keys:
                bucket.keys.pop(key_name)
            self.records += 1
        for stale in self.root.glob("journal.*"):
            # A crash between a new snapshot and the old journal's removal leaves it behind.
            if stale != self._journal_path(self.generation):
                stale.unlink()
        self._open_journal()
        return sum(len(b.keys) for _, b in _all_buckets())

    def _journal_path(self, generation: int) -> Path:
        return self.root / f"journal.{generation}"

    def _read_journal(self, path: Path) -> Iterator[Any]:
        for payload in read_frames(path):
            yield StateUnpickler(io.BytesIO(payload), self.blobs).load()

    def _open_journal(self) -> None:
        if self._journal is not None:
            self._journal.close()
        path = self._journal_path(self.generation)
        self._journal = open(path, "ab")  # noqa: SIM115 (kept open for appends)
        fsync_dir(self.root)

    def write_blobs(self, bucket_name: str, key_name: str) -> None:
        """Write the bytes of a key's versions that have no blob yet."""
        bucket = _find_bucket(bucket_name)
        if bucket is None:
            return
        from moto.s3.models import FakeKey

        for version in list(bucket.keys.getlist(key_name, []) or []):
            if isinstance(version, FakeKey):
                self.blobs.persist_key(version)

    def record_key(self, bucket_name: str, key_name: str) -> None:
        """Journal the current versions of one key (None: it is gone)."""
        bucket = _find_bucket(bucket_name)
        if bucket is None:
            self.snapshot()
            return
        versions = list(bucket.keys.getlist(key_name, []) or [])
        referenced: set[str] = set()
        payload = dump((bucket_name, key_name, versions), self.blobs, referenced)
        self._append(payload)

    def write_upload_blobs(self, bucket_name: str, key_name: str) -> None:
        """Write the bytes of the parts of a key's multipart uploads that have no blob yet."""
        for upload in _uploads_of(_find_bucket(bucket_name), key_name).values():
            for part in list(upload.parts.values()):
                self.blobs.persist_key(part)

    def record_uploads(self, bucket_name: str, key_name: str) -> None:
        """Journal the multipart uploads in progress for one key (their parts' blobs named)."""
        uploads = _uploads_of(_find_bucket(bucket_name), key_name)
        payload = dump((MULTIPARTS_RECORD, bucket_name, key_name, uploads), self.blobs, set())
        self._append(payload)

    def _append(self, payload: bytes) -> None:
        self.blobs.sync()
        self._journal.write(frame(payload))
        self._journal.flush()
        os.fsync(self._journal.fileno())
        self.records += 1
        if self.records >= COMPACT_RECORDS:
            self.snapshot()

    def snapshot(self) -> None:
        """Write the next generation of the whole S3 state; drop the old journal and blobs."""
        from moto.s3.models import s3_backends

        referenced: set[str] = set()
        started = time.time()
        state = {
            "format": FORMAT_VERSION,
            "generation": self.generation + 1,
            "backends": backends_state(s3_backends),
            "bucket_accounts": dict(s3_backends.bucket_accounts),
        }
        data = dump(state, self.blobs, referenced)
        self.blobs.sync()
        atomic_write(self.root / "snapshot.pkl", data)
        old = self._journal_path(self.generation)
        self.generation += 1
        self.records = 0
        self._open_journal()
        old.unlink(missing_ok=True)
        removed = self.blobs.collect(referenced, older_than=started)
        if removed:
            log.info("s3: %d unreferenced blobs removed", removed)

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None


def _all_buckets() -> Iterator[tuple[str, Any]]:
    from moto.s3.models import s3_backends

    for _, regions in list(s3_backends.items()):
        for backend in list(regions.values()):
            yield from list(backend.buckets.items())


def _uploads_of(bucket: Any, key_name: str) -> dict[str, Any]:
    if bucket is None:
        return {}
    return {i: u for i, u in list(bucket.multiparts.items()) if u.key_name == key_name}


def _replace_uploads(bucket: Any, key_name: str, uploads: dict[str, Any]) -> None:
    for upload_id in _uploads_of(bucket, key_name):
        dict.__delitem__(bucket.multiparts, upload_id)  # moto's __delitem__ disposes the parts
    bucket.multiparts.update(uploads)


def _find_bucket(name: str) -> Any:
    for bucket_name, bucket in _all_buckets():
        if bucket_name == name:
            return bucket
    return None
