"""`make up BACKEND=docker`: the compose stack (LocalStack 4.14.0 + sagemaker-local).

`docker compose` does the starting and stopping; this module checks that an engine answers and
writes the `local` profile for the ports Docker published.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from scones.settings import REPO_ROOT
from scones.stack import StackError
from services.local_aws.profile import write_profile


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


def run(command: str, state_dir: Path) -> int:
    """`up`, `down`, `status` or `env` for the compose stack; the exit status."""
    if not docker_engine_available():
        print(
            "BACKEND=docker needs a running Docker engine, and none answers `docker info`.\n"
            "Start Docker, or use the default embedded backend: make up",
            file=sys.stderr,
        )
        return 2
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
