"""Durable file steps: write-then-rename leaves the whole new file and no temporary one."""

from __future__ import annotations

from pathlib import Path

from services.durable_files import atomic_write, fsync_dir


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.pkl"
    atomic_write(target, b"old")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["state.pkl"]
    fsync_dir(tmp_path)  # a folder can be synced on its own too
