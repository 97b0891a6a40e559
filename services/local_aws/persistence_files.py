"""Durable files for the emulator's persistence: fsynced write-then-rename, and the CRC-framed
records of append-only journals (a torn tail is cut off on read)."""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

# The emulator's modules import these two from here (one copy, shared with sagemaker-local).
from ..durable_files import atomic_write, fsync_dir

__all__ = ["atomic_write", "frame", "fsync_dir", "read_frames"]

log = logging.getLogger("local_aws.persistence")

_FRAME = struct.Struct(">II")  # payload length, crc32


def frame(payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def read_frames(path: Path) -> Iterator[bytes]:
    """The whole records of a journal; a torn tail (never acknowledged) is cut off."""
    if not path.exists():
        return
    data = path.read_bytes()
    offset = 0
    while offset + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, offset)
        payload = data[offset + _FRAME.size : offset + _FRAME.size + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        yield payload
        offset += _FRAME.size + length
    if offset < len(data):
        # Appends must follow the last whole record.
        log.warning("journal %s: torn tail at byte %d dropped", path.name, offset)
        with open(path, "r+b") as file:
            file.truncate(offset)
            os.fsync(file.fileno())
