"""The execution environment's own file system view: a private /tmp, /var/task, /opt, /var/runtime.

Run as a script (`python -S lambda_sandbox.py`) it is the first code of every worker: it enters a
new mount namespace (as root, or through a user namespace), binds the function's code at
/var/task, its layers at /opt and the runtime's packages at /var/runtime (read-only, as on AWS),
mounts an empty tmpfs on /tmp limited to the function's EphemeralStorage, sets the import path AWS
uses, and then runs `awslambdaric` in the same process. The namespace, and with it /tmp, ends with
the worker. Imported, it offers the host side: the one-time probe and the plan handed to a worker.

Only the standard library is used here: the script runs before any package is importable, and
it imports only what every worker needs anyway (subprocess and pathlib, for the host side only,
are imported where used: they would add tens of milliseconds to each cold start).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

PLAN_VARIABLE = "_LOCAL_LAMBDA_SANDBOX"
TASK_ROOT = "/var/task"
RUNTIME_DIR = "/var/runtime"
OPT_DIR = "/opt"

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18


class SandboxError(OSError):
    """A namespace or mount call failed."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise SandboxError(errno, f"{what}: {os.strerror(errno)}")


def _mount(libc: ctypes.CDLL, source: str, target: str, fstype: str, flags: int, data: str) -> None:
    _check(
        libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode()),
        f"mount {fstype or 'bind'} {source} on {target}",
    )


def enter_namespace(user_namespace: bool) -> None:
    """Unshare the mount namespace (in a new user namespace when not root); nothing propagates."""
    libc = _libc()
    if user_namespace:
        uid, gid = os.getuid(), os.getgid()
        _check(libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS), "unshare(user, mount)")
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1")):
            with open(f"/proc/self/{name}", "w") as stream:
                stream.write(text)
        with open("/proc/self/gid_map", "w") as stream:
            stream.write(f"{gid} {gid} 1")
    else:
        _check(libc.unshare(_CLONE_NEWNS), "unshare(mount)")
    _mount(libc, "none", "/", "", _MS_REC | _MS_PRIVATE, "")


def bind(source: str, target: str, read_only: bool) -> None:
    """Bind a host folder at a path of the environment."""
    libc = _libc()
    _mount(libc, source, target, "", _MS_BIND | _MS_REC, "")
    if read_only:
        flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV
        _mount(libc, "none", target, "", flags, "")


def mount_tmpfs(target: str, size_mb: int) -> None:
    """An empty tmpfs, world-writable with the sticky bit as /tmp is, of at most size_mb."""
    _mount(_libc(), "tmpfs", target, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={size_mb}m,mode=1777")


def apply(
    plan: dict,  # type: ignore[type-arg]
    entered: bool = False,
    present: list[list[object]] | None = None,
) -> None:
    """Set up the environment described by the host's plan (namespace, mounts, path, cwd).

    `entered`: the process is in its own mount namespace already; `present`: binds it inherited
    (a fork server's), not made again.
    """
    if plan.get("namespace"):
        if not entered:
            enter_namespace(bool(plan.get("user_namespace")))
        inherited = {tuple(b) for b in present or ()}
        for source, target, read_only in plan.get("binds", []):
            if (source, target, read_only) not in inherited:
                bind(source, target, read_only)
        for target, size_mb in plan.get("tmpfs", []):
            mount_tmpfs(target, size_mb)
    os.chdir(plan["cwd"])
    # The script's own folder (this package) must not be importable by function code.
    stdlib = [p for p in sys.path[1:] if p]
    sys.path[:] = [*plan["sys_path"], *stdlib]


def main() -> None:
    """Worker entry point: apply the plan, then hand the process to awslambdaric."""
    if sys.argv[1:] == ["--probe"]:
        _probe_self()
        return
    plan = json.loads(os.environ.pop(PLAN_VARIABLE))
    apply(plan)
    import runpy

    sys.argv = ["awslambdaric", *plan["argv"]]
    runpy.run_module("awslambdaric", run_name="__main__", alter_sys=True)


def _probe_self() -> None:
    """Enter a namespace, mount a tmpfs on /tmp and check it is empty and private."""
    user_namespace = os.geteuid() != 0
    enter_namespace(user_namespace)
    mount_tmpfs("/tmp", 1)
    if os.listdir("/tmp"):
        raise SystemExit("tmpfs on /tmp is not empty")
    with open("/tmp/.local-lambda-probe", "w") as stream:
        stream.write("ok")
    print(json.dumps({"user_namespace": user_namespace}))


def probe(python: str) -> tuple[bool, bool, str]:
    """Whether workers can have a private /tmp: (ok, through a user namespace, reason if not)."""
    import subprocess

    if not sys.platform.startswith("linux"):
        return False, False, "mount namespaces need Linux"
    try:
        result = subprocess.run(
            [python, "-S", __file__, "--probe"],
            capture_output=True,
            text=True,
            timeout=10,
            env={"PATH": os.environ.get("PATH", "")},
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, False, str(error)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["unknown"])[-1]
        return False, False, reason
    return True, bool(json.loads(result.stdout)["user_namespace"]), ""


def aws_paths_available() -> bool:
    """Whether /var/task and /var/runtime exist as mount points (created when root)."""
    from pathlib import Path

    for path in (TASK_ROOT, RUNTIME_DIR):
        target = Path(path)
        if not target.is_dir():
            if os.geteuid() != 0:
                return False
            try:
                target.mkdir(parents=True, exist_ok=True)
            except OSError:
                return False
    return Path(OPT_DIR).is_dir()


if __name__ == "__main__":
    main()
