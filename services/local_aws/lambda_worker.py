"""One Lambda execution environment: an `awslambdaric` process, its environment and sandbox
plan, and the invocations it runs one at a time (timeouts, crashes, log lines, memory)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import lambda_sandbox
from .lambda_forkserver import ForkServer
from .lambda_logs import end_lines, start_lines
from .lambda_runtime_api import Invocation, RuntimeApiServer, error_payload
from .lambda_spec import Credentials, FunctionSpec, Outcome, Sandbox

INIT_TIMEOUT_S = 10.0
# Variables from the host that a Lambda sandbox legitimately has (everything else is withheld).
_HOST_VARIABLES = ("PATH", "LANG", "LC_ALL", "TZ", "SYSTEMROOT")


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
        self._pending: Invocation | None = None
        self._current: Invocation | None = None
        self._stopping = False
        self._log_offset = 0
        self._scratch_dir = scratch_dir
        self._api = RuntimeApiServer(self)
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
    def next_invocation(self) -> Invocation | None:
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
        invocation = Invocation(request_id, payload, spec.timeout_s, client_context)
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
            body = error_payload(
                "Sandbox.Timedout",
                f"RequestId: {request_id} Error: Task timed out after {spec.timeout_s:.2f} seconds",
            )
            function_error, status = "Unhandled", "timeout"
        elif self.init_error is not None:
            body, function_error = self.init_error, "Unhandled"
        elif not invocation.fetched.is_set() and self.process.poll() is None:
            self.stop()
            body = error_payload(
                "Runtime.InitTimeout",
                f"RequestId: {request_id} Error: Init timed out after {INIT_TIMEOUT_S:.2f} seconds",
            )
            function_error, status = "Unhandled", "timeout"
        else:
            code = self.process.wait()
            body = error_payload(
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
