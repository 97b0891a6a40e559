"""archive.safe_extract: untrusted tar archives unpacked without writing outside the target."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.sagemaker_local.archive import ModelArchiveError, safe_extract


def _tar_with(tmp_path: Path, add: Callable[[tarfile.TarFile], None]) -> Path:
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        add(tar)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", data: bytes = b"x") -> Any:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (("../escape.txt",), "'..'"),
        (("/etc/evil.txt",), "absolute"),
        (("link", tarfile.SYMTYPE, "../../outside"), "points outside"),
        (("link", tarfile.SYMTYPE, "/etc/passwd"), "points outside"),
        (("hard", tarfile.LNKTYPE, "../outside"), "points outside"),
        (("dev", tarfile.CHRTYPE), "device"),
        (("fifo", tarfile.FIFOTYPE), "device"),
    ],
)
def test_safe_extract_refuses_unsafe_members(tmp_path: Path, member: tuple, why: str) -> None:
    archive = _tar_with(tmp_path, lambda tar: tar.addfile(*_member(*member)))
    target = tmp_path / "model"
    with pytest.raises(ModelArchiveError, match=why):
        safe_extract(archive, target)
    assert not any(target.rglob("*")), "nothing may be written from an unsafe archive"
    assert not (tmp_path / "escape.txt").exists()


def test_safe_extract_keeps_inside_links_and_limits_size(tmp_path: Path) -> None:
    def add(tar: tarfile.TarFile) -> None:
        tar.addfile(*_member("code/inference.py", data=b"print(1)"))
        tar.addfile(*_member("code/current", tarfile.SYMTYPE, "inference.py"))

    archive = _tar_with(tmp_path, add)
    safe_extract(archive, tmp_path / "ok")
    assert (tmp_path / "ok" / "code" / "current").read_bytes() == b"print(1)"
    with pytest.raises(ModelArchiveError, match="more than 4 bytes"):
        safe_extract(archive, tmp_path / "small", max_bytes=4)
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(os.urandom(2048))
    with pytest.raises(ModelArchiveError, match=r"valid tar\.gz"):
        safe_extract(garbage, tmp_path / "garbage")
