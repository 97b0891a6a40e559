"""Shared fixtures: real local services on free ports, in temporary folders, always stopped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.local_aws.profile import write_profile

REPO_ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 60.0


@dataclass
class LocalAws:
    """A running emulator and the environment (profile) that points boto3 at it."""

    endpoint_url: str
    state_dir: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """The emulator's log so far (for failure messages)."""
        return self.log_path.read_text(errors="replace")


def wait_until_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Poll a health URL until it answers 200; fail early if the process dies."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"service exited with {process.returncode}:\n{log_path.read_text(errors='replace')}"
            )
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {STARTUP_TIMEOUT_S}s")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, wait, then SIGKILL the whole process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def start_local_aws(state_dir: Path, extra_args: list[str] | None = None) -> LocalAws:
    """Start `python -m services.local_aws` on a free port; return once healthy."""
    state_dir.mkdir(parents=True, exist_ok=True)
    ready_file = state_dir / "local_aws.ready.json"
    ready_file.unlink(missing_ok=True)
    log_path = state_dir / "local_aws.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.local_aws",
                "--port",
                "0",
                "--state-dir",
                str(state_dir),
                "--ready-file",
                str(ready_file),
                *(extra_args or []),
            ],
            cwd=REPO_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not ready_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            raise RuntimeError(f"local_aws did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.05)
    endpoint_url = json.loads(ready_file.read_text())["endpoint_url"]
    wait_until_ready(f"{endpoint_url}/_local_aws/health", process, log_path)
    env = write_profile(state_dir / "profile", endpoint_url)
    return LocalAws(endpoint_url, state_dir, env, process, log_path)


def reset_boto3() -> None:
    """Forget boto3's default session: it caches the config file of the profile it first saw."""
    import boto3

    boto3.DEFAULT_SESSION = None


@contextlib.contextmanager
def selected_profile(env: dict[str, str], hide: tuple[str, ...] = ()) -> Iterator[None]:
    """Select a profile in os.environ (nothing else may steer boto3), then restore everything."""
    saved = {name: os.environ.get(name) for name in env}
    hidden = {
        name: os.environ.pop(name)
        for name in list(os.environ)
        if name.startswith("AWS_ENDPOINT_URL") or name in hide
    }
    os.environ.update(env)
    reset_boto3()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        os.environ.update(hidden)
        reset_boto3()


@pytest.fixture(scope="session")
def local_aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAws]:
    """A real emulator for the whole session, with the `local` profile selected in os.environ."""
    emulator = start_local_aws(tmp_path_factory.mktemp("local_aws"))
    try:
        with selected_profile(emulator.env, hide=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")):
            yield emulator
    finally:
        stop_process(emulator.process)


def free_port() -> int:
    """A port free right now on 127.0.0.1 (the kernel picks it)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class LocalStack:
    """The whole embedded stack: emulator + sagemaker-local, and the profile selecting both."""

    aws: LocalAws
    sagemaker_url: str
    sagemaker: subprocess.Popen[bytes]
    env: dict[str, str]
    state_dir: Path


def start_local_stack(state_dir: Path) -> LocalStack:
    """Start the emulator (its Lambdas sent to sagemaker-local) and sagemaker-local; wait."""
    sagemaker_port = free_port()
    sagemaker_url = f"http://127.0.0.1:{sagemaker_port}"
    aws = start_local_aws(
        state_dir / "local_aws",
        [
            "--lambda-env",
            f"AWS_ENDPOINT_URL_SAGEMAKER={sagemaker_url}",
            "--lambda-env",
            f"AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME={sagemaker_url}",
        ],
    )
    env = write_profile(state_dir / "profile", aws.endpoint_url, sagemaker_url)
    process_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    process_env.update(env, SAGEMAKER_LOCAL_CAPTURE_FLUSH_SECONDS="1")
    log_path = state_dir / "sagemaker_local.log"
    with open(log_path, "ab") as log_file:
        sagemaker = subprocess.Popen(
            [sys.executable, "-m", "services.sagemaker_local", "--port", str(sagemaker_port),
             "--state-dir", str(state_dir / "sagemaker_local")],
            cwd=REPO_ROOT, env=process_env, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_until_ready(f"{sagemaker_url}/_health", sagemaker, log_path)
    except Exception:
        stop_process(sagemaker)
        stop_process(aws.process)
        raise
    return LocalStack(aws, sagemaker_url, sagemaker, env, state_dir)


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The embedded stack for one test module, its profile selected in os.environ."""
    stack = start_local_stack(tmp_path_factory.mktemp("stack"))
    try:
        with selected_profile(stack.env):
            yield stack
    finally:
        stop_process(stack.sagemaker, timeout=60)
        stop_process(stack.aws.process)
