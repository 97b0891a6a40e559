"""The serving environment: the image's Python packages (CPU-only torch) in a local venv.

The model server image installs `requirements.txt` beside this file: torch's CPU build, numpy
and Pillow, nothing else. Run locally from the project's own venv, a model server would get the
CUDA build of torch instead, whose import alone maps ~280 MB of private memory (cuBLASLt's
tables, CUDA libraries' relocations) that a CPU-only endpoint never uses. So the local endpoint
runs in `.venv-serving`, built from the same `requirements.txt` as the image, and a worker is
about half the size.

One pin differs: the image's `torch==2.14.1+cpu` lives only on the PyTorch CPU index, which an
offline machine cannot reach, so the local venv takes the CPU build that installs from local
wheels (`LOCAL_TORCH`, one minor behind; the model is a weights-only state dict that loads in
both). Training and the project's venv keep torch 2.14.1.

    python -m services.model_server.environment [--venv DIR]   # create or refresh it

`serving_python()` is the interpreter model servers start with: the serving venv's when it is
installed from the current `requirements.txt`, else this interpreter (the project's venv, which
has every package the image has).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().with_name("requirements.txt")
REPO_ROOT = REQUIREMENTS.parents[2]
SERVING_VENV = REPO_ROOT / ".venv-serving"
_STAMP = ".installed"
# The CPU-only torch the local serving venv installs instead of the image's pin (see above).
LOCAL_TORCH = "torch==2.13.0+cpu"


def _digest() -> str:
    """What the venv must have been installed from: requirements.txt and the Python version."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return hashlib.sha256(_local_requirements().encode() + version.encode()).hexdigest()


def _local_requirements() -> str:
    """requirements.txt with its torch pin replaced by `LOCAL_TORCH`."""
    lines = REQUIREMENTS.read_text().splitlines()
    return "\n".join(LOCAL_TORCH if line.startswith("torch==") else line for line in lines) + "\n"


def installed_python(venv: Path | None = None) -> Path | None:
    """The venv's interpreter when it is installed from the current requirements, else None."""
    venv = venv or SERVING_VENV
    python = venv / "bin" / "python"
    try:
        stamped = (venv / _STAMP).read_text().strip()
    except OSError:
        return None
    return python if python.exists() and stamped == _digest() else None


def serving_python(venv: Path | None = None) -> str:
    """The interpreter a model server runs with: the serving venv's, or this one."""
    python = installed_python(venv)
    return str(python) if python is not None else sys.executable


def ensure_serving_env(venv: Path | None = None, quiet: bool = True) -> Path:
    """Create (or refresh) the serving venv from requirements.txt; its interpreter."""
    venv = venv or SERVING_VENV
    python = installed_python(venv)
    if python is not None:
        return python
    print(f"creating {venv} from {REQUIREMENTS.name} (CPU-only torch, ~1 GB) ...", flush=True)
    python = venv / "bin" / "python"
    if not python.exists():
        # The base interpreter, not this venv's: the serving venv must not inherit its packages.
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    (venv / _STAMP).unlink(missing_ok=True)
    requirements = venv / "requirements-local.txt"
    requirements.write_text(_local_requirements())
    # --retries 0: where the PyTorch index is out of reach (offline), pip moves on to the other
    # configured sources at once instead of retrying it for every package.
    subprocess.run(
        [str(python), "-m", "pip", "install", *(["-q"] if quiet else []), "--retries", "0",
         "--disable-pip-version-check", "-r", str(requirements)],
        check=True,
    )  # fmt: skip
    (venv / _STAMP).write_text(_digest())
    return python


def main(argv: list[str] | None = None) -> int:
    """Create or refresh the serving venv and print its interpreter."""
    parser = argparse.ArgumentParser(prog="python -m services.model_server.environment")
    parser.add_argument("--venv", type=Path, default=SERVING_VENV, help="where (.venv-serving)")
    args = parser.parse_args(argv)
    print(ensure_serving_env(args.venv, quiet=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
