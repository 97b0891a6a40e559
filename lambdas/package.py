"""Build each Lambda function's deployable zip, byte for byte reproducibly.

The same `app.py` always gives the same zip and so the same `CodeSha256` (base64 of the zip's
SHA-256, as Lambda reports it), which lets the deploy update a function's code only when it changed.

    python -m lambdas.package --out build/lambdas
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import zipfile
from pathlib import Path

from scones.workflow_functions import WORKFLOW_FUNCTIONS

LAMBDAS_DIR = Path(__file__).resolve().parent
# The function folders, in the workflow table's order (the table is the one list of functions).
FUNCTIONS = tuple(function.folder for function in WORKFLOW_FUNCTIONS)
SOURCE_FILES = ("app.py",)
# Fixed metadata: the zip holds nothing of when or by whom it was built.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o100644  # a regular file, rw-r--r--
COMPRESS_LEVEL = 9


def code_sha256(zip_bytes: bytes) -> str:
    """The zip's SHA-256 in base64, as Lambda reports `CodeSha256`."""
    return base64.b64encode(hashlib.sha256(zip_bytes).digest()).decode("ascii")


def build_zip(function: str, lambdas_dir: Path = LAMBDAS_DIR) -> tuple[bytes, str]:
    """The function's deployable zip and its `CodeSha256`."""
    if function not in FUNCTIONS:
        raise ValueError(f"unknown function {function!r}; expected one of {', '.join(FUNCTIONS)}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(SOURCE_FILES):
            entry = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
            entry.create_system = 3  # unix, so the mode bits below are honoured
            entry.external_attr = FILE_MODE << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            data = (lambdas_dir / function / name).read_bytes()
            archive.writestr(entry, data, compresslevel=COMPRESS_LEVEL)
    zip_bytes = buffer.getvalue()
    return zip_bytes, code_sha256(zip_bytes)


def build_all(lambdas_dir: Path = LAMBDAS_DIR) -> dict[str, tuple[bytes, str]]:
    """Every function's `(zip_bytes, code_sha256)`, by function name."""
    return {function: build_zip(function, lambdas_dir) for function in FUNCTIONS}


def write_zips(out_dir: Path, lambdas_dir: Path = LAMBDAS_DIR) -> dict[str, Path]:
    """Write `<function>.zip` for every function into `out_dir`; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for function, (zip_bytes, _) in build_all(lambdas_dir).items():
        path = out_dir / f"{function}.zip"
        path.write_bytes(zip_bytes)
        paths[function] = path
    return paths


def main(argv: list[str] | None = None) -> None:
    """CLI: write the zips and print each one's size and CodeSha256."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build/lambdas"), help="output folder")
    args = parser.parse_args(argv)
    paths = write_zips(args.out)
    for path in paths.values():
        zip_bytes = path.read_bytes()
        print(f"{path}  {len(zip_bytes):>6} bytes  CodeSha256={code_sha256(zip_bytes)}")


if __name__ == "__main__":
    main()
