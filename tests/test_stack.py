"""`make up / down / status` (scones.stack): real services, pid files that name a process.

A pid file is trusted only while its pid is still the process it names, so `down` never signals
a program that reused the pid; a state folder used by a stack on other ports is refused.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from scones import stack
from scones.settings import Settings
from scones.stack import PidRecord, ProcessIdentity, StackError, free_port, state_lock


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated program, in its own session, that nothing here may kill."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True
    )
    try:
        yield process
    finally:
        stack.stop_process_group(process, timeout=5)


def _settings(tmp_path: Path) -> Settings:
    aws_port = free_port()
    # Two free ports, not one port twice (the kernel may hand a just-closed port out again).
    sagemaker_port = next(p for p in iter(free_port, None) if p != aws_port)
    return Settings(
        state_dir=tmp_path / "state", local_aws_port=aws_port, sagemaker_local_port=sagemaker_port
    )


def test_identity_tells_a_process_from_a_reused_pid(
    bystander: subprocess.Popen[bytes],
) -> None:
    identity = ProcessIdentity.of(bystander.pid)
    assert identity is not None and identity.cmdline[0] == sys.executable
    assert PidRecord(identity, "http://127.0.0.1:1").alive()
    reused = replace(identity, start_ticks=identity.start_ticks + 1)
    assert not PidRecord(reused, "http://127.0.0.1:1").alive()
    assert not PidRecord(replace(identity, cmdline=("other",)), "http://127.0.0.1:1").alive()


def test_down_never_signals_a_process_that_reused_the_pid(
    tmp_path: Path, bystander: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _settings(tmp_path)
    identity = ProcessIdentity.of(bystander.pid)
    assert identity is not None
    # What a pid file looks like after a reboot: the same pid, now another program.
    pid_file = settings.state_dir / "run" / "local_aws.pid"
    stale = replace(identity, cmdline=(sys.executable, "-m", "services.local_aws"))
    PidRecord(stale, f"http://127.0.0.1:{settings.local_aws_port}").write(pid_file)
    stack.down(settings, timeout_s=1)
    assert bystander.poll() is None, "make down killed an unrelated process"
    assert not pid_file.exists()
    assert "not ours" in capsys.readouterr().out


def test_a_folder_in_use_by_another_stack_is_refused(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    settings = _settings(tmp_path)
    identity = ProcessIdentity.of(bystander.pid)
    assert identity is not None
    pid_file = settings.state_dir / "run" / "local_aws.pid"
    PidRecord(identity, "http://127.0.0.1:1").write(pid_file)  # alive, on another port
    with pytest.raises(StackError, match="belongs to another stack"):
        stack.up(settings)
    assert PidRecord.read(pid_file) == PidRecord(identity, "http://127.0.0.1:1")
    assert not (settings.state_dir / "run" / "sagemaker_local.pid").exists()


def test_one_control_operation_at_a_time_per_folder(tmp_path: Path) -> None:
    with state_lock(tmp_path), pytest.raises(StackError, match="right now"), state_lock(tmp_path):
        pass
    with state_lock(tmp_path):  # released: taken again
        pass


def test_malformed_pid_files_are_not_trusted(tmp_path: Path) -> None:
    pid_file = tmp_path / "x.pid"
    for content in ("", "1234\n", '{"pid": "x"}', "[]"):
        pid_file.write_text(content)
        assert PidRecord.read(pid_file) is None


@pytest.mark.slow
def test_up_status_down_start_and_stop_the_real_services(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _settings(tmp_path)
    try:
        stack.up(settings)
        records = [
            PidRecord.read(settings.state_dir / "run" / f"{name}.pid")
            for name in ("local_aws", "sagemaker_local")
        ]
        assert all(r is not None and r.alive() for r in records)
        assert stack.status(settings)
        with state_lock(settings.state_dir):  # the services did not inherit the lock
            pass
        stack.up(settings)  # a second `make up` leaves them alone
        assert "already running" in capsys.readouterr().out
        assert [PidRecord.read(settings.state_dir / "run" / f"{n}.pid") for n in
                ("local_aws", "sagemaker_local")] == records  # fmt: skip
    finally:
        stack.down(settings)
    assert all(r is not None and not r.alive() for r in records)
    assert not stack.status(settings)


def test_when_one_service_fails_to_start_the_others_started_with_it_are_stopped(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    persist = settings.state_dir / "local_aws" / "persist"
    persist.mkdir(parents=True)
    (persist / "iam.pkl").write_bytes(b"not a snapshot")  # the emulator's restore fails
    with pytest.raises(StackError, match="exited"):
        stack.up(settings)
    # sagemaker-local was started at the same time (it retries STS): stopped, no pid file left.
    for name in ("local_aws", "sagemaker_local"):
        assert not (settings.state_dir / "run" / f"{name}.pid").exists()
    assert (settings.state_dir / "logs" / "sagemaker_local.log").exists(), "never started"
    assert _processes_using(settings.state_dir) == []
    assert not stack.status(settings)


def _processes_using(state_dir: Path) -> list[int]:
    """Live processes whose command line names `state_dir`."""
    found = []
    for entry in Path("/proc").iterdir():
        identity = ProcessIdentity.of(int(entry.name)) if entry.name.isdigit() else None
        if identity is not None and any(str(state_dir) in part for part in identity.cmdline):
            found.append(identity.pid)
    return found
