"""Start, check and stop LocalStack 4.14.0 as a host process (its own process group).

The settings are the ones host mode needs on this kind of machine, each for a measured reason:
- `OVERRIDE_IN_DOCKER=0`: the machine has `/.dockerenv`, and LocalStack would otherwise take
  container paths and networking;
- `DNS_ADDRESS=0`: no DNS server of its own (it would want port 53);
- `SKIP_SSL_CERT_DOWNLOAD=1`: no internet, so no certificate download at start;
- `events` among `SERVICES`: Step Functions logs an ERROR on every execution without it.
Ready means more than health: a real STS GetCallerIdentity must answer with an account.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import boto3
from botocore.config import Config

from services.service_process import spawn_logged

from .environment import LOCALSTACK_VERSION, LocalStackEnvironment

SERVICES = ("s3", "lambda", "stepfunctions", "iam", "sts", "logs", "events")
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
# LocalStack accepts any keys; these are its documented dummies, not secrets.
DUMMY_KEY = "test"


class LocalStackNotReady(RuntimeError):
    """LocalStack exited or did not become ready; the message ends with its log."""


@dataclass(frozen=True)
class RunningLocalStack:
    """A started LocalStack: where it answers, its process group, its log, what STS says."""

    endpoint_url: str
    pid: int
    log_path: str
    account: str
    ready_seconds: float
    # The kernel's start time of the process: a recycled pid is not mistaken for it.
    start_ticks: int

    def alive(self) -> bool:
        """Whether this very process still runs."""
        return alive(self.pid) and start_ticks(self.pid) == self.start_ticks


def settings(port: int, state_dir: Path) -> dict[str, str]:
    """The environment LocalStack runs with (host mode, loopback only, state under state_dir)."""
    return {
        "SERVICES": ",".join(SERVICES),
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        # URLs LocalStack hands out (queue URLs, presigned URLs) must resolve offline.
        "LOCALSTACK_HOST": f"127.0.0.1:{port}",
        "OVERRIDE_IN_DOCKER": "0",
        "DNS_ADDRESS": "0",
        "SKIP_SSL_CERT_DOWNLOAD": "1",
        "FILESYSTEM_ROOT": str(state_dir / "filesystem"),
        # No usage reports leave the machine (and none could: it is offline).
        "DISABLE_EVENTS": "1",
    }


def _tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _health(endpoint_url: str) -> dict[str, object] | None:
    with (
        contextlib.suppress(OSError, ValueError),
        urllib.request.urlopen(f"{endpoint_url}/_localstack/health", timeout=2) as response,
    ):
        return dict(json.loads(response.read()))
    return None


def caller_account(endpoint_url: str) -> str:
    """The account STS reports at endpoint_url (a real signed GetCallerIdentity call)."""
    # The launcher checks the emulator before any profile points at it, hence endpoint_url here.
    sts = boto3.client(
        "sts",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=DUMMY_KEY,
        aws_secret_access_key=DUMMY_KEY,
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=30),
    )
    return str(sts.get_caller_identity()["Account"])


def wait_ready(
    endpoint_url: str, process: subprocess.Popen[bytes], log_path: Path, started: float
) -> str:
    """Poll health (version and services) then STS; return the account. Fail on exit/timeout."""
    deadline = started + READY_TIMEOUT_S
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LocalStackNotReady(
                f"LocalStack exited with {process.returncode}; log {log_path}:\n{_tail(log_path)}"
            )
        health = _health(endpoint_url)
        if health is not None:
            states = health.get("services", {})
            missing = [s for s in SERVICES if not isinstance(states, dict) or s not in states]
            if health.get("version") != LOCALSTACK_VERSION:
                last_error = f"health reports version {health.get('version')!r}"
            elif missing:
                last_error = f"health lacks services {missing}"
            else:
                try:
                    return caller_account(endpoint_url)
                except Exception as error:  # any failure here means "not ready yet"
                    last_error = f"STS GetCallerIdentity: {error}"
        time.sleep(0.1)
    stop(process.pid)
    raise LocalStackNotReady(
        f"LocalStack not ready after {READY_TIMEOUT_S:.0f}s ({last_error}); log {log_path}:\n"
        + _tail(log_path)
    )


def start(environment: LocalStackEnvironment, state_dir: Path, port: int) -> RunningLocalStack:
    """Start LocalStack on 127.0.0.1:port in a new process group; return once STS answers."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "localstack.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LOCALSTACK_"))}
    # LocalStack reads every config name also with a LOCALSTACK_ prefix: none may leak in.
    env.update(settings(port, state_dir))
    started = time.monotonic()
    process = spawn_logged(
        [str(environment.python), "-m", "localstack.runtime.main"], log_path, state_dir, env
    )
    endpoint_url = f"http://127.0.0.1:{port}"
    try:
        account = wait_ready(endpoint_url, process, log_path, started)
    except BaseException:
        stop(process.pid)
        raise
    ticks = start_ticks(process.pid) or 0
    return RunningLocalStack(
        endpoint_url, process.pid, str(log_path), account, time.monotonic() - started, ticks
    )


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    return True


def stop(pid: int, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """SIGTERM the process group, then SIGKILL it after timeout_s; True if it stopped in time."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap our own child so it does not linger as a zombie
        if not alive(pid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    return False


def write_state(path: Path, running: RunningLocalStack) -> None:
    """Record a started LocalStack (for `down`, `env`, `status` from another process)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(running), indent=2) + "\n")


def read_state(path: Path) -> RunningLocalStack | None:
    """The recorded LocalStack, or None when none was recorded."""
    try:
        return RunningLocalStack(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
