"""Reproducible `.tar.gz` archives: the deploy's source tarball and SageMaker's `model.tar.gz`.

Entries are sorted, with fixed times, modes and owners, so the same files give the same bytes
(and so the same content-addressed names and S3 ETags).

    python -m scones.archives MODEL_DIR [OUT]   (OUT defaults to MODEL_DIR/../model.tar.gz)
"""

from __future__ import annotations

import argparse
import gzip
import io
import sys
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

# What SageMaker unpacks into /opt/ml/model for the project's serving hooks.
MODEL_FILES = (
    "model.pt",
    "model_config.json",
    "code/inference.py",
    "code/networks.py",
    "code/image_io.py",
)


class IncompleteModelError(Exception):
    """The model directory lacks a file a deployable model needs."""


def reproducible_tar_gz(root: Path, include: Callable[[Path], bool]) -> bytes:
    """A .tar.gz of `root` with sorted entries, fixed times and owners: same files, same bytes."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(filename="", fileobj=buffer, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in sorted(p for p in root.rglob("*") if p.is_file() and include(p)):
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            data = path.read_bytes()
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def pack_model(model_dir: Path, out_path: Path) -> Path:
    """Write model_dir's files into `out_path` in SageMaker's layout (deterministic bytes)."""
    missing = [name for name in MODEL_FILES if not (model_dir / name).is_file()]
    if missing:
        raise IncompleteModelError(f"{model_dir} has no {', '.join(missing)}; nothing to pack")
    archive = reproducible_tar_gz(
        model_dir, lambda p: "__pycache__" not in p.parts and not p.name.endswith(".partial")
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    partial.write_bytes(archive)
    partial.replace(out_path)  # readers never see half an archive
    return out_path


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: pack a model directory."""
    parser = argparse.ArgumentParser(
        prog="python -m scones.archives", description=__doc__.splitlines()[0]
    )
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path, nargs="?")
    args = parser.parse_args(argv)
    out = args.out or args.model_dir.resolve().parent / "model.tar.gz"
    try:
        pack_model(args.model_dir, out)
    except IncompleteModelError as exc:
        print(f"pack: {exc}", file=sys.stderr)
        return 1
    print(f"pack: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
