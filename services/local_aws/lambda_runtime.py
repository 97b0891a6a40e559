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
This module dispatches invocations to pools (`lambda_pool`) of workers (`lambda_worker`),
each serving its runtime the Runtime API (`lambda_runtime_api`); shared types are in
`lambda_spec`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

from . import lambda_sandbox
from .lambda_concurrency import ConcurrencyMeter
from .lambda_forkserver import ForkServer
from .lambda_pool import FunctionPool
from .lambda_runtime_api import RuntimeApi
from .lambda_spec import Credentials, FunctionSpec, Outcome, Sandbox
from .lambda_worker import Worker

log = logging.getLogger("local_aws.lambda")

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


class LambdaRuntime:
    """Runs Lambda functions in warm awslambdaric workers; one instance per emulator."""

    def __init__(
        self,
        state_dir: Path,
        max_concurrency: int = 16,
        idle_timeout_s: float = 300.0,
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
                    RuntimeApi,
                    (sandbox.namespace, sandbox.user_namespace),
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

    def retire(self, spec: FunctionSpec) -> None:
        """Stop a deleted version's environments (idle ones now, busy ones when they finish)."""
        with self._lock:
            key = self._current.pop(f"{spec.function_arn}:{spec.version}", None)
            pool = self._pools.pop(key, None) if key else None
        if pool is not None:
            pool.retire()

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
