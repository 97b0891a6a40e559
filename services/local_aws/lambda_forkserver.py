"""A fork server for execution environments: one warm interpreter that forks every new worker.

The server (`python -S lambda_forkserver.py`, one per emulator) imports the runtime client's
modules and boto3 once, freezes them out of the garbage collector, and then forks a child per
new environment on request. A child inherits those pages copy-on-write, so a warm environment
costs a few MB instead of a whole interpreter, and a cold start skips interpreter start and
imports. The child then does what a freshly started worker does (`lambda_sandbox.apply`: its own
mount namespace, /var/task, /opt, /tmp) and runs awslambdaric.

A cold start does not wait for a fork: one spare child is always forked ahead, and it imports
what no function changes (`awslambdaric.bootstrap` and its Runtime API client) before any
request names it. A request goes to the spare, which sets the function's environment, loads the
native Runtime API client (it reads the API's address from the environment when loaded, so
neither the server nor the spare can load it earlier), refreshes the two settings bootstrap read
from the environment at import (log format and level), enters its sandbox and runs the runtime;
the server forks the next spare after answering.

Before forking anything, the server also builds one client of each of WARM_CLIENTS, so that
botocore's parsed data files (the JSON that makes a first `boto3.client("s3")` cost 100-250 ms
of CPU) are inherited by every environment, shared copy-on-write, instead of parsed in each.

Requests go over a SOCK_SEQPACKET socket pair (one JSON message each, the log file's descriptor
attached); the server answers with the child's pid and reports each child's exit status. When
the emulator goes away (EOF), the server kills its children and exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Callable

FD_VARIABLE = "_LOCAL_LAMBDA_FORKSERVER_FD"
CONFIG_VARIABLE = "_LOCAL_LAMBDA_FORKSERVER"
MAX_MESSAGE = 1 << 20
# What every Python function environment needs: the runtime client's modules and boto3 (AWS's
# Python runtimes include it). Not its bootstrap nor its native Runtime API client: the spare
# imports those (see SPARE_PRELOAD).
PRELOAD = (
    "awslambdaric.lambda_context",
    "awslambdaric.lambda_runtime_exception",
    "awslambdaric.lambda_runtime_log_utils",
    "awslambdaric.lambda_runtime_marshaller",
    "awslambdaric.lambda_config",
    "boto3",
    "boto3.session",
    "botocore.session",
    "http.client",
    "runpy",
    "traceback",
)
# What the spare imports after its fork, ahead of its request (not `awslambdaric.__main__`: runpy
# runs that as __main__, and warns when it is already imported).
SPARE_PRELOAD = ("awslambdaric.lambda_runtime_client", "awslambdaric.bootstrap")
# Spares kept forked ahead; each costs the few MB of pages its imports wrote.
SPARES = 1
# Services whose data botocore parses in the server (those the project's functions call; any
# other service is parsed in the environment, as before). The three add ~15 MB RSS and ~0.2 s to
# the server's start, and save each environment that makes a client of them ~13 MB of PSS.
WARM_CLIENTS = ("s3", "sts", "sagemaker-runtime")


# --- the emulator's side -----------------------------------------------------------------
class ForkedProcess:
    """A worker forked by the server, with the part of Popen's interface workers use."""

    def __init__(self, pid: int) -> None:
        import threading

        self.pid = pid
        self.returncode: int | None = None
        self._exited = threading.Event()

    def exited(self, code: int) -> None:
        """Record the exit status reported by the server."""
        self.returncode = code
        self._exited.set()

    def poll(self) -> int | None:
        """The exit status, or None while it runs."""
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit (subprocess.TimeoutExpired after timeout seconds)."""
        import subprocess

        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
        assert self.returncode is not None
        return self.returncode


class ForkServer:
    """The emulator's handle on the fork server process."""

    def __init__(
        self,
        python: str,
        isolated: bool,
        runtime_dir: str,
        binds: list[list[object]],
        log_path: str,
        ready_timeout_s: float = 30.0,
    ) -> None:
        import subprocess
        import threading

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        config = {"runtime_dir": runtime_dir, "namespace": bool(binds), "binds": binds}
        env = {
            "PATH": os.environ.get("PATH", ""),
            "TZ": ":UTC",
            FD_VARIABLE: str(theirs.fileno()),
            CONFIG_VARIABLE: json.dumps(config),
        }
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [python, *(["-S"] if isolated else []), __file__],
                env=env,
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        theirs.close()
        self._channel = ours
        self._lock = threading.Lock()
        self._next_id = 0
        self._spawned: dict[int, tuple[threading.Event, list[ForkedProcess]]] = {}
        self._children: dict[int, ForkedProcess] = {}
        ours.settimeout(ready_timeout_s)
        try:
            ready = json.loads(ours.recv(MAX_MESSAGE) or b"{}")
        except (OSError, ValueError) as error:
            self.close()
            raise RuntimeError(f"the Lambda fork server did not start: {error}") from error
        if not ready.get("ready"):
            self.close()
            raise RuntimeError("the Lambda fork server did not start (see its log)")
        ours.settimeout(None)
        threading.Thread(target=self._read, daemon=True, name="lambda-forkserver").start()

    @property
    def alive(self) -> bool:
        """Whether the server still runs."""
        return self.process.poll() is None

    def spawn(self, env: dict[str, str], plan: dict, log_fd: int) -> ForkedProcess:  # type: ignore[type-arg]
        """Fork one environment; its stdout and stderr go to log_fd."""
        import threading

        done: tuple[threading.Event, list[ForkedProcess]] = (threading.Event(), [])
        with self._lock:
            self._next_id += 1
            request_id = self._next_id
            self._spawned[request_id] = done
            message = json.dumps({"id": request_id, "env": env, "plan": plan}).encode()
            socket.send_fds(self._channel, [message], [log_fd])
        if not done[0].wait(10.0) or not done[1]:
            raise RuntimeError("the Lambda fork server did not fork")
        return done[1][0]

    def _read(self) -> None:
        while True:
            try:
                data = self._channel.recv(MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                break
            message = json.loads(data)
            with self._lock:
                if "pid" in message and "id" in message:
                    child = self._children[message["pid"]] = ForkedProcess(message["pid"])
                    event, result = self._spawned.pop(message["id"])
                    result.append(child)
                    event.set()
                elif "exited" in message:
                    exited = self._children.pop(message["exited"], None)
                    if exited is not None:
                        exited.exited(message["code"])
        # The server is gone: so are its children (it kills them on EOF; a crash kills it).
        with self._lock:
            children, self._children = list(self._children.values()), {}
            waiting, self._spawned = list(self._spawned.values()), {}
        for child in children:
            child.exited(-9)
        for event, _ in waiting:
            event.set()

    def close(self) -> None:
        """Stop the server (its children die with it: it kills them on EOF)."""
        import subprocess

        # shutdown, not just close: the reader thread's recv holds the socket open otherwise.
        with contextlib.suppress(OSError):
            self._channel.shutdown(socket.SHUT_RDWR)
        self._channel.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- the server process ------------------------------------------------------------------
def _serve() -> None:
    config = json.loads(os.environ.pop(CONFIG_VARIABLE))
    channel = socket.socket(fileno=int(os.environ.pop(FD_VARIABLE)))
    import lambda_sandbox  # type: ignore[import-not-found]  # the script's sibling

    # Neither this script's folder nor its modules are the function's to import.
    del sys.modules["lambda_sandbox"]
    sys.path[0] = config["runtime_dir"]

    if config.get("namespace"):
        # The runtime's packages at /var/runtime already here, so preloaded modules name it.
        lambda_sandbox.enter_namespace(False)
        for source, target, read_only in config["binds"]:
            lambda_sandbox.bind(source, target, read_only)
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    _warm_botocore()
    import gc
    import select

    gc.collect()
    gc.freeze()  # the preloaded objects' pages stay shared: no collector writes to them
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    children: set[int] = set()
    spares: dict[int, socket.socket] = {}  # pid -> the link its request goes over (oldest first)

    def forked_child(*also: socket.socket) -> None:
        """In a new child: drop the server's signal wiring and every link that is not its own."""
        signal.set_wakeup_fd(-1)  # before its descriptors close: a signal would write there
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for inherited in (channel, *also, *spares.values()):
            inherited.close()
        os.close(wake_read)
        os.close(wake_write)

    def fork_spare() -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            forked_child(ours)
            _spare(theirs, lambda_sandbox)
        theirs.close()
        spares[pid] = ours

    for _ in range(SPARES):
        fork_spare()
    _send(channel, {"ready": True, "pid": os.getpid()})
    while True:
        readable, _, _ = select.select([channel.fileno(), wake_read], [], [])
        if wake_read in readable:
            os.read(wake_read, 4096)
        _reap(channel, children, spares)
        if channel.fileno() not in readable:
            if len(spares) < SPARES:  # one died unused
                fork_spare()
            continue
        data, fds, _, _ = socket.recv_fds(channel, MAX_MESSAGE, 1)
        if not data:  # the emulator is gone: so are its environments
            for pid in [*children, *spares]:
                _kill_group(pid)
            os._exit(0)
        request = json.loads(data)
        spare = _hand_to_spare(spares, data, fds)
        if spare is not None:
            pid = spare
        else:
            pid = os.fork()
            if pid == 0:
                forked_child()
                _child(request, fds[0], lambda_sandbox, prepared=None)
        for fd in fds:
            os.close(fd)
        children.add(pid)
        _send(channel, {"id": request["id"], "pid": pid})
        while len(spares) < SPARES:  # after the answer: the next cold start's spare
            fork_spare()


def _warm_botocore() -> None:
    """Parse botocore's data for WARM_CLIENTS once, into a cache every default loader shares.

    botocore memoises each loaded file per loader (`Loader._cache`), and every client of one
    session already shares its loader's entries; here loaders on the default search path (no
    AWS_DATA_PATH) share one memo, filled before the fork. Nothing else changes: the files,
    their content and the clients built from them are the same.
    """
    import botocore.loaders
    import botocore.session

    shared: dict[object, object] = {}
    create_loader = botocore.session.create_loader

    def sharing_loader(search_path_string: str | None = None) -> botocore.loaders.Loader:
        loader = create_loader(search_path_string)
        if search_path_string is None:
            loader._cache = shared
        return loader

    botocore.session.create_loader = sharing_loader
    session = botocore.session.Session()
    for service in WARM_CLIENTS:
        # Explicit keys: no credential lookup (nor instance metadata) in the server.
        session.create_client(
            service, region_name="us-east-1", aws_access_key_id="-", aws_secret_access_key="-"
        )


def _hand_to_spare(spares: dict[int, socket.socket], data: bytes, fds: list[int]) -> int | None:
    """Send a request to the oldest spare; its pid, or None when none could take it."""
    while spares:
        pid = next(iter(spares))
        link = spares.pop(pid)
        try:
            socket.send_fds(link, [data], fds)
        except OSError:  # it died before its request: its exit is reaped, unreported
            _kill_group(pid)
            continue
        finally:
            link.close()
        return pid
    return None


def _spare(link: socket.socket, lambda_sandbox: object) -> None:
    """A child forked ahead: import what every environment needs, then wait for a request."""
    try:
        os.setsid()  # its own process group, killed as one
        import importlib
        import types

        # The native Runtime API client reads the API's address from the environment when it
        # is loaded, and the address comes with the request: until then a stand-in takes the
        # initialisation `lambda_runtime_client` asks for at import.
        stand_in = types.ModuleType("runtime_client")
        deferred: list[str] = []
        stand_in.initialize_client = deferred.append  # type: ignore[attr-defined]
        sys.modules["runtime_client"] = stand_in
        for name in SPARE_PRELOAD:
            importlib.import_module(name)
        del sys.modules["runtime_client"]
        data, fds, _, _ = socket.recv_fds(link, MAX_MESSAGE, 1)
        link.close()
    except BaseException:
        os._exit(1)
    if not data or not fds:  # the server is gone (EOF) before a request came
        os._exit(0)
    _child(json.loads(data), fds[0], lambda_sandbox, prepared=lambda: _load_native(deferred))


def _load_native(user_agent: list[str]) -> None:
    """Load the native client now that the environment names the API; replace the stand-in."""
    import runtime_client  # type: ignore[import-not-found]
    from awslambdaric import lambda_runtime_client  # type: ignore[import-not-found]

    runtime_client.initialize_client(*user_agent)
    lambda_runtime_client.runtime_client = runtime_client


def _child(
    request: dict,  # type: ignore[type-arg]
    log_fd: int,
    lambda_sandbox: object,
    prepared: Callable[[], object] | None,
) -> None:
    """Become the requested environment and run the runtime; `prepared`: a spare's deferred
    initialisation of the native client, called once the function's environment is set."""
    code = 1
    try:
        if prepared is None:
            os.setsid()  # its own process group, killed as one
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.environ.clear()
        os.environ.update(request["env"])
        import time

        time.tzset()
        if prepared is not None:
            prepared()
            _refresh_bootstrap_settings()
        plan = request["plan"]
        lambda_sandbox.apply(plan)  # type: ignore[attr-defined]
        import runpy

        sys.argv = ["awslambdaric", *plan["argv"]]
        runpy.run_module("awslambdaric", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _refresh_bootstrap_settings() -> None:
    """Read again what `awslambdaric.bootstrap` took from the environment when the spare imported
    it: the function's log format and level (its only import-time settings)."""
    from awslambdaric import bootstrap  # type: ignore[import-not-found]

    bootstrap._AWS_LAMBDA_LOG_FORMAT = bootstrap.LogFormat.from_str(
        os.environ.get("AWS_LAMBDA_LOG_FORMAT")
    )
    bootstrap._AWS_LAMBDA_LOG_LEVEL = bootstrap._get_log_level_from_env_var(
        os.environ.get("AWS_LAMBDA_LOG_LEVEL")
    )


def _reap(channel: socket.socket, children: set[int], spares: dict[int, socket.socket]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in spares:  # died before any request: nobody to tell
            spares.pop(pid).close()
            continue
        children.discard(pid)
        _send(channel, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


def _send(channel: socket.socket, message: dict) -> None:  # type: ignore[type-arg]
    with contextlib.suppress(OSError):  # the emulator is gone: EOF will tell the loop
        channel.send(json.dumps(message).encode())


if __name__ == "__main__":
    _serve()
