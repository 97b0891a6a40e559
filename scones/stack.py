"""The one stack helper: start a service, wait for its health, stop its process group.

`make up / down / status / env` (`python -m scones.stack`), the test fixtures and the benchmarks
all start the local services through `start_service` + `wait_for_health` and stop them with
`stop_process_group`.

For `make up`, each service gets a pid file and a log in the state folder. A pid file is trusted
only while its pid is still the process it names (same command line and kernel start time), so a
reused pid is never signalled: `make down` cannot kill an unrelated program. The pid file also
records the service's URL, and a folder whose services answer elsewhere belongs to another stack:
`up` refuses to share it. Control operations on one folder take its lock (`stack.lock`).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, cast

from scones.settings import REPO_ROOT, Settings, SettingsError, load, variable_of
from services.local_aws.profile import write_profile
from services.service_process import spawn_logged

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
# Services are ready in ~0.2-1 s: a coarser poll would add up to its period to every start.
READY_POLL_S = 0.02


class StackError(RuntimeError):
    """A stack operation failed; the message says what to do."""


# --- the primitives: start, wait, stop --------------------------------------------------------


def free_port() -> int:
    """A port free right now on 127.0.0.1 (the kernel picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_service(
    module: str,
    args: Sequence[str],
    log_path: Path,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """`python -m module args...` in its own session (a process group), output to `log_path`."""
    return spawn_logged([sys.executable, "-m", module, *args], log_path, REPO_ROOT, env)


def health(url: str) -> dict[str, object] | None:
    """The health document at `url` when it answers 200 ({} when not JSON), else None."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            if response.status != 200:
                return None
            try:
                return dict(json.loads(response.read()))
            except ValueError:
                return {}
    except OSError:
        return None


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log, for an error message."""
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def wait_for_health(
    url: str,
    process: subprocess.Popen[bytes],
    log_path: Path,
    timeout_s: float = READY_TIMEOUT_S,
) -> None:
    """Poll a health URL until it answers 200; fail at once if the process exits."""
    deadline = time.monotonic() + timeout_s
    while health(url) is None:
        if process.poll() is not None:
            raise StackError(
                f"{process.args!r} exited with status {process.returncode}; "
                f"see {log_path}:\n{tail(log_path)}"
            )
        if time.monotonic() > deadline:
            raise StackError(f"{url} not ready after {timeout_s:.0f}s; see {log_path}")
        time.sleep(READY_POLL_S)


def wait_for_file(
    path: Path, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float
) -> None:
    """Wait until a service writes `path` (its ready file); fail if it exits first."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process_group(process)
            raise StackError(f"{process.args!r} did not start; see {log_path}:\n{tail(log_path)}")
        time.sleep(READY_POLL_S)


def stop_process_group(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the process, wait `timeout` seconds, then SIGKILL its whole process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


# --- pid files that name a process, not a number ----------------------------------------------


@dataclass(frozen=True)
class ProcessIdentity:
    """What tells one process from a later one with the same pid."""

    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22: start time after boot, in clock ticks
    cmdline: tuple[str, ...]

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        """The identity of a live, non-zombie process, or None."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = stat.rpartition(")")[2].split()
        if not fields or fields[0] == "Z":
            return None
        cmdline = tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)
        return cls(pid, int(fields[19]), cmdline)


@dataclass(frozen=True)
class PidRecord:
    """A pid file's content: the process, and where the service answers."""

    identity: ProcessIdentity
    url: str

    def write(self, path: Path) -> None:
        """Write the record atomically."""
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "pid": self.identity.pid,
            "start_ticks": self.identity.start_ticks,
            "cmdline": list(self.identity.cmdline),
            "url": self.url,
        }
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(data) + "\n")
        partial.replace(path)

    @classmethod
    def read(cls, path: Path) -> PidRecord | None:
        """The record in `path`, or None when there is none or it is not one of ours."""
        try:
            data = json.loads(path.read_text())
            identity = ProcessIdentity(
                int(data["pid"]), int(data["start_ticks"]), tuple(map(str, data["cmdline"]))
            )
            return cls(identity, str(data["url"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def alive(self) -> bool:
        """Whether the pid is still this very process (not a reused pid)."""
        return ProcessIdentity.of(self.identity.pid) == self.identity


@contextlib.contextmanager
def state_lock(state_dir: Path) -> Iterator[IO[str]]:
    """Hold the state folder's lock; fail at once if another `make up/down` holds it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "stack.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(
                f"another `make up` or `make down` is working on {state_dir} right now"
            ) from None
        try:
            yield lock
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --- the embedded stack of `make up` ----------------------------------------------------------


@dataclass(frozen=True)
class Service:
    """One background process of the local stack."""

    name: str
    module: str
    port: int
    health_path: str
    port_setting: str  # the Settings field of its port
    args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        """Base URL of the service on loopback."""
        return f"http://127.0.0.1:{self.port}"


def services(settings: Settings) -> list[Service]:
    """The embedded stack's services, in start order."""
    sagemaker_url = f"http://127.0.0.1:{settings.sagemaker_local_port}"
    return [
        Service(
            "local_aws",
            "services.local_aws",
            settings.local_aws_port,
            "/_local_aws/health",
            "local_aws_port",
            (
                "--preload",  # sagemaker-local's STS call and the deploy follow at once
                "--lambda-env",
                f"AWS_ENDPOINT_URL_SAGEMAKER={sagemaker_url}",
                "--lambda-env",
                f"AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME={sagemaker_url}",
            ),
        ),
        Service(
            "sagemaker_local",
            "services.sagemaker_local",
            settings.sagemaker_local_port,
            "/_health",
            "sagemaker_local_port",
        ),
    ]


def _paths(state_dir: Path, service: Service) -> tuple[Path, Path]:
    return state_dir / "run" / f"{service.name}.pid", state_dir / "logs" / f"{service.name}.log"


def _port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def profile_env(settings: Settings) -> dict[str, str]:
    """Write the `local` profile for the configured ports and return the env that selects it."""
    aws, sagemaker = services(settings)
    return write_profile(settings.state_dir / "aws", aws.url, sagemaker.url)


def up(settings: Settings) -> None:
    """Start every service that is not running, wait until healthy, write the profile.

    Every service is checked before any starts; those to start are started together and then
    waited for (sagemaker-local retries STS until the emulator answers).
    """
    state_dir = settings.state_dir
    with state_lock(state_dir):
        env = {**os.environ, **profile_env(settings)}
        for name in [n for n in env if n.startswith("AWS_ENDPOINT_URL")]:
            del env[name]  # the profile decides, nothing else
        to_start = [s for s in services(settings) if not _running(s, state_dir)]
        starting = [_launch(service, state_dir, env) for service in to_start]
        for index, launched in enumerate(starting):
            try:
                launched.wait()
            except StackError:
                for later in starting[index + 1 :]:  # e.g. sagemaker-local waiting on STS
                    later.abandon()
                raise


def _running(service: Service, state_dir: Path) -> bool:
    """Whether `service` already runs here and answers; raise when it cannot be started."""
    pid_file, log_file = _paths(state_dir, service)
    record = PidRecord.read(pid_file)
    if record and record.alive():
        pid = record.identity.pid
        if record.url != service.url:
            raise StackError(
                f"{state_dir} belongs to another stack: its {service.name} (pid {pid}) answers "
                f"on {record.url}, not {service.url}.\n  stop that one first (make down with the "
                f"same ports), or give this stack its own folder: SCONES_STATE_DIR=..."
            )
        if health(service.url + service.health_path) is not None:
            print(f"  {service.name:16} already running  pid {pid:<7} {service.url}")
            return True
        raise StackError(
            f"{service.name} (pid {pid}) runs but does not answer {service.url}; "
            f"see {log_file}, or make down"
        )
    if pid_file.exists():
        print(f"  {service.name:16} removing stale pid file (its process is gone)")
        pid_file.unlink(missing_ok=True)
    if _port_in_use(service.port):
        raise StackError(
            f"port {service.port} is in use by another program, "
            f"so {service.name} cannot start.\n"
            f"  find it:   ss -ltnp 'sport = :{service.port}'\n"
            f"  or choose another port, e.g. make up "
            f"{variable_of(service.port_setting)}={service.port + 100}"
        )
    return False


@dataclass
class _Launched:
    """A service started by `up`, not yet known to be healthy."""

    service: Service
    process: subprocess.Popen[bytes]
    pid_file: Path
    log_file: Path
    started: float

    def wait(self) -> None:
        """Wait for its health; stopped and its pid file removed when it does not come up."""
        try:
            wait_for_health(
                self.service.url + self.service.health_path, self.process, self.log_file
            )
        except StackError:
            self.abandon()
            raise
        elapsed = time.monotonic() - self.started
        print(
            f"  {self.service.name:16} ready in {elapsed:4.1f}s   pid {self.process.pid:<7} "
            f"{self.service.url}"
        )

    def abandon(self) -> None:
        """Stop it and forget it (its pid file removed)."""
        self.pid_file.unlink(missing_ok=True)
        stop_process_group(self.process)


def _launch(service: Service, state_dir: Path, env: dict[str, str]) -> _Launched:
    pid_file, log_file = _paths(state_dir, service)
    started = time.monotonic()
    args = ["--port", str(service.port), "--state-dir", str(state_dir / service.name)]
    process = start_service(service.module, [*args, *service.args], log_file, env)
    forked = ProcessIdentity.of(process.pid)
    if forked is not None:
        # Read right after the fork, /proc may still show our own command line (the child has
        # not exec'd yet); its start time is already final. Record the command it runs.
        launched = cast("list[str]", process.args)  # start_service passes a list
        identity = replace(forked, cmdline=tuple(launched))
        PidRecord(identity, service.url).write(pid_file)
    return _Launched(service, process, pid_file, log_file, started)


def _signal_group(pid: int, signum: int) -> None:
    # Services start in their own session: their group id is their pid. Anything else is
    # not a group we made, so only the process itself is signalled.
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)


def down(settings: Settings, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop every service started by `up` (SIGTERM, then SIGKILL after a grace period)."""
    state_dir = settings.state_dir
    with state_lock(state_dir):
        for service in reversed(services(settings)):
            pid_file, _ = _paths(state_dir, service)
            record = PidRecord.read(pid_file)
            if record is None:
                print(f"  {service.name:16} not running")
                pid_file.unlink(missing_ok=True)
                continue
            pid = record.identity.pid
            if not record.alive():
                print(f"  {service.name:16} was not running (pid {pid} is gone or not ours)")
                pid_file.unlink(missing_ok=True)
                continue
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while record.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if record.alive():
                _signal_group(pid, signal.SIGKILL)
                print(f"  {service.name:16} killed (did not stop within {timeout_s:.0f}s)")
            else:
                print(f"  {service.name:16} stopped (pid {pid})")
            pid_file.unlink(missing_ok=True)


def status(settings: Settings) -> bool:
    """Print what runs where; True when every service is healthy."""
    all_up = True
    for service in services(settings):
        pid_file, log_file = _paths(settings.state_dir, service)
        record = PidRecord.read(pid_file)
        alive = record is not None and record.alive()
        document = health(service.url + service.health_path)
        pid = record.identity.pid if record else None
        if alive and document is not None:
            detail = ", ".join(
                f"{k}={v}"
                for k, v in document.items()
                if k in ("uptime_s", "lambda_workers", "endpoints")
            )
            print(f"  {service.name:16} running   pid {pid:<7} {service.url}  {detail}")
        elif alive:
            all_up = False
            print(f"  {service.name:16} starting or unhealthy  pid {pid}  log {log_file}")
        else:
            all_up = False
            stale = f" (stale pid file: {pid})" if pid else ""
            print(f"  {service.name:16} stopped{stale}")
    config = settings.state_dir / "aws" / "aws-config"
    print(f"  profile          local  ({config if config.exists() else 'not written yet'})")
    return all_up


def env_lines(settings: Settings) -> str:
    """`export` lines selecting the `local` profile, for `eval "$(make -s env)"`."""
    lines = [f"export {name}={value}" for name, value in profile_env(settings).items()]
    lines.append(f'export PATH="{Path(sys.executable).parent}:$PATH"')
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m scones.stack`."""
    parser = argparse.ArgumentParser(prog="python -m scones.stack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    parser.add_argument(
        "--backend", default=None, help="embedded (default), docker or localstack-host"
    )
    args = parser.parse_args(argv)
    try:
        settings = load()
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    backend = args.backend or settings.backend
    if backend not in ("embedded", "docker", "localstack-host"):
        print(
            f"unknown BACKEND={backend!r}: use embedded (default), docker or localstack-host",
            file=sys.stderr,
        )
        return 2
    if backend == "docker":
        from scones import compose

        return compose.run(args.command, settings.state_dir)
    if backend == "localstack-host":
        from services.localstack_host.__main__ import main as localstack_host

        return localstack_host(
            [args.command, "--state-dir", str(settings.state_dir),
             "--port", str(settings.local_aws_port),
             "--sagemaker-port", str(settings.sagemaker_local_port)]
        )  # fmt: skip
    try:
        if args.command == "up":
            print(f"Starting the local stack (state in {settings.state_dir})")
            up(settings)
            print(f"  profile          local  ({settings.state_dir / 'aws' / 'aws-config'})")
            print('Use it:  eval "$(make -s env)"  then  aws s3 ls')
        elif args.command == "down":
            down(settings)
        elif args.command == "status":
            return 0 if status(settings) else 3
        else:
            print(env_lines(settings))
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
