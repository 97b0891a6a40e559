"""The serving environment: which interpreter model servers run with, and what it serves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scones.settings import REPO_ROOT
from scones.stack import free_port
from services.model_server import environment
from services.sagemaker_local import model_server_process
from tests.model_server_harness import (
    DEADLINE_S,
    expected_probabilities,
    invoke,
    png_bytes,
    request,
    wait_until,
    write_model_dir,
)


def _fake_venv(root: Path, stamp: str | None) -> Path:
    """A venv folder whose interpreter is this one, stamped with `stamp` (None: unstamped)."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python").symlink_to(sys.executable)
    if stamp is not None:
        (root / ".installed").write_text(stamp)
    return root


def test_a_venv_counts_only_when_installed_from_the_current_requirements(tmp_path: Path) -> None:
    current = environment._digest()
    installed = _fake_venv(tmp_path / "installed", current)
    assert environment.installed_python(installed) == installed / "bin" / "python"
    assert environment.serving_python(installed) == str(installed / "bin" / "python")
    for name, stamp in (("unstamped", None), ("stale", "0" * 64)):
        venv = _fake_venv(tmp_path / name, stamp)
        assert environment.installed_python(venv) is None, name
        assert environment.serving_python(venv) == sys.executable, name
    assert environment.serving_python(tmp_path / "missing") == sys.executable


def test_the_stamp_follows_the_image_requirements(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(environment.REQUIREMENTS.read_text())
    monkeypatch.setattr(environment, "REQUIREMENTS", requirements)
    venv = _fake_venv(tmp_path / "venv", environment._digest())
    assert environment.installed_python(venv) is not None
    requirements.write_text(requirements.read_text() + "tqdm==4.67.1\n")  # the image changed
    assert environment.installed_python(venv) is None


def test_sagemaker_local_starts_model_servers_with_the_serving_interpreter(
    tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    venv = _fake_venv(tmp_path / "venv", environment._digest())
    monkeypatch.setattr(environment, "SERVING_VENV", venv)
    monkeypatch.delenv("SAGEMAKER_LOCAL_SERVE_COMMAND", raising=False)
    command = model_server_process.serve_command()
    assert command == [str(venv / "bin" / "python"), "-m", "services.model_server"]
    monkeypatch.setenv("SAGEMAKER_LOCAL_SERVE_COMMAND", "/opt/serve --flag")
    assert model_server_process.serve_command() == ["/opt/serve", "--flag"]


@pytest.mark.skipif(
    environment.installed_python() is None,
    reason="no serving venv (python -m services.model_server.environment)",
)
def test_the_serving_venv_serves_the_same_predictions_without_cuda_libraries(
    tmp_path: Path,
) -> None:
    model_dir = write_model_dir(tmp_path)
    port = free_port()
    python = str(environment.installed_python())
    log_path = tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [python, "-m", "services.model_server", "--model-dir", str(model_dir),
             "--port", str(port)],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env,
        )  # fmt: skip
    try:

        def ready() -> bool:
            assert process.poll() is None, log_path.read_text()
            try:
                return request(port, "GET", "/ping", timeout=2)[0] == 200
            except OSError:
                return False

        wait_until(ready, "/ping 200 from the serving venv's model server")
        image = png_bytes(3)
        status, _, body = invoke(port, image, accept="application/json")
        assert status == 200, body
        served = json.loads(body)
        expected = expected_probabilities(model_dir, image)  # this venv's torch, in-process
        assert len(served) == len(expected) == 1
        assert served[0] == pytest.approx(expected[0], abs=1e-5)
        children = subprocess.run(
            ["pgrep", "-P", str(process.pid)], capture_output=True, text=True, timeout=DEADLINE_S
        ).stdout.split()
        (worker,) = children
        mapped = Path(f"/proc/{worker}/maps").read_text()
        assert "libtorch_cpu.so" in mapped  # the worker has torch loaded ...
        assert "libtorch_cuda.so" not in mapped and "libcublas" not in mapped  # ... the CPU build
    finally:
        process.terminate()
        process.wait(timeout=DEADLINE_S)
