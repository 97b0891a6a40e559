"""S3 object bytes on disk: one immutable blob file per object version, read lazily."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

from .persistence_files import fsync_dir


class LazyBlob:
    """An S3 object's bytes in a file, read on demand (stands in for moto's spooled buffer).

    moto's value setter (seek, truncate, write) detaches it: the new bytes live in memory until
    the next write persists them as a new blob.
    """

    def __init__(self, path: Path, blob_id: str) -> None:
        self.path = path
        self.blob_id: str | None = blob_id
        self._position = 0
        self._detached: Any = None

    def seek(self, offset: int, whence: int = 0) -> int:
        if self._detached is not None:
            return int(self._detached.seek(offset, whence))
        if whence == 0:
            self._position = offset
        elif whence == 1:
            self._position += offset
        else:
            self._position = self.path.stat().st_size + offset
        return self._position

    def tell(self) -> int:
        return int(self._detached.tell()) if self._detached is not None else self._position

    def read(self, size: int = -1) -> bytes:
        if self._detached is not None:
            return bytes(self._detached.read(size))
        # Open per read: ten thousand restored objects must not hold ten thousand descriptors.
        with open(self.path, "rb") as file:
            file.seek(self._position)
            data = file.read() if size is None or size < 0 else file.read(size)
        self._position += len(data)
        return data

    def truncate(self, size: int | None = None) -> int:
        if self._detached is None:
            self._detached = tempfile.SpooledTemporaryFile()  # noqa: SIM115 (owned, closed by close)
            self.blob_id = None
        return int(self._detached.truncate(size))

    def write(self, data: bytes) -> int:
        if self._detached is None:
            self.truncate(0)
        return int(self._detached.write(data))

    def close(self) -> None:
        if self._detached is not None:
            self._detached.close()


class BlobStore:
    """Object bytes, one immutable file per object version."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._unsynced = False

    def path(self, blob_id: str) -> Path:
        return self.root / blob_id

    def persist_key(self, key: Any) -> str:
        """The blob holding this key's bytes, written now if it has none ("": disposed key)."""
        with key.lock:
            buffer = key._value_buffer
            if isinstance(buffer, LazyBlob) and buffer.blob_id is not None:
                return buffer.blob_id
            if getattr(key, "disposed", False) or getattr(buffer, "closed", False):
                return ""  # nothing left to keep
            buffer.seek(0)
            data = buffer.read()
            blob_id = uuid.uuid4().hex
            tmp = self.root / f".{blob_id}.tmp"
            with open(tmp, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self.root / blob_id)
            self._unsynced = True
            # The bytes now live on disk: moto's in-memory copy is dropped.
            key._value_buffer = LazyBlob(self.root / blob_id, blob_id)
            buffer.close()
            return blob_id

    def sync(self) -> None:
        """Make the renames of new blobs durable (one directory fsync for a batch)."""
        if self._unsynced:
            fsync_dir(self.root)
            self._unsynced = False

    def collect(self, referenced: set[str], older_than: float) -> int:
        """Remove blobs nothing refers to; return how many.

        Only blobs older than the snapshot: one written meanwhile belongs to a request whose
        journal record is still to come.
        """
        removed = 0
        for entry in os.scandir(self.root):
            if entry.name not in referenced and entry.stat().st_mtime < older_than - 1.0:
                os.unlink(entry.path)
                removed += 1
        return removed
