"""A real Lambda runtime for the emulator: warm worker processes driven through `awslambdaric`.

Each execution environment is one worker process running AWS's runtime interface client
(`python -m awslambdaric <handler>`) against its own Lambda Runtime API, served here on a
loopback port. A worker handles one invocation at a time and is kept warm between invocations,
so module-level state survives as on AWS. Workers are grouped in a pool per function version
and configuration: new code or configuration means a new pool, and the old workers retire.
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

log = logging.getLogger("local_aws.lambda")

RUNTIME_API_PREFIX = "/2018-06-01/runtime"
INIT_TIMEOUT_S = 10.0
LOG_TAIL_BYTES = 4096
# Variables from the host that a Lambda sandbox legitimately has (everything else is withheld).
_HOST_VARIABLES = ("PATH", "LANG", "LC_ALL", "TZ", "SYSTEMROOT", "TMPDIR")
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
    ) -> None:
        self.spec = spec
        self.id = uuid.uuid4().hex
        self.log_path = log_path
        self.log_sink = log_sink
        self.init_error: bytes | None = None
        self.cold = True
        self.init_duration_ms = 0.0
        self._started_at = time.monotonic()
        self._cond = threading.Condition()
        self._pending: _Invocation | None = None
        self._current: _Invocation | None = None
        self._stopping = False
        self._log_offset = 0
        self._api = _RuntimeApiServer(self)
        threading.Thread(target=self._api.serve_forever, daemon=True, name="runtime-api").start()
        host, port = str(self._api.server_address[0]), int(self._api.server_address[1])
        env = {name: os.environ[name] for name in _HOST_VARIABLES if name in os.environ}
        env.update(
            {
                "AWS_LAMBDA_RUNTIME_API": f"{host}:{port}",
                "_HANDLER": spec.handler,
                "LAMBDA_TASK_ROOT": str(task_root),
                "LAMBDA_RUNTIME_DIR": str(Path(sys.executable).parent),
                "PYTHONPATH": os.pathsep.join(
                    [str(task_root), *([str(runtime_site)] if runtime_site else [])]
                ),
                "PYTHONUNBUFFERED": "1",
                "AWS_EXECUTION_ENV": f"AWS_Lambda_{spec.runtime}",
                "AWS_LAMBDA_FUNCTION_NAME": spec.function_name,
                "AWS_LAMBDA_FUNCTION_VERSION": spec.version,
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.function_name}",
                "AWS_LAMBDA_LOG_STREAM_NAME": self.log_stream_name,
                "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
                "AWS_REGION": spec.region,
                "AWS_DEFAULT_REGION": spec.region,
                # The function's role, as Lambda hands it over: the emulator accepts any keys.
                "AWS_ACCESS_KEY_ID": "ASIALOCALLAMBDAROLE00",
                "AWS_SECRET_ACCESS_KEY": "local-lambda-role-secret",
                "AWS_SESSION_TOKEN": "local-lambda-role-session",
                "TZ": ":UTC",
            }
        )
        env.update(extra_env)
        env.update(dict(spec.environment))
        self._log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            # -S: no site-packages; the function sees the standard library and the runtime site.
            [sys.executable, *(["-S"] if runtime_site else []), "-m", "awslambdaric", spec.handler],
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
        if invocation.result is not None:
            body = invocation.result
        elif invocation.error is not None:
            body, function_error = invocation.error, "Unhandled"
        elif timed_out:
            self.stop()
            body = _error_payload(
                "Sandbox.Timedout",
                f"RequestId: {request_id} Error: Task timed out after {spec.timeout_s:.2f} seconds",
            )
            function_error = "Unhandled"
        elif self.init_error is not None:
            body, function_error = self.init_error, "Unhandled"
        elif not invocation.fetched.is_set() and self.process.poll() is None:
            self.stop()
            body = _error_payload(
                "Runtime.InitTimeout",
                f"RequestId: {request_id} Error: Init timed out after {INIT_TIMEOUT_S:.2f} seconds",
            )
            function_error = "Unhandled"
        else:
            code = self.process.wait()
            body = _error_payload(
                "Runtime.ExitError",
                f"RequestId: {request_id} Error: Runtime exited with error: exit status {code}",
            )
            function_error = "Unhandled"
        log_text = self._invocation_log(request_id, duration_ms, timed_out, spec)
        self.cold = False
        return Outcome(request_id, body, function_error, log_text)

    def _invocation_log(
        self, request_id: str, duration_ms: float, timed_out: bool, spec: FunctionSpec
    ) -> str:
        output = self._read_new_output()
        lines = [f"START RequestId: {request_id} Version: {spec.version}", *output]
        if timed_out:
            lines.append(
                f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())}Z {request_id} "
                f"Task timed out after {spec.timeout_s:.2f} seconds"
            )
        lines.append(f"END RequestId: {request_id}")
        report = (
            f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\t"
            f"Billed Duration: {max(1, int(duration_ms + 0.999))} ms\t"
            f"Memory Size: {spec.memory_mb} MB\tMax Memory Used: {self._max_memory_mb()} MB"
        )
        if self.cold:
            report += f"\tInit Duration: {self.init_duration_ms:.2f} ms"
        lines.append(report)
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

    def stop(self) -> None:
        """Kill the worker process and its Runtime API; idempotent."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
        self._api.shutdown()
        self._api.server_close()
        self._log_file.close()


class FunctionPool:
    """Warm workers of one function version and configuration."""

    def __init__(self, spec: FunctionSpec, runtime: LambdaRuntime, task_root: Path) -> None:
        self.spec = spec
        self.runtime = runtime
        self.task_root = task_root
        self._cond = threading.Condition()
        self._idle: list[Worker] = []
        self._workers: set[Worker] = set()
        self._retired = False

    @property
    def limit(self) -> int:
        """Most concurrent executions: the reserved concurrency, else the emulator's limit."""
        reserved = self.spec.reserved_concurrency
        return (
            min(reserved, self.runtime.max_concurrency)
            if reserved
            else self.runtime.max_concurrency
        )

    def acquire(self) -> Worker:
        """A warm idle worker, or a new one if under the limit; waits otherwise."""
        with self._cond:
            while True:
                while self._idle:
                    worker = self._idle.pop()
                    if worker.alive:
                        return worker
                    self._workers.discard(worker)
                if len(self._workers) < self.limit:
                    worker = self.runtime.spawn(self.spec, self.task_root)
                    self._workers.add(worker)
                    return worker
                self._cond.wait()

    def release(self, worker: Worker) -> None:
        """Hand a worker back after an invocation; dead or retired ones are dropped."""
        with self._cond:
            if worker.alive and not self._retired:
                worker.idle_since = time.monotonic()  # type: ignore[attr-defined]
                self._idle.append(worker)
            else:
                self._workers.discard(worker)
                worker.stop()
            self._cond.notify()

    def reap_idle(self, idle_timeout_s: float) -> None:
        """Stop workers idle for longer than the timeout."""
        now = time.monotonic()
        with self._cond:
            keep = []
            for worker in self._idle:
                if now - getattr(worker, "idle_since", now) > idle_timeout_s or not worker.alive:
                    self._workers.discard(worker)
                    worker.stop()
                else:
                    keep.append(worker)
            self._idle = keep

    def retire(self) -> None:
        """Stop idle workers now; busy ones stop when their invocation ends."""
        with self._cond:
            self._retired = True
            idle, self._idle = self._idle, []
            for worker in idle:
                self._workers.discard(worker)
                worker.stop()
            self._cond.notify_all()

    def stop_all(self) -> None:
        """Stop every worker, busy or not."""
        with self._cond:
            self._retired = True
            workers = list(self._workers)
            self._workers.clear()
            self._idle.clear()
        for worker in workers:
            worker.stop()

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
    ) -> None:
        self.root = state_dir / "lambda"
        # Isolated: only the standard library and boto3 importable, as on AWS.
        self.runtime_site = build_runtime_site(self.root / "runtime-site") if isolate else None
        self.max_concurrency = max_concurrency
        self.idle_timeout_s = idle_timeout_s
        self.extra_env = dict(extra_env or {})
        self.log_sink = log_sink or (lambda worker, lines: None)
        self._pools: dict[str, FunctionPool] = {}  # pool key -> pool
        self._current: dict[str, str] = {}  # function ARN + version -> current pool key
        self._lock = threading.Lock()
        self._warned_runtimes: set[tuple[str, str]] = set()
        self._stopped = threading.Event()
        threading.Thread(target=self._reaper, daemon=True, name="lambda-reaper").start()

    def invoke(
        self,
        spec: FunctionSpec,
        code_zip: Callable[[], bytes],
        payload: bytes,
        client_context: str | None = None,
    ) -> Outcome:
        """Invoke a function version synchronously and return its outcome."""
        pool = self._pool_for(spec, code_zip)
        request_id = str(uuid.uuid4())
        worker = pool.acquire()
        try:
            return worker.invoke(request_id, payload, client_context)
        finally:
            pool.release(worker)

    def spawn(self, spec: FunctionSpec, task_root: Path) -> Worker:
        """Start a new execution environment for a function version."""
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{spec.function_name}-{uuid.uuid4().hex[:8]}.log"
        return Worker(spec, task_root, log_path, self.extra_env, self.log_sink, self.runtime_site)

    def worker_count(self, function_arn: str | None = None) -> int:
        """Live workers, for one function or all."""
        with self._lock:
            pools = list(self._pools.values())
        return sum(
            p.size for p in pools if function_arn is None or p.spec.function_arn == function_arn
        )

    def _pool_for(self, spec: FunctionSpec, code_zip: Callable[[], bytes]) -> FunctionPool:
        key = spec.pool_key
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                return pool
            self._check_runtime(spec)
            task_root = self._unpack(spec, code_zip())
            pool = FunctionPool(spec, self, task_root)
            self._pools[key] = pool
            identity = f"{spec.function_arn}:{spec.version}"
            old_key = self._current.get(identity)
            self._current[identity] = key
            old = self._pools.pop(old_key, None) if old_key else None
        if old is not None:
            old.retire()
        return pool

    def _unpack(self, spec: FunctionSpec, code: bytes) -> Path:
        target = self.root / "code" / spec.code_sha256.replace("/", "_").replace("+", "-")
        if target.exists():
            return target
        staging = target.with_name(target.name + f".tmp{uuid.uuid4().hex[:6]}")
        staging.mkdir(parents=True)
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
        """Stop every worker; called on emulator shutdown."""
        self._stopped.set()
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.stop_all()
