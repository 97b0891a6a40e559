"""Pack a model directory into `model.tar.gz` in SageMaker's layout.

    python -m model.pack MODEL_DIR [OUT]   (OUT defaults to MODEL_DIR/../model.tar.gz)

Files sit at the archive root (`model.pt`, `model_config.json`) with `code/inference.py` and
`code/networks.py` inside, which is what SageMaker unpacks into `/opt/ml/model`.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

REQUIRED = ("model.pt", "model_config.json", "code/inference.py", "code/networks.py")


class IncompleteModelError(Exception):
    """The model directory lacks a file a deployable model needs."""


def pack_model(model_dir: Path, out_path: Path) -> Path:
    """Write model_dir's files into a gzipped tar at out_path (deterministic bytes)."""
    missing = [name for name in REQUIRED if not (model_dir / name).is_file()]
    if missing:
        raise IncompleteModelError(f"{model_dir} has no {', '.join(missing)}; nothing to pack")
    files = sorted(
        p
        for p in model_dir.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".partial")
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    with (
        open(partial, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed,
        tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in files:
            info = tarfile.TarInfo(path.relative_to(model_dir).as_posix())
            info.size, info.mode = path.stat().st_size, 0o644
            with open(path, "rb") as f:
                tar.addfile(info, f)
    partial.replace(out_path)
    return out_path


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m model.pack", description=__doc__.splitlines()[0]
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
