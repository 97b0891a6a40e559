"""`make up / down / status / env`: run the local stack in the background and point AWS at it.

The embedded target runs two processes, each with a pid file and a log in the state folder:
`local_aws` (moto-based S3, IAM, STS, Lambda, Step Functions, Logs) and `sagemaker_local`
(SageMaker control plane and runtime). `up` writes the `local` profile (an AWS config and
credentials file) so that plain `aws ...` and `boto3.client(...)` reach them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from services.local_aws.profile import write_profile

from .settings import REPO_ROOT, load

READY_TIMEOUT_S = 60.0


class StackError(RuntimeError):
    """A stack operation failed; the message says what to do."""


@dataclass(frozen=True)
class Service:
    """One background process of the local stack."""

    name: str
    module: str
    port: int
    health_path: str
    args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        """Base URL of the service on loopback."""
        return f"http://127.0.0.1:{self.port}"


def services() -> list[Service]:
    """The embedded stack's services, in start order, with ports from the environment."""
    aws_port = int(os.environ.get("LOCAL_AWS_PORT", "4566"))
    sagemaker_port = int(os.environ.get("SAGEMAKER_LOCAL_PORT", "4570"))
    sagemaker_url = f"http://127.0.0.1:{sagemaker_port}"
    stack = [
        Service(
            "local_aws",
            "services.local_aws",
            aws_port,
            "/_local_aws/health",
            (
                "--lambda-env",
                f"AWS_ENDPOINT_URL_SAGEMAKER={sagemaker_url}",
                "--lambda-env",
                f"AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME={sagemaker_url}",
            ),
        )
    ]
    if (REPO_ROOT / "services" / "sagemaker_local" / "__main__.py").exists():
        stack.append(
            Service("sagemaker_local", "services.sagemaker_local", sagemaker_port, "/_health")
        )
    return stack


def _paths(state_dir: Path, service: Service) -> tuple[Path, Path]:
    return state_dir / "run" / f"{service.name}.pid", state_dir / "logs" / f"{service.name}.log"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return True


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _healthy(service: Service) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(service.url + service.health_path, timeout=1) as response:
            if response.status == 200:
                body = response.read()
                try:
                    return dict(json.loads(body))
                except ValueError:
                    return {}
    except OSError:
        return None
    return None


def _port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def profile_env(state_dir: Path) -> dict[str, str]:
    """Write the `local` profile for the current ports and return the env that selects it."""
    stack = services()
    aws = stack[0]
    sagemaker = next((s for s in stack if s.name == "sagemaker_local"), None)
    return write_profile(state_dir / "aws", aws.url, sagemaker.url if sagemaker else None)


def up(state_dir: Path) -> None:
    """Start every service that is not running, wait until healthy, write the profile."""
    state_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **profile_env(state_dir)}
    for name in [n for n in env if n.startswith("AWS_ENDPOINT_URL")]:
        del env[name]  # the profile decides, nothing else
    for service in services():
        pid_file, log_file = _paths(state_dir, service)
        pid = _read_pid(pid_file)
        if pid and _pid_alive(pid) and _healthy(service) is not None:
            print(f"  {service.name:16} already running  pid {pid:<7} {service.url}")
            continue
        if pid and not _pid_alive(pid):
            print(f"  {service.name:16} removing stale pid file (pid {pid} is gone)")
            pid_file.unlink(missing_ok=True)
        if _port_in_use(service.port):
            raise StackError(
                f"port {service.port} is in use by another program, "
                f"so {service.name} cannot start.\n"
                f"  find it:   ss -ltnp 'sport = :{service.port}'\n"
                f"  or choose another port, e.g. make up "
                f"{'LOCAL_AWS_PORT' if service.name == 'local_aws' else 'SAGEMAKER_LOCAL_PORT'}"
                f"={service.port + 100}"
            )
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(log_file, "ab") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    service.module,
                    "--port",
                    str(service.port),
                    "--state-dir",
                    str(state_dir / service.name),
                    *service.args,
                ],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pid_file.write_text(f"{process.pid}\n")
        deadline = started + READY_TIMEOUT_S
        while _healthy(service) is None:
            if process.poll() is not None:
                pid_file.unlink(missing_ok=True)
                raise StackError(
                    f"{service.name} exited with status {process.returncode}; see {log_file}:\n"
                    + _tail(log_file)
                )
            if time.monotonic() > deadline:
                raise StackError(
                    f"{service.name} not ready after {READY_TIMEOUT_S:.0f}s; see {log_file}"
                )
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        print(f"  {service.name:16} ready in {elapsed:4.1f}s   pid {process.pid:<7} {service.url}")


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def down(state_dir: Path, timeout_s: float = 20.0) -> None:
    """Stop every service started by `up` (SIGTERM, then SIGKILL after a grace period)."""
    for service in reversed(services()):
        pid_file, _ = _paths(state_dir, service)
        pid = _read_pid(pid_file)
        if pid is None:
            print(f"  {service.name:16} not running")
            continue
        if _pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                print(f"  {service.name:16} killed (did not stop within {timeout_s:.0f}s)")
            else:
                print(f"  {service.name:16} stopped (pid {pid})")
        else:
            print(f"  {service.name:16} was not running (stale pid {pid})")
        pid_file.unlink(missing_ok=True)


def status(state_dir: Path) -> bool:
    """Print what runs where; True when every service is healthy."""
    all_up = True
    for service in services():
        pid_file, log_file = _paths(state_dir, service)
        pid = _read_pid(pid_file)
        health = _healthy(service)
        if pid and _pid_alive(pid) and health is not None:
            detail = ", ".join(
                f"{k}={v}"
                for k, v in health.items()
                if k in ("uptime_s", "lambda_workers", "endpoints")
            )
            print(f"  {service.name:16} running   pid {pid:<7} {service.url}  {detail}")
        elif pid and _pid_alive(pid):
            all_up = False
            print(f"  {service.name:16} starting or unhealthy  pid {pid}  log {log_file}")
        else:
            all_up = False
            stale = f" (stale pid file: {pid})" if pid else ""
            print(f"  {service.name:16} stopped{stale}")
    config = state_dir / "aws" / "aws-config"
    print(f"  profile          local  ({config if config.exists() else 'not written yet'})")
    return all_up


def env_lines(state_dir: Path) -> str:
    """`export` lines selecting the `local` profile, for `eval "$(make -s env)"`."""
    env = profile_env(state_dir)
    bin_dir = Path(sys.executable).parent
    lines = [f"export {name}={value}" for name, value in env.items()]
    lines.append(f'export PATH="{bin_dir}:$PATH"')
    return "\n".join(lines)


def docker_engine_available() -> bool:
    """Whether a Docker engine answers (not merely the client being installed)."""
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "info"], capture_output=True, timeout=20)
    return result.returncode == 0


def compose_command() -> list[str]:
    """`docker compose` on the project's compose file."""
    return ["docker", "compose", "-f", str(REPO_ROOT / "docker-compose.yml")]


def compose_url(service: str, container_port: int) -> str:
    """Loopback URL of a compose service's published port, as Docker reports it (.env included)."""
    result = subprocess.run(
        [*compose_command(), "port", service, str(container_port)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise StackError(f"{service} publishes no port {container_port}: {result.stderr.strip()}")
    return f"http://127.0.0.1:{int(lines[-1].rpartition(':')[2])}"


def compose_profile_env(state_dir: Path) -> dict[str, str]:
    """Write the `local` profile for the compose stack (LocalStack, sagemaker-local)."""
    return write_profile(
        state_dir / "aws", compose_url("localstack", 4566), compose_url("sagemaker-local", 4570)
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m scripts.stack`."""
    parser = argparse.ArgumentParser(prog="python -m scripts.stack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    parser.add_argument("--backend", default=os.environ.get("BACKEND", "embedded"))
    args = parser.parse_args(argv)
    state_dir = load().state_dir
    if args.backend not in ("embedded", "docker"):
        print(
            f"unknown BACKEND={args.backend!r}: use embedded (default) or docker", file=sys.stderr
        )
        return 2
    if args.backend == "docker":
        if not docker_engine_available():
            print(
                "BACKEND=docker needs a running Docker engine, and none answers `docker info`.\n"
                "Start Docker, or use the default embedded backend: make up",
                file=sys.stderr,
            )
            return 2
        return _compose(args.command, state_dir)
    try:
        if args.command == "up":
            print(f"Starting the local stack (state in {state_dir})")
            up(state_dir)
            print(f"  profile          local  ({state_dir / 'aws' / 'aws-config'})")
            print('Use it:  eval "$(make -s env)"  then  aws s3 ls')
        elif args.command == "down":
            down(state_dir)
        elif args.command == "status":
            return 0 if status(state_dir) else 3
        else:
            print(env_lines(state_dir))
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _compose(command: str, state_dir: Path) -> int:
    if command == "down":
        return subprocess.call([*compose_command(), "down"], cwd=REPO_ROOT)
    if command == "status":
        code = subprocess.call([*compose_command(), "ps"], cwd=REPO_ROOT)
        config = state_dir / "aws" / "aws-config"
        print(f"  profile          local  ({config if config.exists() else 'not written yet'})")
        return code
    try:
        if command == "env":
            env = compose_profile_env(state_dir)
            print("\n".join(f"export {name}={value}" for name, value in env.items()))
            return 0
        # --build: the sagemaker-local image follows the working tree; --wait: healthchecks pass.
        code = subprocess.call([*compose_command(), "up", "-d", "--build", "--wait"], cwd=REPO_ROOT)
        if code != 0:
            return code
        compose_profile_env(state_dir)
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"  profile          local  ({state_dir / 'aws' / 'aws-config'})")
    print('Use it:  eval "$(make -s env BACKEND=docker)"  then  aws s3 ls')
    return 0


if __name__ == "__main__":
    sys.exit(main())
