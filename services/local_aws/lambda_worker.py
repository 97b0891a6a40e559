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
from .lambda_forkserver import ForkedProcess, ForkServer, Spare
from .lambda_logs import end_lines, start_lines
from .lambda_runtime_api import (
    RUNTIME_API_PREFIX,
    Closed,
    Invocation,
    Request,
    RuntimeApi,
    error_payload,
)
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
        # One thread at a time talks to the runtime (an invocation, or a provisioning wait).
        self._driving = threading.Lock()
        self._waiting: Request | None = None  # the runtime's `/next`, read and not yet answered
        self._stopping = False
        self._log_offset = 0
        self._scratch_dir = scratch_dir
        # A spare forked ahead comes with its Runtime API (its native client already knows it).
        spare = fork_server.take_spare() if fork_server is not None else None
        api = spare.api if spare is not None else RuntimeApi()
        assert isinstance(api, RuntimeApi)  # what LambdaRuntime gives its fork server
        self._api = api
        sandbox = sandbox or Sandbox(namespace=False, user_namespace=False, aws_paths=False)
        plan = _sandbox_plan(spec, sandbox, task_root, runtime_site, opt_dir)
        env = {name: os.environ[name] for name in _HOST_VARIABLES if name in os.environ}
        env.update(
            {
                "AWS_LAMBDA_RUNTIME_API": self._api.address,
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
        self.process: Any = self._start(fork_server, spare, env, plan, runtime_site, task_root)
        if isinstance(self.process, ForkedProcess):
            self.process.on_exit(self._exited)
        else:
            threading.Thread(target=self._watch_exit, daemon=True, name="worker-exit").start()

    def _start(
        self,
        fork_server: ForkServer | None,
        spare: Spare | None,
        env: dict[str, str],
        plan: dict[str, Any],
        runtime_site: Path | None,
        task_root: Path,
    ) -> Any:
        """The environment's process: the spare, else a fork, else an interpreter of its own."""
        log_fd = self._log_file.fileno()
        if fork_server is not None and spare is not None:
            process = fork_server.start(spare, env, plan, log_fd)
            if process is not None:
                return process
            # It died unused: a fork of its own, with an API of its own.
            spare.api.close()
            self._api = RuntimeApi()
            env["AWS_LAMBDA_RUNTIME_API"] = self._api.address
        if fork_server is not None:
            return fork_server.spawn(env, plan, log_fd)
        env[lambda_sandbox.PLAN_VARIABLE] = json.dumps(plan)
        return subprocess.Popen(
            # -S: no site-packages; the function sees the standard library and runtime site.
            [sys.executable, *(["-S"] if runtime_site else []), lambda_sandbox.__file__],
            cwd=task_root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def log_stream_name(self) -> str:
        """CloudWatch log stream of this environment, named as Lambda names them."""
        day = time.strftime("%Y/%m/%d", time.gmtime())
        return f"{day}/[{self.spec.version}]{self.id}"

    @property
    def alive(self) -> bool:
        """Whether the worker process still runs and is not being stopped."""
        return self.process.poll() is None and not self._stopping

    # --- called from the thread driving the environment ---------------------------------
    def wait_ready(self, timeout_s: float) -> bool:
        """Wait for the runtime to finish its init and ask for work (a provisioned environment)."""
        with self._driving:
            return self._serve(time.monotonic() + timeout_s) == "next"

    def _serve(self, deadline: float, invocation: Invocation | None = None) -> str:
        """Answer the runtime until it asks for work ("next"; without an invocation) or ends the
        invocation ("done"); "timeout" when the deadline passes first, "closed" when the
        environment stops or its process exits."""
        while invocation is not None or self._waiting is None:
            try:
                request = self._api.next_request(deadline)
            except Closed:
                return "closed"
            if request is None:
                return "timeout"
            if request.is_next:  # during an invocation: asked again unanswered, the deadline runs
                self._waiting = request
                self.ready.set()
            elif self._answer(request, invocation):
                return "done"
        return "next"

    def _answer(self, request: Request, invocation: Invocation | None) -> bool:
        """Answer a request other than `/next`; True when it ends `invocation`."""
        prefix = RUNTIME_API_PREFIX + "/"
        parts = request.path[len(prefix) :].split("/") if request.path.startswith(prefix) else []
        if request.method == "POST" and parts == ["init", "error"]:
            self.init_error = request.body or error_payload("Runtime.Unknown", "init failed")
            self._api.reply(202, b'{"status":"OK"}')
            return False
        if (
            request.method == "POST"
            and len(parts) == 3
            and parts[0] == "invocation"
            and parts[2] in ("response", "error")
        ):
            if invocation is None or parts[1] != invocation.request_id:
                self._api.reply(400, b'{"errorType":"InvalidId"}')
                return False
            if parts[2] == "error":
                invocation.error = request.body
            else:
                invocation.result = request.body
            self._api.reply(202, b'{"status":"OK"}')
            return True
        self._api.reply(404, b'{"errorType":"NotFound"}')
        return False

    def _hand_over(self, invocation: Invocation) -> None:
        """Answer the waiting `/next` with the invocation (its deadline starts now)."""
        self._waiting = None
        invocation.fetched_at = time.monotonic()
        if self.cold:
            self.init_duration_ms = (invocation.fetched_at - self._started_at) * 1000
        now = time.time()
        headers = {
            "Content-Type": "application/json",
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(int((now + invocation.timeout_s) * 1000)),
            "Lambda-Runtime-Invoked-Function-Arn": self.spec.function_arn,
            "Lambda-Runtime-Trace-Id": f"Root=1-{int(now):08x}-{uuid.uuid4().hex[:24]}",
        }
        if invocation.client_context:
            headers["Lambda-Runtime-Client-Context"] = invocation.client_context
        self._api.reply(200, invocation.payload, headers)

    def _run(self, invocation: Invocation) -> str:
        """Hand the invocation to the runtime and read its answer: "done", "timeout" (of the
        function, or of its init), "closed" (the process exited or the environment stops)."""
        state = self._serve(time.monotonic() + INIT_TIMEOUT_S)
        if state != "next":
            return state
        self._hand_over(invocation)
        return self._serve(invocation.fetched_at + invocation.timeout_s, invocation)

    # --- called from the invoking thread -----------------------------------------------
    def invoke(self, request_id: str, payload: bytes, client_context: str | None) -> Outcome:
        """Run one invocation to completion, timeout or crash."""
        spec = self.spec
        invocation = Invocation(request_id, payload, spec.timeout_s, client_context)
        started = time.monotonic()
        with self._driving:
            state = self._run(invocation)
        duration_ms = (time.monotonic() - (invocation.fetched_at or started)) * 1000
        function_error: str | None = None
        status = "error"
        if invocation.result is not None:
            body, status = invocation.result, "success"
        elif invocation.error is not None:
            body, function_error = invocation.error, "Unhandled"
        elif state == "timeout" and invocation.fetched_at:
            self.stop()
            body = error_payload(
                "Sandbox.Timedout",
                f"RequestId: {request_id} Error: Task timed out after {spec.timeout_s:.2f} seconds",
            )
            function_error, status = "Unhandled", "timeout"
        elif self.init_error is not None:
            body, function_error = self.init_error, "Unhandled"
        elif state == "timeout":
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
        self._exited()

    def _exited(self) -> None:
        self._stopping = True
        self._api.close()  # wakes a thread waiting on the runtime: a crash ends its invocation now

    def kill(self) -> None:
        """Signal the worker to die now (the first half of stop, for stopping many at once)."""
        self._stopping = True
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:  # forked, not yet its own group leader
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)

    def stop(self) -> None:
        """Kill the worker process and close its Runtime API; idempotent."""
        self.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self._api.close()
        if self._scratch_dir is not None:  # its TMPDIR goes with it, as a private /tmp would
            shutil.rmtree(self._scratch_dir, ignore_errors=True)
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
