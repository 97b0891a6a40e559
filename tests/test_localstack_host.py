"""The LocalStack host-mode launcher: its environment and `python -m services.localstack_host`.

The environment is the one tests/test_localstack_parity.py uses (cached under .state); these
tests check what a user meets: the reason when no Python >= 3.12 exists, a second install that
does nothing, and `up` / `status` / `env` / `down` on a free port.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from services.localstack_host.environment import (
    STAMP_NAME,
    EnvironmentUnavailable,
    LocalStackEnvironment,
    ensure_environment,
)
from services.localstack_host.host import RunningLocalStack, read_state, start_ticks, write_state
from tests.conftest import free_port, selected_profile

REPO_ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the launcher's CLI as a user would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "services.localstack_host", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def environment() -> LocalStackEnvironment:
    """The cached LocalStack environment; skipped where no Python >= 3.12 exists."""
    try:
        return ensure_environment()
    except EnvironmentUnavailable as error:
        pytest.skip(str(error))


@pytest.mark.parametrize("python", ["/nonexistent/python3.13", sys.executable])
def test_without_python_3_12_the_reason_is_clear(python: str, tmp_path: Path) -> None:
    # The project's own interpreter is 3.11: too old for LocalStack 4.14.0, so refused.
    result = cli(
        "install",
        extra_env={"SCONES_LOCALSTACK_PYTHON": python, "SCONES_LOCALSTACK_VENV": str(tmp_path)},
    )
    assert result.returncode == 2, result
    assert "needs Python >= 3.12" in result.stderr and python in result.stderr
    assert not (tmp_path / STAMP_NAME).exists()


def test_second_install_does_nothing(environment: LocalStackEnvironment) -> None:
    stamp = environment.venv / STAMP_NAME
    before = stamp.stat().st_mtime_ns
    again = ensure_environment()
    assert again.venv == environment.venv and not again.installed_now
    assert stamp.stat().st_mtime_ns == before
    version = subprocess.run(
        [str(again.python), "-c", "import localstack, sys; print(sys.version_info >= (3, 12))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.strip() == "True"


def test_cli_up_status_env_down(environment: LocalStackEnvironment, tmp_path: Path) -> None:
    ports = ("--port", str(free_port()), "--sagemaker-port", str(free_port()))
    up = cli("up", "--state-dir", str(tmp_path), *ports)
    record = tmp_path / "localstack-host" / "localstack.json"
    running = read_state(record)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "account 000000000000" in up.stdout and "only in Docker" in up.stdout
        assert "sagemaker_local  ready" in up.stdout
        assert running is not None and running.alive()
        again = cli("up", "--state-dir", str(tmp_path), *ports)
        assert again.stdout.count("already running") == 2, again.stdout + again.stderr
        assert read_state(record) == running
        assert cli("status", "--state-dir", str(tmp_path)).returncode == 0
        exports = cli("env", "--state-dir", str(tmp_path)).stdout.splitlines()
        env = dict(line.removeprefix("export ").split("=", 1) for line in exports)
        assert env["AWS_CONFIG_FILE"] == str(tmp_path / "aws" / "aws-config")
        with selected_profile(env, hide=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")):
            assert boto3.client("sts").get_caller_identity()["Account"] == "000000000000"
            # The profile reaches LocalStack's own S3, and SageMaker goes to sagemaker-local.
            s3 = boto3.client("s3")
            s3.create_bucket(Bucket="launcher-check")
            assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["launcher-check"]
            assert boto3.client("sagemaker").list_endpoints()["Endpoints"] == []
    finally:
        down = cli("down", "--state-dir", str(tmp_path))
    assert down.returncode == 0, down.stdout + down.stderr
    assert "localstack       stopped" in down.stdout, down.stdout
    assert "sagemaker_local  stopped" in down.stdout, down.stdout
    assert running is not None and not running.alive()
    assert cli("status", "--state-dir", str(tmp_path)).returncode == 3


def test_up_refuses_a_port_in_use(environment: LocalStackEnvironment, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        up = cli("up", "--state-dir", str(tmp_path), "--port", port, "--no-sagemaker-local")
    assert up.returncode == 1
    assert f"port {port} is in use" in up.stderr and "LOCALSTACK_PORT=" in up.stderr
    assert read_state(tmp_path / "localstack-host" / "localstack.json") is None


def test_down_never_signals_a_recycled_pid(tmp_path: Path) -> None:
    # A record whose pid now belongs to another process (same pid, other start time).
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        ticks = start_ticks(bystander.pid)
        assert ticks is not None
        record = tmp_path / "localstack-host" / "localstack.json"
        write_state(
            record, RunningLocalStack("http://127.0.0.1:1", bystander.pid, "", "", 0, ticks - 1)
        )
        (tmp_path / "localstack-host" / "sagemaker_local.pid").write_text(f"{bystander.pid} 1\n")
        assert cli("status", "--state-dir", str(tmp_path)).returncode == 3
        down = cli("down", "--state-dir", str(tmp_path))
        assert down.returncode == 0 and down.stdout.count("not running") == 2, down.stdout
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
