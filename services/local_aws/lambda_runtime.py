"""A real Lambda runtime for the emulator: warm worker processes driven through `awslambdaric`.

Each execution environment is one worker process running AWS's runtime interface client
(`python -m awslambdaric <handler>`) against its own Lambda Runtime API, served here on a
loopback port. A worker handles one invocation at a time and is kept warm between invocations,
so module-level state survives as on AWS. Workers are grouped in a pool per function version
and configuration: new code or configuration means a new pool, and the old workers retire.
Each worker has its own file system view (`lambda_sandbox`): a private /tmp, the code at
/var/task, layers at /opt. New workers are forked from a warm interpreter (`lambda_forkserver`)
when it can run, else started as their own interpreter. Concurrency limits are in
`lambda_concurrency`, log lines in `lambda_logs`; the moto side is `lambda_service`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from . import lambda_sandbox
from .lambda_concurrency import ConcurrencyMeter
from .lambda_forkserver import ForkServer
from .lambda_logs import LoggingConfig, end_lines, start_lines

log = logging.getLogger("local_aws.lambda")

RUNTIME_API_PREFIX = "/2018-06-01/runtime"
INIT_TIMEOUT_S = 10.0
LOG_TAIL_BYTES = 4096
# Variables from the host that a Lambda sandbox legitimately has (everything else is withheld).
_HOST_VARIABLES = ("PATH", "LANG", "LC_ALL", "TZ", "SYSTEMROOT")
# Temporary credentials are replaced this long before they expire (the environment is recycled).
CREDENTIALS_REFRESH_MARGIN_S = 300.0
# What AWS's Python runtime offers besides the standard library: boto3 and what it needs, plus
# the runtime interface client itself. Function code sees nothing else of the host's packages.
RUNTIME_PACKAGES = (
    "awslambdaric",
    "runtime_client",
    "simplejson",
    "snapshot_restore_py",
    "boto3",
    "botocore",
    "s3transfer",
    "jmespath",
    "dateutil",
    "six",
    "urllib3",
)


def build_runtime_site(target: Path) -> Path:
    """A folder exposing only the Lambda runtime's packages (links into this interpreter's)."""
    import importlib.util

    if (target / ".complete").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in RUNTIME_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"the Lambda runtime needs the package {name!r}")
        origin = Path(spec.origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        link = target / source.name
        if not link.exists():
            with contextlib.suppress(FileExistsError):
                link.symlink_to(source)
    (target / ".complete").touch()
    return target


@dataclass(frozen=True)
class Credentials:
    """Temporary credentials of a function's execution role, from STS AssumeRole."""

    access_key_id: str
    secret_access_key: str
    session_token: str
    expires_at: float  # epoch seconds


@dataclass(frozen=True)
class FunctionSpec:
    """What an execution environment needs to know about one function version."""

    function_name: str
    function_arn: str
    version: str
    handler: str
    runtime: str
    timeout_s: float
    memory_mb: int
    environment: tuple[tuple[str, str], ...]
    code_sha256: str
    region: str
    account_id: str
    reserved_concurrency: int | None = None
    ephemeral_mb: int = 512
    # Layer version ARNs in the function's order (later layers win on conflicting paths).
    layers: tuple[str, ...] = ()
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    role_arn: str = ""

    @property
    def pool_key(self) -> str:
        """Identity of the execution environment: any change gets fresh workers."""
        parts = [
            self.function_arn,
            self.version,
            self.handler,
            self.runtime,
            str(self.timeout_s),
            str(self.memory_mb),
            json.dumps(self.environment),
            self.code_sha256,
            str(self.ephemeral_mb),
            json.dumps(self.layers),
            repr(self.logging),
            self.role_arn,
        ]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


@dataclass
class Outcome:
    """The result of one invocation, shaped as the Invoke API returns it."""

    request_id: str
    payload: bytes
    function_error: str | None
    log_text: str

    def log_tail_b64(self) -> str:
        """The last 4 KB of the invocation's log, base64, as in `x-amz-log-result`."""
        tail = self.log_text.encode("utf-8")[-LOG_TAIL_BYTES:]
        return base64.b64encode(tail).decode("ascii")


@dataclass
class _Invocation:
    request_id: str
    payload: bytes
    timeout_s: float
    client_context: str | None = None
    fetched: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    fetched_at: float = 0.0
    result: bytes | None = None
    error: bytes | None = None


def _error_payload(error_type: str, message: str) -> bytes:
    return json.dumps({"errorType": error_type, "errorMessage": message}).encode()


class _RuntimeApiHandler(BaseHTTPRequestHandler):
    """The Lambda Runtime API (next / response / error / init error) for one worker."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without this, delayed ACKs add ~40 ms.
    disable_nagle_algorithm = True
    server: _RuntimeApiServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        if self.path != f"{RUNTIME_API_PREFIX}/invocation/next":
            self._reply(404, b'{"errorType":"NotFound"}')
            return
        worker = self.server.worker
        invocation = worker.next_invocation()
        if invocation is None:  # the worker is being stopped
            self._reply(410, b'{"errorType":"Gone"}')
            return
        deadline_ms = int((time.time() + invocation.timeout_s) * 1000)
        headers = {
            "Content-Type": "application/json",
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": worker.spec.function_arn,
            "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}",
        }
        if invocation.client_context:
            headers["Lambda-Runtime-Client-Context"] = invocation.client_context
        self._reply(200, invocation.payload, headers)

    def do_POST(self) -> None:
        body = self._body()
        parts = self.path[len(RUNTIME_API_PREFIX) :].strip("/").split("/")
        worker = self.server.worker
        if parts == ["init", "error"]:
            worker.init_error = body or _error_payload("Runtime.Unknown", "init failed")
            self._reply(202, b'{"status":"OK"}')
            return
        if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
            accepted = worker.complete(parts[1], body, is_error=parts[2] == "error")
            status = 202 if accepted else 400
            self._reply(status, b'{"status":"OK"}' if accepted else b'{"errorType":"InvalidId"}')
            return
        self._reply(404, b'{"errorType":"NotFound"}')


class _RuntimeApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        super().__init__(("127.0.0.1", 0), _RuntimeApiHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A worker killed during its long poll resets the connection: expected, not news.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass(frozen=True)
class Sandbox:
    """How a worker's file system view is made (decided once per runtime by a probe)."""

    namespace: bool  # a private mount namespace with its own /tmp
    user_namespace: bool  # entered through a user namespace (not root)
    aws_paths: bool  # code at /var/task, runtime at /var/runtime, layers at /opt


class Worker:
    """One execution environment: an awslambdaric process and its Runtime API."""

    def __init__(
        self,
        spec: FunctionSpec,
        task_root: Path,
        log_path: Path,
        extra_env: dict[str, str],
        log_sink: Callable[[Worker, list[str]], None],
        runtime_site: Path | None = None,
        sandbox: Sandbox | None = None,
        opt_dir: Path | None = None,
        credentials: Credentials | None = None,
        scratch_dir: Path | None = None,
        fork_server: ForkServer | None = None,
        initialization_type: str = "on-demand",
    ) -> None:
        self.spec = spec
        self.ready = threading.Event()  # set when the runtime first asks for work (init done)
        self.provisioned = initialization_type == "provisioned-concurrency"
        self.id = uuid.uuid4().hex
        self.log_path = log_path
        self.log_sink = log_sink
        self.init_error: bytes | None = None
        self.cold = True
        self.init_duration_ms = 0.0
        self.idle_since = time.monotonic()
        self.credentials_expire_at = credentials.expires_at if credentials else float("inf")
        self._started_at = time.monotonic()
        self._cond = threading.Condition()
        self._pending: _Invocation | None = None
        self._current: _Invocation | None = None
        self._stopping = False
        self._log_offset = 0
        self._scratch_dir = scratch_dir
        self._api = _RuntimeApiServer(self)
        threading.Thread(target=self._api.serve_forever, daemon=True, name="runtime-api").start()
        host, port = str(self._api.server_address[0]), int(self._api.server_address[1])
        sandbox = sandbox or Sandbox(namespace=False, user_namespace=False, aws_paths=False)
        plan = _sandbox_plan(spec, sandbox, task_root, runtime_site, opt_dir)
        env = {name: os.environ[name] for name in _HOST_VARIABLES if name in os.environ}
        env.update(
            {
                "AWS_LAMBDA_RUNTIME_API": f"{host}:{port}",
                "_HANDLER": spec.handler,
                "LAMBDA_TASK_ROOT": plan["cwd"],
                "LAMBDA_RUNTIME_DIR": plan["runtime_dir"],
                "PYTHONPATH": plan["runtime_dir"],
                "PYTHONUNBUFFERED": "1",
                "AWS_EXECUTION_ENV": f"AWS_Lambda_{spec.runtime}",
                "AWS_LAMBDA_FUNCTION_NAME": spec.function_name,
                "AWS_LAMBDA_FUNCTION_VERSION": spec.version,
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
                "AWS_LAMBDA_LOG_GROUP_NAME": spec.logging.log_group
                or f"/aws/lambda/{spec.function_name}",
                "AWS_LAMBDA_LOG_STREAM_NAME": self.log_stream_name,
                "AWS_LAMBDA_INITIALIZATION_TYPE": initialization_type,
                "AWS_REGION": spec.region,
                "AWS_DEFAULT_REGION": spec.region,
                "TZ": ":UTC",
                **spec.logging.runtime_variables(),
            }
        )
        if credentials is not None:
            env.update(
                {
                    "AWS_ACCESS_KEY_ID": credentials.access_key_id,
                    "AWS_SECRET_ACCESS_KEY": credentials.secret_access_key,
                    "AWS_SESSION_TOKEN": credentials.session_token,
                }
            )
        if scratch_dir is not None:  # no private /tmp: at least tempfile's default is private
            env["TMPDIR"] = str(scratch_dir)
        env.update(extra_env)
        env.update(dict(spec.environment))
        self._log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process: Any
        if fork_server is not None:
            self.process = fork_server.spawn(env, plan, self._log_file.fileno())
        else:
            env[lambda_sandbox.PLAN_VARIABLE] = json.dumps(plan)
            self.process = subprocess.Popen(
                # -S: no site-packages; the function sees the standard library and runtime site.
                [sys.executable, *(["-S"] if runtime_site else []), lambda_sandbox.__file__],
                cwd=task_root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        threading.Thread(target=self._watch_exit, daemon=True, name="worker-exit").start()

    @property
    def log_stream_name(self) -> str:
        """CloudWatch log stream of this environment, named as Lambda names them."""
        day = time.strftime("%Y/%m/%d", time.gmtime())
        return f"{day}/[{self.spec.version}]{self.id}"

    @property
    def alive(self) -> bool:
        """Whether the worker process still runs and is not being stopped."""
        return self.process.poll() is None and not self._stopping

    # --- called from the Runtime API threads -------------------------------------------
    def next_invocation(self) -> _Invocation | None:
        """Block until an invocation is handed over (the runtime's long poll)."""
        self.ready.set()
        with self._cond:
            while self._pending is None and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            invocation, self._pending = self._pending, None
            assert invocation is not None
            self._current = invocation
            invocation.fetched_at = time.monotonic()
            if self.cold:
                self.init_duration_ms = (invocation.fetched_at - self._started_at) * 1000
            invocation.fetched.set()
            return invocation

    def complete(self, request_id: str, body: bytes, *, is_error: bool) -> bool:
        """Record the handler's result or error for the current invocation."""
        with self._cond:
            invocation = self._current
            if invocation is None or invocation.request_id != request_id:
                return False
            if is_error:
                invocation.error = body
            else:
                invocation.result = body
            self._current = None
            invocation.done.set()
            return True

    # --- called from the invoking thread -----------------------------------------------
    def invoke(self, request_id: str, payload: bytes, client_context: str | None) -> Outcome:
        """Run one invocation to completion, timeout or crash."""
        spec = self.spec
        invocation = _Invocation(request_id, payload, spec.timeout_s, client_context)
        with self._cond:
            self._pending = invocation
            self._cond.notify_all()
        started = time.monotonic()
        timed_out = False
        invocation.fetched.wait(INIT_TIMEOUT_S)
        if invocation.fetched_at:  # the runtime took it (not merely woken by a crash)
            remaining = spec.timeout_s - (time.monotonic() - invocation.fetched_at)
            timed_out = not invocation.done.wait(max(0.0, remaining))
        duration_ms = (time.monotonic() - (invocation.fetched_at or started)) * 1000
        function_error: str | None = None
        status = "error"
        if invocation.result is not None:
            body, status = invocation.result, "success"
        elif invocation.error is not None:
            body, function_error = invocation.error, "Unhandled"
        elif timed_out:
            self.stop()
            body = _error_payload(
                "Sandbox.Timedout",
                f"RequestId: {request_id} Error: Task timed out after {spec.timeout_s:.2f} seconds",
            )
            function_error, status = "Unhandled", "timeout"
        elif self.init_error is not None:
            body, function_error = self.init_error, "Unhandled"
        elif not invocation.fetched.is_set() and self.process.poll() is None:
            self.stop()
            body = _error_payload(
                "Runtime.InitTimeout",
                f"RequestId: {request_id} Error: Init timed out after {INIT_TIMEOUT_S:.2f} seconds",
            )
            function_error, status = "Unhandled", "timeout"
        else:
            code = self.process.wait()
            body = _error_payload(
                "Runtime.ExitError",
                f"RequestId: {request_id} Error: Runtime exited with error: exit status {code}",
            )
            function_error = "Unhandled"
        log_text = self._invocation_log(request_id, duration_ms, status)
        self.cold = False
        return Outcome(request_id, body, function_error, log_text)

    def _invocation_log(self, request_id: str, duration_ms: float, status: str) -> str:
        spec = self.spec
        output = self._read_new_output()
        metrics: dict[str, float | int] = {
            "durationMs": round(duration_ms, 2),
            "billedDurationMs": max(1, int(duration_ms + 0.999)),
            "memorySizeMB": spec.memory_mb,
            "maxMemoryUsedMB": self._max_memory_mb(),
        }
        if self.cold:
            metrics["initDurationMs"] = round(self.init_duration_ms, 2)
        lines = [
            *start_lines(
                spec.logging, request_id, spec.version, self.cold, spec.function_name, spec.runtime
            ),
            *output,
            *end_lines(
                spec.logging,
                request_id,
                metrics,
                status,
                spec.timeout_s if status == "timeout" else None,
            ),
        ]
        self.log_sink(self, lines)
        return "\n".join(lines) + "\n"

    def _read_new_output(self) -> list[str]:
        # The runtime writes straight to the file, so its lines are there before its POST.
        try:
            with open(self.log_path, "rb") as stream:
                stream.seek(self._log_offset)
                data = stream.read()
        except OSError:
            return []
        self._log_offset += len(data)
        return data.decode("utf-8", errors="replace").splitlines()

    def _max_memory_mb(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return max(1, int(line.split()[1]) // 1024)
        return 0

    def _watch_exit(self) -> None:
        self.process.wait()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            current = self._current or self._pending
        if current is not None:
            # Wake the invoking thread: a crash (or kill) ends the invocation now.
            current.fetched.set()
            current.done.set()

    def kill(self) -> None:
        """Signal the worker to die now (the first half of stop, for stopping many at once)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:  # forked, not yet its own group leader
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)

    def stop(self) -> None:
        """Kill the worker process and its Runtime API; idempotent."""
        self.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        if self._scratch_dir is not None:  # its TMPDIR goes with it, as a private /tmp would
            shutil.rmtree(self._scratch_dir, ignore_errors=True)
        # The API server's shutdown waits for its poll loop (up to 0.5 s): nobody waits on it.
        threading.Thread(target=self._close_api, daemon=True, name="runtime-api-close").start()

    def _close_api(self) -> None:
        self._api.shutdown()
        self._api.server_close()
        self._log_file.close()


def _sandbox_plan(
    spec: FunctionSpec,
    sandbox: Sandbox,
    task_root: Path,
    runtime_site: Path | None,
    opt_dir: Path | None,
) -> dict[str, Any]:
    """The mounts and import path handed to `lambda_sandbox` in the worker."""
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    if sandbox.aws_paths:
        task, runtime, opt = lambda_sandbox.TASK_ROOT, lambda_sandbox.RUNTIME_DIR, "/opt"
        binds = [[str(task_root), task, True]]
        if runtime_site is not None:
            binds.append([str(runtime_site), runtime, True])
        else:  # not isolated: the host's interpreter and packages stand in for the runtime
            runtime = str(Path(sys.executable).parent)
        if opt_dir is not None:
            binds.append([str(opt_dir), opt, True])
    else:
        task, binds = str(task_root), []
        runtime = str(runtime_site) if runtime_site else str(Path(sys.executable).parent)
        opt = str(opt_dir) if opt_dir else "/opt"
    sys_path = [task, f"{opt}/python/lib/{python}/site-packages", f"{opt}/python"]
    if runtime_site is not None:
        sys_path.append(runtime)
    return {
        "namespace": sandbox.namespace,
        "user_namespace": sandbox.user_namespace,
        "binds": binds,
        "tmpfs": [["/tmp", spec.ephemeral_mb]] if sandbox.namespace else [],
        "cwd": task,
        "runtime_dir": runtime,
        "sys_path": sys_path,
        "argv": [spec.handler],
    }


class FunctionPool:
    """Warm workers of one function version and configuration."""

    def __init__(
        self, spec: FunctionSpec, runtime: LambdaRuntime, task_root: Path, opt_dir: Path | None
    ) -> None:
        self.spec = spec
        self.runtime = runtime
        self.task_root = task_root
        self.opt_dir = opt_dir
        self._cond = threading.Condition()
        self._idle: list[Worker] = []
        self._workers: set[Worker] = set()
        self._retired = False

    @property
    def limit(self) -> int:
        """Most environments of this function at once (the emulator's cap; callers wait)."""
        return self.runtime.max_concurrency

    def acquire(self) -> Worker:
        """A warm idle worker, or a new one if under the limit; waits otherwise."""
        with self._cond:
            while True:
                while self._idle:
                    worker = self._idle.pop()
                    fresh = (
                        worker.credentials_expire_at - time.time() > CREDENTIALS_REFRESH_MARGIN_S
                    )
                    if worker.alive and fresh:
                        return worker
                    # Dead, or its role's credentials expire soon: a new environment replaces it.
                    self._workers.discard(worker)
                    worker.stop()
                if len(self._workers) < self.limit:
                    worker = self.runtime.spawn(self.spec, self.task_root, self.opt_dir)
                    self._workers.add(worker)
                    return worker
                self._cond.wait()

    def release(self, worker: Worker) -> None:
        """Hand a worker back after an invocation; dead or retired ones are dropped."""
        with self._cond:
            if worker.alive and not self._retired:
                worker.idle_since = time.monotonic()
                self._idle.append(worker)
            else:
                self._workers.discard(worker)
                worker.stop()
            self._cond.notify()

    def provision(self, count: int) -> None:
        """Keep `count` environments initialised ahead of invocations (ProvisionedConcurrency)."""
        with self._cond:
            for worker in self._workers:  # a smaller count releases the surplus to reaping
                worker.provisioned = False
            have = [w for w in self._idle if w.alive][: min(count, self.limit)]
            for worker in have:
                worker.provisioned = True
            missing = min(count, self.limit) - len(have)
        started = []
        for _ in range(max(0, missing)):
            worker = self.runtime.spawn(
                self.spec, self.task_root, self.opt_dir, "provisioned-concurrency"
            )
            with self._cond:
                self._workers.add(worker)
            started.append(worker)
        for worker in started:
            if worker.ready.wait(INIT_TIMEOUT_S) and worker.alive:
                worker.cold = False  # initialised before any invocation: no Init Duration
                self.release(worker)
            else:
                with self._cond:
                    self._workers.discard(worker)
                worker.stop()

    @property
    def provisioned_ready(self) -> int:
        """Provisioned environments initialised and alive."""
        with self._cond:
            return sum(1 for w in self._workers if w.provisioned and w.alive and w.ready.is_set())

    def reap_idle(self, idle_timeout_s: float) -> None:
        """Stop workers idle for longer than the timeout (provisioned ones stay)."""
        now = time.monotonic()
        with self._cond:
            keep = []
            for worker in self._idle:
                expired = now - worker.idle_since > idle_timeout_s and not worker.provisioned
                if expired or not worker.alive:
                    self._workers.discard(worker)
                    worker.stop()
                else:
                    keep.append(worker)
            self._idle = keep

    def oldest_idle(self) -> Worker | None:
        """The least recently used idle worker, if any."""
        with self._cond:
            idle = [w for w in self._idle if not w.provisioned]
            return min(idle, key=lambda w: w.idle_since, default=None)

    def evict(self, worker: Worker) -> bool:
        """Stop an idle worker to make room elsewhere; False if it is no longer idle."""
        with self._cond:
            if worker not in self._idle:
                return False
            self._idle.remove(worker)
            self._workers.discard(worker)
        worker.stop()
        return True

    def retire(self) -> None:
        """Stop idle workers now; busy ones stop when their invocation ends."""
        with self._cond:
            self._retired = True
            idle, self._idle = self._idle, []
            for worker in idle:
                self._workers.discard(worker)
                worker.stop()
            self._cond.notify_all()

    def take_all(self) -> list[Worker]:
        """Retire the pool and hand over every worker, busy or not, for stopping."""
        with self._cond:
            self._retired = True
            workers = list(self._workers)
            self._workers.clear()
            self._idle.clear()
            self._cond.notify_all()
        return workers

    @property
    def size(self) -> int:
        """Number of live workers."""
        return len(self._workers)


class LambdaRuntime:
    """Runs Lambda functions in warm awslambdaric workers; one instance per emulator."""

    def __init__(
        self,
        state_dir: Path,
        max_concurrency: int = 16,
        idle_timeout_s: float = 900.0,
        extra_env: dict[str, str] | None = None,
        log_sink: Callable[[Worker, list[str]], None] | None = None,
        isolate: bool = True,
        max_environments: int | None = None,
        account_concurrency: int | None = None,
        credentials: Callable[[FunctionSpec], Credentials | None] | None = None,
        sandbox: Sandbox | None = None,
    ) -> None:
        self.root = state_dir / "lambda"
        # Isolated: only the standard library and boto3 importable, as on AWS.
        self.runtime_site = build_runtime_site(self.root / "runtime-site") if isolate else None
        self.max_concurrency = max_concurrency
        self.idle_timeout_s = idle_timeout_s
        # All environments together; beyond it the least recently used idle one is stopped.
        self.max_environments = max_environments or int(
            os.environ.get("LOCAL_AWS_LAMBDA_MAX_ENVIRONMENTS", "64")
        )
        self.meter = (
            ConcurrencyMeter(account_concurrency) if account_concurrency else ConcurrencyMeter()
        )
        self.extra_env = dict(extra_env or {})
        self.log_sink = log_sink or (lambda worker, lines: None)
        self.credentials = credentials
        self._pools: dict[str, FunctionPool] = {}  # pool key -> pool
        self._current: dict[str, str] = {}  # function ARN + version -> current pool key
        self._lock = threading.Lock()
        self._warned_runtimes: set[tuple[str, str]] = set()
        self._sandbox = sandbox  # None: probed at the first spawn
        # One warm interpreter forks new environments (LOCAL_AWS_LAMBDA_FORK_SERVER=0: exec each).
        self._use_fork_server = os.environ.get("LOCAL_AWS_LAMBDA_FORK_SERVER", "1") != "0"
        self._fork_server: ForkServer | None = None
        self._fork_lock = threading.Lock()
        self._stopped = threading.Event()
        threading.Thread(target=self._reaper, daemon=True, name="lambda-reaper").start()

    def invoke(
        self,
        spec: FunctionSpec,
        code_zip: Callable[[], bytes],
        payload: bytes,
        client_context: str | None = None,
        layer_zips: Callable[[], list[bytes]] | None = None,
    ) -> Outcome:
        """Invoke a function version synchronously; raises Throttled over a concurrency limit."""
        with self.meter.execution(spec.function_arn, spec.reserved_concurrency):
            pool = self._pool_for(spec, code_zip, layer_zips)
            request_id = str(uuid.uuid4())
            worker = pool.acquire()
            try:
                return worker.invoke(request_id, payload, client_context)
            finally:
                pool.release(worker)

    @property
    def sandbox(self) -> Sandbox:
        """How workers are isolated here; probed once, with one warning if /tmp is shared."""
        if self._sandbox is None:
            ok, user_ns, reason = lambda_sandbox.probe(sys.executable)
            aws_paths = ok and not user_ns and lambda_sandbox.aws_paths_available()
            if not ok:
                log.warning(
                    "Lambda environments cannot have a private /tmp here (%s): each gets its own "
                    "TMPDIR, but absolute /tmp paths are shared between environments",
                    reason,
                )
            self._sandbox = Sandbox(namespace=ok, user_namespace=user_ns, aws_paths=aws_paths)
        return self._sandbox

    def spawn(
        self,
        spec: FunctionSpec,
        task_root: Path,
        opt_dir: Path | None = None,
        initialization_type: str = "on-demand",
    ) -> Worker:
        """Start a new execution environment for a function version."""
        self._make_room()
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{spec.function_name}-{uuid.uuid4().hex[:8]}.log"
        sandbox = self.sandbox
        needed = [task_root, *([opt_dir] if opt_dir else []), Path(sys.executable).resolve()]
        if self.runtime_site is not None:
            needed.append(self.runtime_site)
        if sandbox.namespace and not sandbox.aws_paths and any(_under_tmp(p) for p in needed):
            # The code lives under /tmp and cannot be bound elsewhere: /tmp must stay visible.
            sandbox = Sandbox(namespace=False, user_namespace=False, aws_paths=False)
        scratch = None
        if not sandbox.namespace:
            scratch = self.root / "tmp" / uuid.uuid4().hex[:12]
            scratch.mkdir(parents=True)
        credentials = self.credentials(spec) if self.credentials else None
        fork_server = self._forker() if sandbox == self.sandbox else None
        return Worker(
            spec,
            task_root,
            log_path,
            self.extra_env,
            self.log_sink,
            self.runtime_site,
            sandbox=sandbox,
            opt_dir=opt_dir,
            credentials=credentials,
            scratch_dir=scratch,
            fork_server=fork_server,
            initialization_type=initialization_type,
        )

    def provision(
        self,
        spec: FunctionSpec,
        code_zip: Callable[[], bytes],
        layer_zips: Callable[[], list[bytes]] | None,
        count: int,
    ) -> None:
        """Initialise `count` environments of a version ahead of invocations (blocks until done)."""
        self._pool_for(spec, code_zip, layer_zips).provision(count)

    def provisioned_ready(self, spec: FunctionSpec) -> int:
        """How many provisioned environments of this version are initialised."""
        with self._lock:
            pool = self._pools.get(spec.pool_key)
        return pool.provisioned_ready if pool else 0

    def prewarm(self) -> None:
        """Start the fork server in the background (a new function will want it soon)."""
        if self._use_fork_server and self._fork_server is None:
            threading.Thread(target=self._forker, daemon=True, name="lambda-prewarm").start()

    def _forker(self) -> ForkServer | None:
        """The fork server, started on first use; None (exec each worker) if it cannot run."""
        if not self._use_fork_server:
            return None
        with self._fork_lock:
            if self._fork_server is not None and self._fork_server.alive:
                return self._fork_server
            if self._stopped.is_set() or not self._use_fork_server:
                return None
            sandbox = self.sandbox
            binds: list[list[object]] = []
            if self.runtime_site is None:
                runtime_dir = str(Path(sys.executable).parent)
            elif sandbox.aws_paths:
                runtime_dir = lambda_sandbox.RUNTIME_DIR
                binds = [[str(self.runtime_site), runtime_dir, True]]
            else:
                runtime_dir = str(self.runtime_site)
            logs = self.root / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            try:
                self._fork_server = ForkServer(
                    sys.executable,
                    self.runtime_site is not None,
                    runtime_dir,
                    binds,
                    str(logs / "forkserver.log"),
                )
            except (OSError, RuntimeError) as error:
                log.warning("Lambda fork server unavailable, starting each worker anew: %s", error)
                self._use_fork_server = False
                return None
            return self._fork_server

    def _make_room(self) -> None:
        """At the cap on environments, stop the least recently used idle one (any function)."""
        while self.worker_count() >= self.max_environments:
            with self._lock:
                pools = list(self._pools.values())
            candidates = [(w, p) for p in pools if (w := p.oldest_idle()) is not None]
            if not candidates:
                return  # all busy: the per-function cap and the account limit bound the rest
            worker, pool = min(candidates, key=lambda c: c[0].idle_since)
            pool.evict(worker)

    def worker_count(self, function_arn: str | None = None) -> int:
        """Live workers, for one function or all."""
        with self._lock:
            pools = list(self._pools.values())
        return sum(
            p.size for p in pools if function_arn is None or p.spec.function_arn == function_arn
        )

    def _pool_for(
        self,
        spec: FunctionSpec,
        code_zip: Callable[[], bytes],
        layer_zips: Callable[[], list[bytes]] | None,
    ) -> FunctionPool:
        key = spec.pool_key
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                return pool
            self._check_runtime(spec)
            task_root = self._unpack(spec.code_sha256, [code_zip()], "code")
            opt_dir = None
            if spec.layers and layer_zips is not None:
                layers_key = hashlib.sha256("\0".join(spec.layers).encode()).hexdigest()[:24]
                opt_dir = self._unpack(layers_key, layer_zips(), "layers")
            pool = FunctionPool(spec, self, task_root, opt_dir)
            self._pools[key] = pool
            identity = f"{spec.function_arn}:{spec.version}"
            old_key = self._current.get(identity)
            self._current[identity] = key
            old = self._pools.pop(old_key, None) if old_key else None
        if old is not None:
            old.retire()
        return pool

    def _unpack(self, key: str, archives: list[bytes], kind: str) -> Path:
        """Unpack zips into one folder (later archives overwrite earlier ones, as layers do)."""
        target = self.root / kind / key.replace("/", "_").replace("+", "-")
        if target.exists():
            return target
        staging = target.with_name(target.name + f".tmp{uuid.uuid4().hex[:6]}")
        staging.mkdir(parents=True)
        for code in archives:
            with zipfile.ZipFile(io.BytesIO(code)) as archive:
                for member in archive.infolist():
                    destination = (staging / member.filename).resolve()
                    if not destination.is_relative_to(staging.resolve()):
                        shutil.rmtree(staging)
                        raise ValueError(f"zip entry escapes the task root: {member.filename!r}")
                archive.extractall(staging)
        try:
            staging.rename(target)
        except OSError:  # another thread unpacked the same code first
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def _check_runtime(self, spec: FunctionSpec) -> None:
        host = f"python{sys.version_info.major}.{sys.version_info.minor}"
        key = (spec.function_name, spec.runtime)
        if spec.runtime != host and key not in self._warned_runtimes:
            self._warned_runtimes.add(key)
            log.warning(
                "function %s declares runtime %s but runs on the host's %s",
                spec.function_name,
                spec.runtime,
                host,
            )

    def _reaper(self) -> None:
        while not self._stopped.wait(min(30.0, self.idle_timeout_s)):
            with self._lock:
                pools = list(self._pools.values())
            for pool in pools:
                pool.reap_idle(self.idle_timeout_s)

    def shutdown(self) -> None:
        """Stop every worker at once (all killed first, then reaped); on emulator shutdown."""
        started = time.monotonic()
        self._stopped.set()
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        workers = [worker for pool in pools for worker in pool.take_all()]
        for worker in workers:
            worker.kill()
        for worker in workers:
            worker.stop()
        with self._fork_lock:
            if self._fork_server is not None:
                self._fork_server.close()
        if workers:
            elapsed_ms = (time.monotonic() - started) * 1000
            log.info("stopped %d Lambda environments in %.0f ms", len(workers), elapsed_ms)


def _under_tmp(path: Path) -> bool:
    return path.resolve().is_relative_to("/tmp")
