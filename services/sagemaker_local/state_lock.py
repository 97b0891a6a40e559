"""One sagemaker-local per state folder: an exclusive `flock` on `<state>/.lock`.

A second process on the same folder would load the same endpoints and, on start, kill the first
one's model servers as "stale". The lock is released by the kernel when the holder exits, even
by SIGKILL, so a crash never leaves a lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_NAME = ".lock"


class StateFolderBusy(RuntimeError):
    """Another live sagemaker-local holds this state folder."""


def lock_state_folder(state_dir: Path) -> IO[str]:
    """Take the folder's lock for the life of this process; the open file must be kept."""
    path = state_dir / LOCK_NAME
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held until the process exits
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StateFolderBusy(
            f"state folder {state_dir} is in use by another sagemaker-local (pid {holder}); "
            "stop it or give this one its own --state-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
