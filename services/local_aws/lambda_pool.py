"""The warm workers of one function version and configuration: acquire, release, provision,
reap and retire (the pool a `LambdaRuntime` keeps per version)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .lambda_spec import FunctionSpec
from .lambda_worker import INIT_TIMEOUT_S, Worker

if TYPE_CHECKING:
    from .lambda_runtime import LambdaRuntime

# Temporary credentials are replaced this long before they expire (the environment is recycled).
CREDENTIALS_REFRESH_MARGIN_S = 300.0


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
            if worker.wait_ready(INIT_TIMEOUT_S) and worker.alive:
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
