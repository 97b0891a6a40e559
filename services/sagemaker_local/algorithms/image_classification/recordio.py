"""MXNet RecordIO (`.rec`), read and written directly (no MXNet), as `im2rec` writes it.

A file is a sequence of records: magic `0xced7230a` (uint32 LE), then a uint32 whose upper 3 bits
are a continuation flag (0 whole, 1 first, 2 middle, 3 last part) and lower 29 bits the part's
length, then the part, zero-padded to 4 bytes. A payload containing the magic at a 4-byte aligned
offset is split there and the magic dropped; the reader puts it back between parts (dmlc-core's
`RecordIOWriter`). An image record's payload is `IRHeader` (`<IfQQ`: flag, label, id, id2), then
`flag` float32 labels when flag > 0, then the encoded image (JPEG or PNG).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_HEADER = struct.Struct("<IfQQ")
LENGTH_MASK = (1 << 29) - 1
MAX_RECORD_BYTES = 64 * 1024 * 1024  # a corrupt length must not become a huge allocation


class RecordIOError(ValueError):
    """The bytes are not a well-formed RecordIO file or image record."""


@dataclass(frozen=True)
class ImageRecord:
    """One image record: its labels (one for single-label data), id and encoded image."""

    labels: tuple[float, ...]
    record_id: int
    image: bytes


def read_records(stream: BinaryIO) -> Iterator[bytes]:
    """The payloads of a RecordIO stream, multi-part records joined."""
    parts: list[bytes] = []
    offset = 0
    while True:
        head = stream.read(8)
        if not head:
            if parts:
                raise RecordIOError(f"file ends inside a multi-part record at byte {offset}")
            return
        if len(head) < 8:
            raise RecordIOError(f"truncated record header at byte {offset}")
        magic, word = struct.unpack("<II", head)
        if magic != MAGIC:
            raise RecordIOError(f"bad magic 0x{magic:08x} at byte {offset} (not a RecordIO file)")
        flag, length = word >> 29, word & LENGTH_MASK
        if length > MAX_RECORD_BYTES:
            raise RecordIOError(f"record of {length} bytes at byte {offset} is too large")
        data = stream.read(length)
        if len(data) < length:
            raise RecordIOError(f"truncated record at byte {offset}")
        stream.read((4 - length % 4) % 4)
        offset += 8 + length + (4 - length % 4) % 4
        if flag == 0:
            if parts:
                raise RecordIOError(f"whole record inside a multi-part record at byte {offset}")
            yield data
        elif flag == 1:
            if parts:
                raise RecordIOError(f"multi-part record restarted at byte {offset}")
            parts = [data]
        elif flag in (2, 3):
            if not parts:
                raise RecordIOError(f"continuation without a first part at byte {offset}")
            parts.append(data)
            if flag == 3:
                yield _MAGIC_BYTES.join(parts)
                parts = []
        else:
            raise RecordIOError(f"unknown continuation flag {flag} at byte {offset}")


def _aligned_magic_offsets(payload: bytes) -> list[int]:
    offsets = []
    start = payload.find(_MAGIC_BYTES)
    while start != -1:
        if start % 4 == 0:
            offsets.append(start)
        start = payload.find(_MAGIC_BYTES, start + 1)
    return offsets


def write_record(stream: BinaryIO, payload: bytes) -> None:
    """Append one payload, split where it holds the magic at an aligned offset."""
    pieces: list[bytes] = []
    begin = 0
    for cut in _aligned_magic_offsets(payload):
        pieces.append(payload[begin:cut])
        begin = cut + 4
    pieces.append(payload[begin:])
    for index, piece in enumerate(pieces):
        if len(pieces) == 1:
            flag = 0
        elif index == 0:
            flag = 1
        elif index == len(pieces) - 1:
            flag = 3
        else:
            flag = 2
        stream.write(struct.pack("<II", MAGIC, (flag << 29) | len(piece)))
        stream.write(piece)
        stream.write(b"\x00" * ((4 - len(piece) % 4) % 4))


def unpack_image_record(payload: bytes) -> ImageRecord:
    """Split an image record into labels, id and image bytes (`mx.recordio.unpack`)."""
    if len(payload) < _HEADER.size:
        raise RecordIOError("image record shorter than its header")
    flag, label, record_id, _ = _HEADER.unpack_from(payload)
    rest = payload[_HEADER.size :]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise RecordIOError("image record shorter than its label array")
        labels = struct.unpack_from(f"<{flag}f", rest)
        rest = rest[4 * flag :]
    else:
        labels = (label,)
    return ImageRecord(tuple(float(v) for v in labels), int(record_id), bytes(rest))


def pack_image_record(record: ImageRecord) -> bytes:
    """An image record's payload (`mx.recordio.pack`)."""
    if len(record.labels) == 1:
        header = _HEADER.pack(0, record.labels[0], record.record_id, 0)
        return header + record.image
    header = _HEADER.pack(len(record.labels), 0.0, record.record_id, 0)
    return header + struct.pack(f"<{len(record.labels)}f", *record.labels) + record.image


def write_image_records(stream: BinaryIO, records: Iterable[ImageRecord]) -> int:
    """Write image records as `im2rec` does; the number written."""
    count = 0
    for record in records:
        write_record(stream, pack_image_record(record))
        count += 1
    return count
