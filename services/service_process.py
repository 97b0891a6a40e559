"""Start a service as a process of its own: a new session (process group), output to a log.

The local stack, the LocalStack host and the benchmarks' peer emulator all start servers this
way, so that stopping one is one signal to its group and its output survives it for diagnosis.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path


def spawn_logged(
    argv: Sequence[str], log_path: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Run `argv` in `cwd` in its own session; stdout and stderr are appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
