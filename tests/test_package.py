"""Lambda packaging: one zip per function, holding only app.py, the same bytes every time."""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import os
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

from lambdas import package


@pytest.mark.parametrize("function", package.FUNCTIONS)
def test_zip_holds_only_app_py_with_fixed_metadata(function: str) -> None:
    zip_bytes, _ = package.build_zip(function)
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
        assert archive.testzip() is None
        entries = archive.infolist()
        assert [e.filename for e in entries] == ["app.py"]
        entry = entries[0]
        assert entry.date_time == (1980, 1, 1, 0, 0, 0)
        assert entry.external_attr >> 16 == 0o100644
        assert entry.compress_type == zipfile.ZIP_DEFLATED
        source = package.LAMBDAS_DIR / function / "app.py"
        assert archive.read("app.py") == source.read_bytes()


@pytest.mark.parametrize("function", package.FUNCTIONS)
def test_code_sha256_is_lambdas_base64_digest(function: str) -> None:
    zip_bytes, sha = package.build_zip(function)
    assert sha == base64.b64encode(hashlib.sha256(zip_bytes).digest()).decode()
    assert len(base64.b64decode(sha)) == 32


def test_same_code_gives_same_bytes_whatever_the_file_times_and_modes(tmp_path: Path) -> None:
    before = package.build_all()
    copy = tmp_path / "lambdas"
    shutil.copytree(package.LAMBDAS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for function in package.FUNCTIONS:
        app = copy / function / "app.py"
        os.utime(app, (1_700_000_000, 1_700_000_000))
        app.chmod(0o600)
    assert package.build_all(copy) == before


def test_changed_code_changes_the_digest(tmp_path: Path) -> None:
    copy = tmp_path / "lambdas"
    shutil.copytree(package.LAMBDAS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    app = copy / "filter_inferences" / "app.py"
    app.write_bytes(
        app.read_bytes().replace(b"DEFAULT_THRESHOLD = 0.93", b"DEFAULT_THRESHOLD = 0.9")
    )
    _, original = package.build_zip("filter_inferences")
    _, changed = package.build_zip("filter_inferences", copy)
    assert changed != original


def test_cli_writes_one_zip_per_function(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package.main(["--out", str(tmp_path)])
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(f"{f}.zip" for f in package.FUNCTIONS)
    out = capsys.readouterr().out
    for function, (zip_bytes, sha) in package.build_all().items():
        assert (tmp_path / f"{function}.zip").read_bytes() == zip_bytes
        assert f"CodeSha256={sha}" in out


def test_unknown_function_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown function"):
        package.build_zip("train_model")


@pytest.mark.parametrize("function", package.FUNCTIONS)
def test_functions_import_only_the_standard_library_and_boto3(function: str) -> None:
    tree = ast.parse((package.LAMBDAS_DIR / function / "app.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a zipped-alone app.py cannot import relatively"
            imported.add((node.module or "").split(".")[0])
    allowed = set(sys.stdlib_module_names) | {"__future__", "boto3", "botocore"}
    assert imported <= allowed, imported - allowed
