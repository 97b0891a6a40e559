"""A fork server for execution environments: one warm interpreter that forks every new worker.

The server (`python -S lambda_forkserver.py`, one per emulator) imports the runtime client's
modules and boto3 once, freezes them out of the garbage collector, and then forks a child per
new environment on request. A child inherits those pages copy-on-write, so a warm environment
costs a few MB instead of a whole interpreter, and a cold start skips interpreter start and
imports. The child then does what a freshly started worker does (`lambda_sandbox.apply`: its own
mount namespace, /var/task, /opt, /tmp) and runs awslambdaric.

A cold start does not wait for a fork: one spare child is always forked ahead, and it imports
what no function changes (`awslambdaric.bootstrap` and its Runtime API client) before any
request names it. The server hands the emulator a link to the spare, so a cold start's request
goes straight to it, with no hop through the server (the emulator tells the server it was
taken, so that its exit is reported). The spare sets the function's environment, initialises
the native Runtime API client (loaded by the server; initialising reads the API's address from
the environment, so it waits for the request), refreshes the two settings bootstrap read from
the environment at import (log format and level), enters its sandbox and runs the runtime. The
server forks the next spare a moment later, when the cold start no longer needs the CPU.

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
from dataclasses import dataclass
from typing import Any, Protocol

FD_VARIABLE = "_LOCAL_LAMBDA_FORKSERVER_FD"
CONFIG_VARIABLE = "_LOCAL_LAMBDA_FORKSERVER"
API_VARIABLE = "AWS_LAMBDA_RUNTIME_API"
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
# What the spare imports after its fork, ahead of its request: the runtime client's entry point
# and what it imports (the native client among them, which needs the API's address).
SPARE_PRELOAD = (
    "awslambdaric.lambda_runtime_client",
    "awslambdaric.bootstrap",
    "awslambdaric.__main__",
    "awslambdaric.lambda_literals",
)
# Spares kept forked ahead; each costs the few MB of pages its imports wrote.
SPARES = 1
# After a spare is taken, the next one is forked this much later (not during the cold start).
SPARE_REFILL_DELAY_S = 0.03
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
        self._lock = threading.Lock()
        self._on_exit: list[Callable[[], object]] = []

    def exited(self, code: int) -> None:
        """Record the exit status reported by the server; run the exit callbacks."""
        with self._lock:
            self.returncode = code
            self._exited.set()
            callbacks, self._on_exit = self._on_exit, []
        for callback in callbacks:
            callback()

    def on_exit(self, callback: Callable[[], object]) -> None:
        """Call `callback` (in the server's reader thread) once the process has exited; at once
        if it has. A forked worker needs no thread of its own to learn of its exit."""
        with self._lock:
            if not self._exited.is_set():
                self._on_exit.append(callback)
                return
        callback()

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


class SpareApi(Protocol):
    """What the emulator gives a spare ahead of its request: the Runtime API it will talk to."""

    address: str

    def close(self) -> None: ...


@dataclass
class Spare:
    """A child forked ahead, taken for one environment: its pid, link and Runtime API."""

    pid: int
    link: socket.socket
    api: SpareApi

    def discard(self) -> None:
        """Close what the emulator holds of it (the spare exits at the link's EOF)."""
        self.link.close()
        self.api.close()


class ForkServer:
    """The emulator's handle on the fork server process."""

    def __init__(
        self,
        python: str,
        isolated: bool,
        runtime_dir: str,
        binds: list[list[object]],
        log_path: str,
        new_api: Callable[[], SpareApi],
        environment_namespace: tuple[bool, bool] = (False, False),
        ready_timeout_s: float = 30.0,
    ) -> None:
        import subprocess
        import threading

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # `environment_namespace`: whether each environment gets a mount namespace, and through
        # a user namespace (the same for all: the emulator forks only those with its sandbox).
        config = {
            "runtime_dir": runtime_dir,
            "namespace": bool(binds),
            "binds": binds,
            "environments": list(environment_namespace),
        }
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
        self._new_api = new_api
        self._spare: Spare | None = None
        self._lock = threading.Lock()
        self._next_id = 0
        self._spawned: dict[int, tuple[threading.Event, list[ForkedProcess]]] = {}
        self._children: dict[int, ForkedProcess] = {}
        ours.settimeout(ready_timeout_s)
        try:
            while True:  # the spares' links come first
                data, fds, _, _ = socket.recv_fds(ours, MAX_MESSAGE, 1)
                ready = json.loads(data or b"{}")
                if "spare" not in ready or not fds:
                    break
                self._keep_spare(ready["spare"], fds[0])
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

    def take_spare(self) -> Spare | None:
        """The spare forked ahead, if one is at hand; its Runtime API is the environment's."""
        with self._lock:
            spare, self._spare = self._spare, None
        return spare

    def start(
        self,
        spare: Spare,
        env: dict[str, str],
        plan: dict,  # type: ignore[type-arg]
        log_fd: int,
    ) -> ForkedProcess | None:
        """Make a taken spare the environment; None if it died unused (then `spawn` one)."""
        with self._lock:
            child = self._children[spare.pid] = ForkedProcess(spare.pid)
            # Before the request: the server then knows the spare's exit is to be reported.
            _send(self._channel, {"taken": spare.pid})
        try:
            socket.send_fds(spare.link, [json.dumps({"env": env, "plan": plan}).encode()], [log_fd])
        except OSError:
            with self._lock:
                self._children.pop(spare.pid, None)
            return None
        finally:
            spare.link.close()
        return child

    def spawn(self, env: dict[str, str], plan: dict, log_fd: int) -> ForkedProcess:  # type: ignore[type-arg]
        """Fork one environment through the server; its stdout and stderr go to log_fd."""
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

    def _keep_spare(self, pid: int, link_fd: int) -> None:
        """A new spare: give it its Runtime API's address (it loads the native client with it)."""
        link = socket.socket(fileno=link_fd)
        api = self._new_api()
        try:
            link.send(json.dumps({"api": api.address}).encode())
        except OSError:  # it died already
            Spare(pid, link, api).discard()
            return
        with self._lock:
            old, self._spare = self._spare, Spare(pid, link, api)
        if old is not None:
            old.discard()

    def _read(self) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self._channel, MAX_MESSAGE, 1)
            except OSError:
                data, fds = b"", []
            if not data:
                break
            message = json.loads(data)
            if "spare" in message and fds:
                self._keep_spare(message["spare"], fds[0])
                continue
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
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.discard()
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
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.discard()
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
    import time

    gc.collect()
    gc.freeze()  # the preloaded objects' pages stay shared: no collector writes to them
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    children: set[int] = set()
    spares: set[int] = set()  # forked ahead; the emulator holds the link each one's request takes
    refill_at: float | None = None  # when to fork the spares missing (monotonic)

    def forked_child(*also: socket.socket) -> None:
        """In a new child: drop the server's signal wiring and every link that is not its own."""
        signal.set_wakeup_fd(-1)  # before its descriptors close: a signal would write there
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for inherited in (channel, *also):
            inherited.close()
        os.close(wake_read)
        os.close(wake_write)

    def fork_spare() -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            forked_child(ours)
            _spare(theirs, lambda_sandbox, config)
        theirs.close()
        spares.add(pid)
        # The emulator sends the request straight to the spare: no hop through this process.
        with contextlib.suppress(OSError):
            socket.send_fds(channel, [json.dumps({"spare": pid}).encode()], [ours.fileno()])
        ours.close()

    for _ in range(SPARES):
        fork_spare()
    _send(channel, {"ready": True, "pid": os.getpid()})
    while True:
        timeout = None if refill_at is None else max(0.0, refill_at - time.monotonic())
        readable, _, _ = select.select([channel.fileno(), wake_read], [], [], timeout)
        if wake_read in readable:
            os.read(wake_read, 4096)
        # Messages before exits: a spare's "taken" is sent before its request, so it is here
        # before the spare can have exited, and that exit is reported.
        # (socket.recv_fds ignores its flags before 3.12: a zero-timeout select, not DONTWAIT)
        while select.select([channel.fileno()], [], [], 0)[0]:
            data, fds, _, _ = socket.recv_fds(channel, MAX_MESSAGE, 1)
            if not data:  # the emulator is gone: so are its environments
                for pid in [*children, *spares]:
                    _kill_group(pid)
                os._exit(0)
            request = json.loads(data)
            if "taken" in request:
                spares.discard(request["taken"])
                children.add(request["taken"])
            else:  # no spare was at hand: fork one now
                pid = os.fork()
                if pid == 0:
                    forked_child()
                    _child(request, fds[0], lambda_sandbox, None, config["binds"])
                children.add(pid)
                _send(channel, {"id": request["id"], "pid": pid})
            for fd in fds:
                os.close(fd)
            if len(spares) < SPARES and refill_at is None:
                # Not at once: forking and the new spare's imports would take the CPU from
                # the cold start that took the last one.
                refill_at = time.monotonic() + SPARE_REFILL_DELAY_S
        _reap(channel, children, spares)
        if len(spares) < SPARES and refill_at is None:  # one died unused
            refill_at = time.monotonic()
        if refill_at is not None and time.monotonic() >= refill_at:
            refill_at = None
            while len(spares) < SPARES:
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


def _spare(link: socket.socket, lambda_sandbox: Any, config: dict[str, Any]) -> None:
    """A child forked ahead: told its Runtime API's address, it imports what every environment
    needs (the native client reads the address when it loads) and enters its own mount namespace
    if environments have one; then it waits for its request."""
    try:
        os.setsid()  # its own process group, killed as one
        import importlib

        data = link.recv(MAX_MESSAGE)
        if not data:  # the emulator dropped it unused
            os._exit(0)
        os.environ[API_VARIABLE] = json.loads(data)["api"]
        for name in SPARE_PRELOAD:
            importlib.import_module(name)
        namespace, user_namespace = config["environments"]
        if namespace:
            lambda_sandbox.enter_namespace(user_namespace)
        data, fds, _, _ = socket.recv_fds(link, MAX_MESSAGE, 1)
        link.close()
    except BaseException:
        os._exit(1)
    if not data or not fds:  # the emulator is gone (EOF) before a request came
        os._exit(0)
    request = json.loads(data)
    if request["env"].get(API_VARIABLE) != os.environ[API_VARIABLE]:
        os._exit(1)  # its client would talk to another environment's API
    _child(request, fds[0], lambda_sandbox, _refresh_bootstrap_settings, config["binds"], namespace)


def _child(
    request: dict[str, Any],
    log_fd: int,
    lambda_sandbox: Any,
    prepared: Callable[[], object] | None,
    present: list[list[object]],
    entered: bool = False,
) -> None:
    """Become the requested environment and run the runtime. `prepared`: for a spare, what it
    redoes once the function's environment is set (it imported bootstrap before); `present`:
    the server's binds, inherited; `entered`: the spare is in its own mount namespace already."""
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
        plan = request["plan"]
        lambda_sandbox.apply(plan, entered=entered, present=present)
        if prepared is not None:  # a spare imported the entry point ahead: run it as runpy would
            from awslambdaric import __main__ as entry  # type: ignore[import-not-found]

            sys.modules["__main__"] = entry
            sys.argv = [str(entry.__file__), *plan["argv"]]
            entry.main(sys.argv)
        else:
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


def _reap(channel: socket.socket, children: set[int], spares: set[int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in spares:  # died before any request: nobody to tell
            spares.discard(pid)
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
