"""Extract: fetch `cifar-100-python.tar.gz`, verify its MD5, and read its pickles safely.

The archive and the pickles inside it are untrusted input:
- the archive is checked against the expected MD5 before anything is read from it, and a download
  lands under a temporary name, renamed only once its MD5 matches (a mismatch leaves nothing);
- members are read in memory by their exact names, and only when they are regular files inside
  `cifar-100-python/` (no links, devices, absolute paths or `..`), so no path can be written;
- the pickles are loaded with `RestrictedUnpickler`, which admits only builtin containers, bytes,
  str, numbers and numpy array/dtype reconstruction; any other global raises `UnsafePickleError`.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
OFFICIAL_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
ARCHIVE_NAME = "cifar-100-python.tar.gz"
ARCHIVE_FOLDER = "cifar-100-python"
IMAGE_BYTES = 3 * 32 * 32


class ArchiveError(Exception):
    """The archive cannot be used."""


class ChecksumMismatchError(ArchiveError):
    """The archive's MD5 is not the expected one."""


class UnsafeArchiveError(ArchiveError):
    """The archive holds a member that could escape the target or is not a regular file."""


class UnsafePickleError(ArchiveError, pickle.UnpicklingError):
    """A pickle asked for a global outside the allowed set."""


class MalformedArchiveError(ArchiveError):
    """A pickle loaded but does not have the CIFAR-100 keys, shapes or types."""


# (module, name) -> where the object really lives now; numpy 2 moved numpy.core to numpy._core.
_ALLOWED_GLOBALS: dict[tuple[str, str], tuple[str, str]] = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    # Protocol 5 pickles of arrays: frombuffer(buffer, dtype).reshape(shape).
    ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    # Python 3 writes bytes in protocol 2 as _codecs.encode(str, "latin1").
    ("_codecs", "encode"): ("_codecs", "encode"),
    **{
        ("builtins", name): ("builtins", name)
        for name in ("set", "frozenset", "bytearray", "complex", "list", "dict", "tuple")
    },
    **{("__builtin__", name): ("builtins", name) for name in ("set", "frozenset", "complex")},
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a CIFAR pickle needs."""

    def find_class(self, module: str, name: str) -> Any:
        """Resolve an allowed global, refuse everything else."""
        try:
            real_module, real_name = _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"pickle refers to {module}.{name}, which is not allowed"
            ) from None
        return getattr(importlib.import_module(real_module), real_name)


def restricted_loads(payload: bytes) -> Any:
    """Unpickle bytes written by Python 2 or 3 (byte-string keys kept as bytes), safely."""
    try:
        obj = RestrictedUnpickler(io.BytesIO(payload), encoding="bytes").load()
    except UnsafePickleError:
        raise
    except Exception as exc:
        raise MalformedArchiveError(f"cannot unpickle: {exc}") from exc
    _refuse_object_arrays(obj)
    return obj


def _refuse_object_arrays(obj: Any, depth: int = 0) -> None:
    """Object arrays could smuggle anything past later code; CIFAR has none."""
    if depth > 8:
        raise MalformedArchiveError("pickle nests deeper than a CIFAR file does")
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise UnsafePickleError("pickle holds a numpy array of Python objects")
    if isinstance(obj, dict):
        for value in obj.values():
            _refuse_object_arrays(value, depth + 1)


def file_md5(path: Path) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path: Path, expected_md5: str) -> None:
    """Raise ChecksumMismatchError unless the file's MD5 is the expected one."""
    actual = file_md5(path)
    if actual != expected_md5.lower():
        raise ChecksumMismatchError(
            f"{path} has MD5 {actual}, expected {expected_md5.lower()}; refusing to use it"
        )


def is_url(source: str) -> bool:
    """Whether a source names a URL rather than a local file."""
    return source.split("://", 1)[0].lower() in {"http", "https", "ftp", "file"}


def fetch(source: str, work_dir: Path, expected_md5: str = OFFICIAL_MD5) -> Path:
    """The archive: a local file as is, or a URL downloaded into work_dir (cached, verified).

    A local file is verified when read (`read_archive`); a download is verified before it is
    kept, so a mismatch leaves nothing behind.
    """
    if not is_url(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ArchiveError(f"{path} is not a file")
        return path
    target = work_dir / ARCHIVE_NAME
    if target.is_file() and file_md5(target) == expected_md5.lower():
        return target
    work_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".download")
    try:
        with urllib.request.urlopen(source, timeout=60) as response, open(partial, "wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
        verify_md5(partial, expected_md5)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    return target


def _member_payload(tar: tarfile.TarFile, name: str) -> bytes:
    """The bytes of one member, refused unless it is a regular file at a safe path."""
    try:
        member = tar.getmember(f"{ARCHIVE_FOLDER}/{name}")
    except KeyError:
        raise MalformedArchiveError(f"archive has no {ARCHIVE_FOLDER}/{name}") from None
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or not member.isfile():
        raise UnsafeArchiveError(f"archive member {member.name!r} is not a safe regular file")
    extracted = tar.extractfile(member)
    if extracted is None:
        raise UnsafeArchiveError(f"archive member {member.name!r} has no data")
    return extracted.read()


@dataclass(frozen=True)
class Split:
    """One split of CIFAR-100: images [N, 32, 32, 3] uint8 with labels and file names."""

    images: np.ndarray
    fine_labels: np.ndarray
    coarse_labels: np.ndarray
    filenames: list[str]


@dataclass(frozen=True)
class Cifar100:
    """The decoded archive: both splits and the label names."""

    train: Split
    test: Split
    fine_label_names: list[str]
    coarse_label_names: list[str]


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes | bytearray) else str(value)


def _get(obj: Any, key: str) -> Any:
    """A key of a CIFAR dict, whichever way it was pickled (bytes or str keys)."""
    if not isinstance(obj, dict):
        raise MalformedArchiveError(f"expected a dict, found {type(obj).__name__}")
    for candidate in (key.encode(), key):
        if candidate in obj:
            return obj[candidate]
    raise MalformedArchiveError(f"pickle has no {key!r} key")


def _split(obj: Any, name: str, fine_count: int, coarse_count: int) -> Split:
    """Validate a split pickle and turn it into a Split."""
    data = _get(obj, "data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise MalformedArchiveError(f"{name}: data must be a 2-D uint8 array")
    if data.shape[1] != IMAGE_BYTES:
        raise MalformedArchiveError(
            f"{name}: rows of {data.shape[1]} bytes, expected {IMAGE_BYTES}"
        )
    rows = data.shape[0]
    fine = np.asarray(_get(obj, "fine_labels"), dtype=np.int64)
    coarse = np.asarray(_get(obj, "coarse_labels"), dtype=np.int64)
    filenames = [_text(v) for v in _get(obj, "filenames")]
    for label, values, count in (
        ("fine_labels", fine, fine_count),
        ("coarse_labels", coarse, coarse_count),
    ):
        if values.shape != (rows,) or (rows and (values.min() < 0 or values.max() >= count)):
            raise MalformedArchiveError(f"{name}: {label} must be {rows} ints in [0, {count})")
    if len(filenames) != rows:
        raise MalformedArchiveError(f"{name}: {len(filenames)} filenames for {rows} rows")
    for filename in filenames:
        if PurePosixPath(filename).name != filename or filename in {"", ".", ".."}:
            raise UnsafeArchiveError(f"{name}: file name {filename!r} is not a plain name")
    images = data.reshape(rows, 3, 32, 32).transpose(0, 2, 3, 1)
    return Split(images, fine, coarse, filenames)


def read_archive(path: Path, expected_md5: str) -> Cifar100:
    """Verify and decode a `cifar-100-python.tar.gz`; nothing is written anywhere."""
    verify_md5(path, expected_md5)
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            payloads = {name: _member_payload(tar, name) for name in ("meta", "train", "test")}
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise MalformedArchiveError(f"{path} is not a readable tar.gz: {exc}") from exc
    meta = restricted_loads(payloads["meta"])
    fine_names = [_text(v) for v in _get(meta, "fine_label_names")]
    coarse_names = [_text(v) for v in _get(meta, "coarse_label_names")]
    if len(fine_names) != 100 or len(coarse_names) != 20:
        raise MalformedArchiveError("meta must name 100 fine and 20 coarse classes")
    return Cifar100(
        train=_split(restricted_loads(payloads["train"]), "train", 100, 20),
        test=_split(restricted_loads(payloads["test"]), "test", 100, 20),
        fine_label_names=fine_names,
        coarse_label_names=coarse_names,
    )
