"""The Python >= 3.12 environment that runs LocalStack 4.14.0 as a host process (no Docker).

LocalStack 4.14.0 needs Python >= 3.12 (its stores use PEP 695 syntax: on 3.11 health answers
200 but every call is a 500). The project's own venv is 3.11, so LocalStack gets a venv of its
own, made from an interpreter found on the machine (`SCONES_LOCALSTACK_PYTHON`, then `python3.13`
/ `python3.12` on PATH, then pyenv builds) and installed with LocalStack's own runtime pins as
constraints. A stamp records what was installed; a second call with the same inputs does nothing.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCALSTACK_VERSION = "4.14.0"
REQUIREMENT = f"localstack-core[runtime]=={LOCALSTACK_VERSION}"
CONSTRAINTS = Path(__file__).with_name(f"constraints-{LOCALSTACK_VERSION}.txt")
MIN_PYTHON = (3, 12)
DEFAULT_VENV = REPO_ROOT / ".state" / "localstack-host" / f"venv-{LOCALSTACK_VERSION}"
STAMP_NAME = ".scones-installed.json"
INSTALL_TIMEOUT_S = 1800


class EnvironmentUnavailable(RuntimeError):
    """No interpreter >= 3.12 exists on this machine: the reason says where it looked."""


class InstallFailed(RuntimeError):
    """Creating the venv or installing LocalStack failed; the message holds pip's output."""


@dataclass(frozen=True)
class LocalStackEnvironment:
    """A ready venv: its interpreter, and how long this call spent installing (0 when cached)."""

    venv: Path
    python: Path
    python_version: str
    install_seconds: float

    @property
    def installed_now(self) -> bool:
        """Whether this call installed the environment (False: the stamp matched)."""
        return self.install_seconds > 0


def _version_of(python: str) -> tuple[int, int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import ensurepip, sys, venv; print(*sys.version_info[:3])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        major, minor, micro = (int(part) for part in out.split())
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return major, minor, micro


def candidate_pythons() -> list[str]:
    """Interpreters to try, most preferred first (3.13: LocalStack compiles its pins with it)."""
    explicit = os.environ.get("SCONES_LOCALSTACK_PYTHON", "").strip()
    if explicit:
        return [explicit]
    found = [path for name in ("python3.13", "python3.12") if (path := shutil.which(name))]
    roots = {os.environ.get("PYENV_ROOT", ""), str(Path.home() / ".pyenv"), "/root/.pyenv"}
    for root in sorted(filter(None, roots)):
        for minor in ("3.13", "3.12"):
            found += sorted(glob.glob(f"{root}/versions/{minor}.*/bin/python{minor}"), reverse=True)
    return list(dict.fromkeys(found))


def find_python() -> tuple[str, str]:
    """The first candidate that is >= 3.12 and has `venv` and `ensurepip`: (path, version)."""
    tried = candidate_pythons()
    for python in tried:
        version = _version_of(python)
        if version and version[:2] >= MIN_PYTHON:
            return python, ".".join(map(str, version))
    looked = ", ".join(tried) or "python3.13/python3.12 on PATH and pyenv's versions/ folders"
    raise EnvironmentUnavailable(
        f"LocalStack {LOCALSTACK_VERSION} in host mode needs Python >= 3.12 (with venv and "
        "ensurepip), and none "
        f"was found (looked at: {looked}). Install one (e.g. `pyenv install 3.13`) or set "
        "SCONES_LOCALSTACK_PYTHON to its path."
    )


def _wanted_stamp(python: str, version: str) -> dict[str, str]:
    return {
        "requirement": REQUIREMENT,
        "constraints_sha256": hashlib.sha256(CONSTRAINTS.read_bytes()).hexdigest(),
        "python": python,
        "python_version": version,
    }


def _run(command: list[str], what: str) -> None:
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise InstallFailed(f"{what}: no result after {INSTALL_TIMEOUT_S}s") from error
    if result.returncode != 0:
        # pip's find-links warnings drown the error: keep the lines that are not warnings.
        lines = [line for line in result.stderr.splitlines() if not line.startswith("WARNING")]
        raise InstallFailed(f"{what} failed ({result.returncode}):\n" + "\n".join(lines[-30:]))


def ensure_environment(venv: Path | None = None) -> LocalStackEnvironment:
    """Create (once) the LocalStack venv; idempotent, safe against a concurrent caller."""
    venv = Path(venv or os.environ.get("SCONES_LOCALSTACK_VENV", "").strip() or DEFAULT_VENV)
    python, version = find_python()
    wanted = _wanted_stamp(python, version)
    venv.parent.mkdir(parents=True, exist_ok=True)
    stamp = venv / STAMP_NAME
    interpreter = venv / "bin" / "python"
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        # Two callers (make up and a test session) must not install into one folder at once.
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if stamp.exists() and json.loads(stamp.read_text()) == wanted:
                return LocalStackEnvironment(venv, interpreter, version, 0.0)
        except (OSError, ValueError):
            pass
        started = time.monotonic()
        # A stale or half-installed venv is replaced whole: pip cannot be trusted to repair it.
        shutil.rmtree(venv, ignore_errors=True)
        _run([python, "-m", "venv", str(venv)], f"creating {venv} with {python}")
        _run(
            [
                str(interpreter),
                *("-m", "pip", "install", "-q", "--disable-pip-version-check"),
                REQUIREMENT,
                *("-c", str(CONSTRAINTS)),
            ],
            f"installing {REQUIREMENT}",
        )
        stamp.write_text(json.dumps(wanted, indent=2) + "\n")
        return LocalStackEnvironment(venv, interpreter, version, time.monotonic() - started)
