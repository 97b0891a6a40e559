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


@pytest.fixture(scope="session")
def local_aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAws]:
    """A real emulator for the whole session, with the `local` profile selected in os.environ."""
    emulator = start_local_aws(tmp_path_factory.mktemp("local_aws"))
    saved = {name: os.environ.get(name) for name in emulator.env}
    # Nothing else may steer boto3 away from the profile.
    hidden = {
        name: os.environ.pop(name)
        for name in list(os.environ)
        if name.startswith("AWS_ENDPOINT_URL")
        or name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    os.environ.update(emulator.env)
    try:
        yield emulator
    finally:
        stop_process(emulator.process)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        os.environ.update(hidden)
