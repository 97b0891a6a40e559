"""The host-mode stack: LocalStack 4.14.0 (S3, IAM, STS, Lambda, Step Functions, Logs, Events)
beside sagemaker-local, both host processes, and the `local` profile selecting them.

The layout under the state folder is the embedded stack's, so `make deploy` and
`eval "$(make -s env)"` work unchanged: the profile in `aws/`, sagemaker-local's state in
`sagemaker_local/`, LocalStack's files, pid records and logs in `localstack-host/`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from services.local_aws.profile import write_profile

from .environment import REPO_ROOT, ensure_environment
from .host import RunningLocalStack, alive, read_state, start, start_ticks, stop, write_state

READY_TIMEOUT_S = 90.0
LAMBDA_GAP = (
    "Lambda functions are created but never run here: LocalStack's free edition runs Lambda "
    "code only in Docker, so they end in State Failed (the deploy stops there, saying so)"
)


class HostStackError(RuntimeError):
    """The host-mode stack could not start or stop; the message says what to do."""


def _folder(state_dir: Path) -> Path:
    return state_dir / "localstack-host"


def _say(name: str, what: str) -> None:
    print(f"  {name:16} {what}")


def _port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _healthy(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
        return bool(response.status == 200)
    return False


def _read_pid(path: Path) -> int | None:
    """The recorded pid, if that very process (same start time) still runs."""
    try:
        pid, ticks = (int(part) for part in path.read_text().split())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) and start_ticks(pid) == ticks else None


def _free_or_fail(port: int, name: str, setting: str) -> None:
    if _port_in_use(port):
        raise HostStackError(
            f"port {port} is in use (the embedded stack, or another program), so {name} cannot "
            f"start. Stop it (make down) or choose another port: {setting}={port + 100}"
        )


def start_localstack(state_dir: Path, port: int) -> RunningLocalStack:
    """LocalStack, reused when the recorded one is alive; started (env created) otherwise."""
    folder = _folder(state_dir)
    running = read_state(folder / "localstack.json")
    if running and running.alive():
        _say("localstack", f"already running  pid {running.pid:<7} {running.endpoint_url}")
        return running
    _free_or_fail(port, "LocalStack", "LOCALSTACK_PORT")
    environment = ensure_environment()
    if environment.installed_now:
        _say("localstack", f"environment installed in {environment.install_seconds:.0f}s")
    running = start(environment, folder, port)
    write_state(folder / "localstack.json", running)
    _say(
        "localstack",
        f"ready in {running.ready_seconds:4.1f}s   pid {running.pid:<7} "
        f"{running.endpoint_url}  account {running.account}",
    )
    return running


def start_sagemaker_local(state_dir: Path, port: int, env: dict[str, str]) -> None:
    """sagemaker-local with S3/STS/Logs sent to LocalStack by the profile in env."""
    folder = _folder(state_dir)
    pid_file, log_path = folder / "sagemaker_local.pid", folder / "sagemaker_local.log"
    url = f"http://127.0.0.1:{port}"
    pid = _read_pid(pid_file)
    if pid and _healthy(f"{url}/_health"):
        _say("sagemaker_local", f"already running  pid {pid:<7} {url}")
        return
    _free_or_fail(port, "sagemaker-local", "SAGEMAKER_LOCAL_PORT")
    process_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    process_env.update(env)
    started = time.monotonic()
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.sagemaker_local", "--port", str(port),
             "--state-dir", str(state_dir / "sagemaker_local")],
            cwd=REPO_ROOT, env=process_env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    pid_file.write_text(f"{process.pid} {start_ticks(process.pid) or 0}\n")
    while not _healthy(f"{url}/_health"):
        if process.poll() is not None or time.monotonic() - started > READY_TIMEOUT_S:
            stop(process.pid)
            pid_file.unlink(missing_ok=True)
            last = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            raise HostStackError(f"sagemaker-local did not become healthy; {log_path}:\n{last}")
        time.sleep(0.1)
    _say(
        "sagemaker_local",
        f"ready in {time.monotonic() - started:4.1f}s   pid {process.pid:<7} {url}",
    )


def up(
    state_dir: Path,
    localstack_port: int,
    sagemaker_port: int | None,
    sagemaker_env: dict[str, str] | None = None,
) -> tuple[RunningLocalStack, dict[str, str]]:
    """Start LocalStack (and sagemaker-local unless sagemaker_port is None); write the profile.

    Returns the LocalStack record and the env selecting the profile; sagemaker_env adds
    variables to sagemaker-local's environment (tests shorten its capture flush interval).
    """
    _folder(state_dir).mkdir(parents=True, exist_ok=True)
    running = start_localstack(state_dir, localstack_port)
    sagemaker_url = f"http://127.0.0.1:{sagemaker_port}" if sagemaker_port else None
    env = write_profile(state_dir / "aws", running.endpoint_url, sagemaker_url)
    if sagemaker_port:
        start_sagemaker_local(state_dir, sagemaker_port, {**env, **(sagemaker_env or {})})
    print(f"  note: {LAMBDA_GAP}")
    return running, env


def down(state_dir: Path) -> None:
    """Stop sagemaker-local first (it flushes capture into LocalStack's S3), then LocalStack."""
    folder = _folder(state_dir)
    pid_file = folder / "sagemaker_local.pid"
    pid = _read_pid(pid_file)
    if pid:
        _say("sagemaker_local", f"{'stopped' if stop(pid, 60) else 'killed'} (pid {pid})")
    else:
        _say("sagemaker_local", "not running")
    pid_file.unlink(missing_ok=True)
    running = read_state(folder / "localstack.json")
    if running and running.alive():
        _say("localstack", f"{'stopped' if stop(running.pid) else 'killed'} (pid {running.pid})")
    else:
        _say("localstack", "not running")
    (folder / "localstack.json").unlink(missing_ok=True)


def status(state_dir: Path) -> bool:
    """Print what runs; True when LocalStack (and a recorded sagemaker-local) are alive."""
    folder = _folder(state_dir)
    running = read_state(folder / "localstack.json")
    ok = bool(running and running.alive())
    if running and ok:
        _say("localstack", f"running   pid {running.pid:<7} {running.endpoint_url}")
    else:
        _say("localstack", "stopped")
    pid_file = folder / "sagemaker_local.pid"
    pid = _read_pid(pid_file)
    if pid:
        _say("sagemaker_local", f"running   pid {pid}")
    elif pid_file.exists():
        ok = False
        _say("sagemaker_local", "stopped (stale pid file)")
    return ok


def profile_env(state_dir: Path) -> dict[str, str] | None:
    """The env selecting the profile `up` wrote, or None when none is written."""
    config = state_dir / "aws" / "aws-config"
    if not config.exists():
        return None
    return {
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": str(config.with_name("aws-credentials")),
        "AWS_PROFILE": "local",
    }
