"""Model archives are untrusted: a tar member that would land outside the target is refused.

Used for model data (hosting) and for training source tarballs (`sagemaker_submit_directory`).
"""

from __future__ import annotations

import os
import tarfile
import zlib
from pathlib import Path, PurePosixPath

MAX_MODEL_BYTES = int(os.environ.get("SAGEMAKER_LOCAL_MAX_MODEL_BYTES", str(8 << 30)))
MAX_MODEL_MEMBERS = 100_000


class ModelArchiveError(Exception):
    """A model archive that cannot be used (corrupt, unsafe, too large, missing)."""


def _normalised(path: str) -> str:
    return os.path.normpath(path).replace(os.sep, "/")


def _inside(relative: str) -> bool:
    norm = _normalised(relative)
    return not (norm == ".." or norm.startswith("../") or norm.startswith("/"))


def check_member(member: tarfile.TarInfo) -> None:
    """Refuse a tar member that could write outside the target or is not a plain entry."""
    name = member.name
    if name.startswith("/") or PurePosixPath(name).is_absolute() or os.path.isabs(name):
        raise ModelArchiveError(f"archive member {name!r} has an absolute path")
    if ".." in PurePosixPath(name).parts:
        raise ModelArchiveError(f"archive member {name!r} has a '..' component")
    if member.issym():
        link = member.linkname
        if link.startswith("/") or not _inside(str(PurePosixPath(name).parent / link)):
            raise ModelArchiveError(f"archive link {name!r} points outside the model ({link!r})")
    elif member.islnk():
        link = member.linkname
        if link.startswith("/") or not _inside(link):
            raise ModelArchiveError(f"archive link {name!r} points outside the model ({link!r})")
    elif not (member.isfile() or member.isdir()):
        raise ModelArchiveError(f"archive member {name!r} is a device or special file")


def safe_extract(
    archive: Path,
    target: Path,
    max_bytes: int = MAX_MODEL_BYTES,
    max_members: int = MAX_MODEL_MEMBERS,
) -> None:
    """Extract a (gzipped) tar into target, refusing anything unsafe before writing a byte."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = []
            total = 0
            for member in tar:
                check_member(member)
                total += member.size if member.isfile() else 0
                if total > max_bytes:
                    raise ModelArchiveError(f"archive unpacks to more than {max_bytes} bytes")
                members.append(member)
                if len(members) > max_members:
                    raise ModelArchiveError(f"archive has more than {max_members} members")
            # The stdlib "data" filter re-checks every path against the disk as it extracts.
            tar.extractall(target, members=members, filter="data")
    except ModelArchiveError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as exc:
        raise ModelArchiveError(f"not a valid tar.gz archive ({exc})") from exc
