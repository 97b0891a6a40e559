"""Child processes (model servers, training scripts) that never outlive sagemaker-local.

Each child gets its own process group (so stopping it stops its workers too) and, on Linux, a
parent-death signal, so even a killed sagemaker-local leaves no orphan behind. The death signal
fires when the *thread* that forked the child exits, so every child is forked by one long-lived
launcher thread rather than by the short-lived threads that deploy endpoints or run jobs.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

PR_SET_PDEATHSIG = 1

_launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="child-launcher")
_prctl: Any = None
if sys.platform.startswith("linux"):
    try:
        _prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        _prctl = None


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: only async-signal-safe work here.
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def launch(command: list[str], **popen_kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a child in its own process group that is signalled if this process dies."""
    popen_kwargs.setdefault("stdin", subprocess.DEVNULL)

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            command, start_new_session=True, preexec_fn=_die_with_parent, **popen_kwargs
        )

    if threading.current_thread().name.startswith("child-launcher"):
        return spawn()
    return _launcher.submit(spawn).result()


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send a signal to the child's whole process group (ignoring one already gone)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> int | None:
    """SIGTERM the child's group, SIGKILL it after a grace period; returns the exit code."""
    if proc.poll() is None:
        signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=10)
    # Workers of the child may linger after the leader exited: clean the group up.
    signal_group(proc, signal.SIGKILL)
    return proc.returncode


def stop_grace_s() -> float:
    """SIGTERM -> SIGKILL grace of a stopped training job: AWS gives 120 s, locally a knob."""
    try:
        return max(0.0, float(os.environ.get("SAGEMAKER_LOCAL_STOP_GRACE_S", "") or 120))
    except ValueError:
        return 120.0


def terminate(proc: subprocess.Popen[bytes], grace_s: float | None = None) -> threading.Timer:
    """SIGTERM the child's group now and SIGKILL it once the grace period has passed.

    Returns at once (the caller may be reading the child's output); the SIGKILL runs on a
    timer, so a child that ignores SIGTERM still dies and its output pipe closes.
    """
    grace = stop_grace_s() if grace_s is None else grace_s
    signal_group(proc, signal.SIGTERM)

    def kill() -> None:
        if proc.poll() is None:
            signal_group(proc, signal.SIGKILL)

    timer = threading.Timer(grace, kill)
    timer.daemon = True
    timer.start()
    return timer


def kill_stale_group(pid: int, marker: str) -> bool:
    """Kill a process group left by a previous run, if its leader's command line has marker."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    if marker not in cmdline:
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True
