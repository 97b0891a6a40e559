"""Crash-consistent persistence of the embedded emulator's state, on by default.

What is kept, under `<state_dir>/persist/`:

- S3: every object's bytes in its own file (`s3/blobs/<id>`, written once, fsynced, renamed into
  place), loaded lazily on first read; object metadata in a snapshot of the S3 backends
  (`s3/snapshot.pkl`) plus an append-only journal of key changes (`s3/journal.<generation>`:
  length- and CRC-framed records, fsynced before the response leaves). A PUT costs one blob, one
  journal record and their fsyncs, whatever the number of objects. Bucket-level changes (create,
  delete, policy, multi-object delete, tagging) write a new snapshot generation instead, and so
  does a journal grown past `persistence_s3.COMPACT_RECORDS`; unreferenced blobs are removed then.
- IAM, STS, Lambda (functions, versions, aliases, concurrency, code), Step Functions state
  machines and CloudWatch Logs: one snapshot file per service (`<service>.pkl`), rewritten
  (write, fsync, rename) after each change to that service. Changes made by requests are on disk
  before the response is sent (group commit: concurrent requests share one write). Log events
  written by Lambda code arrive in the background and are written within `BACKGROUND_DELAY_S`,
  or ten times the last write's duration when that is longer (at most a tenth of a core).
- Step Functions executions, with their history: a journal record when one starts (before
  StartExecution answers), stops and ends (`stepfunctions.executions`); the latest record of
  each execution wins, and the journal is rewritten on start when it holds more than twice as
  many records as executions.

A kill -9 leaves either the previous or the next file, never half of one: the journal's torn
tail (a record never acknowledged) is ignored on load. An execution still running when the
emulator stopped cannot resume: it is restored as FAILED (`Local.EmulatorRestarted`).

`LOCAL_AWS_PERSIST=0` keeps everything in memory only, as before.

The parts: `persistence_files` (durable writes, journal frames), `persistence_blobs` (object
bytes), `persistence_pickle` (backends as bytes), `persistence_s3` (S3 snapshot + journal),
`persistence_executions` (execution journal), `persistence_requests` (what a request changed).
This module loads them all and writes each change before its response (group commit).
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .persistence_executions import ExecutionJournal
from .persistence_files import atomic_write
from .persistence_pickle import (
    FORMAT_VERSION,
    SNAPSHOT_SERVICES,
    StateUnpickler,
    backend_dict,
    backends_state,
    dump,
    install_backends,
)
from .persistence_requests import request_service, s3_target
from .persistence_s3 import S3Store

log = logging.getLogger("local_aws.persistence")

ENV_SWITCH = "LOCAL_AWS_PERSIST"
BACKGROUND_DELAY_S = 0.5


def enabled_by_environment() -> bool:
    """Whether the environment asks for persistence (default: yes)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


class Persistence:
    """Loads the state on start, then writes each change before its response leaves."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.s3 = S3Store(root / "s3")
        self.executions = ExecutionJournal(root / "stepfunctions.executions", self.s3.blobs)
        self._background_delay_s = BACKGROUND_DELAY_S
        self._s3_lock = threading.Lock()
        self._cond = threading.Condition()
        self._dirty: set[str] = set()
        self._requested = 0  # generation asked for by waiting requests
        self._written = 0  # generation whose changes are on disk
        self._background_at: float | None = None
        self._stopping = False
        self._stepfunctions_hooked = False
        self._thread = threading.Thread(target=self._run, name="persistence", daemon=True)
        self.stats: dict[str, float] = {"snapshots": 0, "journal_records": 0, "load_s": 0.0}

    # -- start -----------------------------------------------------------------------------
    def load(self) -> dict[str, Any]:
        """Restore every persisted service into moto's backends; return what was found."""
        started = time.perf_counter()
        found: dict[str, Any] = {}
        for service in SNAPSHOT_SERVICES:
            path = self.root / f"{service}.pkl"
            if not path.exists():
                continue
            payload = StateUnpickler(io.BytesIO(path.read_bytes()), self.s3.blobs).load()
            install_backends(backend_dict(service), payload["backends"])
            found[service] = True
        found["s3_objects"] = self.s3.load()
        found["executions"] = self.executions.load()
        self.stats["load_s"] = round(time.perf_counter() - started, 3)
        found["load_s"] = self.stats["load_s"]
        if "stepfunctions" in found or found["executions"]:
            self.install_stepfunctions_hooks()
        self._thread.start()
        return found

    def install_stepfunctions_hooks(self) -> None:
        """Executions are journaled where they start, stop and end (requests or not).

        Called at load when Step Functions state was restored, else by the server on the first
        Step Functions request: the hooks import moto's ASL parser, which start-up avoids.
        """
        if self._stepfunctions_hooked:
            return
        self._stepfunctions_hooked = True
        from moto.stepfunctions.parser.backend.execution import BaseExecutionWorkerCommunication
        from moto.stepfunctions.parser.models import StepFunctionsParserBackend

        journal = self.executions
        terminated_before: Callable[[Any], None] = BaseExecutionWorkerCommunication.terminated
        start_before = StepFunctionsParserBackend.start_execution
        stop_before = StepFunctionsParserBackend.stop_execution

        def terminated(comm: Any) -> None:
            terminated_before(comm)
            journal.record(comm.execution)

        def start_execution(backend: Any, *args: Any, **kwargs: Any) -> Any:
            execution = start_before(backend, *args, **kwargs)
            journal.record(execution)
            return execution

        def stop_execution(backend: Any, *args: Any, **kwargs: Any) -> Any:
            execution = stop_before(backend, *args, **kwargs)
            journal.record(execution)
            return execution

        BaseExecutionWorkerCommunication.terminated = terminated  # type: ignore[method-assign,assignment]
        StepFunctionsParserBackend.start_execution = start_execution  # type: ignore[method-assign,assignment]
        StepFunctionsParserBackend.stop_execution = stop_execution  # type: ignore[method-assign,assignment]

    # -- changes ---------------------------------------------------------------------------
    def changed_in_background(self, service: str) -> None:
        """A change not made by a request (log events, an execution's end): write soon."""
        with self._cond:
            self._dirty.add(service)
            if self._background_at is None:
                self._background_at = time.monotonic() + self._background_delay_s
                self._cond.notify_all()

    def after_request(self, environ: Mapping[str, Any], body: bytes | None, status: int) -> None:
        """Persist what a successful mutating request changed, before its response is sent."""
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        if method in ("GET", "HEAD", "OPTIONS") or status >= 400:
            return
        service = request_service(environ, body)
        if service is None:
            return
        if service == "s3":
            self._after_s3(environ)
            return
        if service == "*":
            with self._s3_lock:
                self.s3.snapshot()
            self._wait_for({*SNAPSHOT_SERVICES})
            return
        if service in SNAPSHOT_SERVICES:
            self._wait_for({service})

    def _after_s3(self, environ: Mapping[str, Any]) -> None:
        target = s3_target(environ)
        if target is not None and target[1] is not None:
            # Object bytes are written (and fsynced) outside the journal lock, in parallel.
            self.s3.write_blobs(target[0], target[1])
        with self._s3_lock:
            if target is None:
                self.s3.snapshot()
            elif target[1] is not None:
                try:
                    self.s3.record_key(target[0], target[1])
                except Exception:
                    # moto has applied the change: make it durable the slow way, or fail loudly.
                    log.exception("s3: journal record failed, writing a snapshot instead")
                    self.s3.snapshot()
            self.stats["journal_records"] = self.s3.records

    def _wait_for(self, services: set[str]) -> None:
        with self._cond:
            self._dirty |= services
            self._requested += 1
            wanted = self._requested
            self._cond.notify_all()
            while self._written < wanted and not self._stopping:
                self._cond.wait(timeout=1.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    if self._requested > self._written:
                        break
                    if self._background_at is not None:
                        delay = self._background_at - time.monotonic()
                        if delay <= 0:
                            break
                        self._cond.wait(timeout=delay)
                    else:
                        self._cond.wait()
                if self._stopping:
                    return
                dirty, self._dirty = self._dirty, set()
                wanted = self._requested
                self._background_at = None
            try:
                self._write_snapshots(dirty)
            except Exception:
                log.exception("persistence: could not write %s", sorted(dirty))
            with self._cond:
                self._written = max(self._written, wanted)
                self._cond.notify_all()

    def _write_snapshots(self, services: set[str]) -> None:
        started = time.perf_counter()
        for service in sorted(services):
            referenced: set[str] = set()
            state = {
                "format": FORMAT_VERSION,
                "backends": backends_state(backend_dict(service)),
            }
            data = dump(
                state, self.s3.blobs, referenced, skip_executions=service == "stepfunctions"
            )
            atomic_write(self.root / f"{service}.pkl", data)
            self.stats["snapshots"] += 1
        # Background writes (log events) take at most a tenth of one core.
        spent = time.perf_counter() - started
        self._background_delay_s = max(BACKGROUND_DELAY_S, 10 * spent)
        self.stats["background_delay_s"] = round(self._background_delay_s, 3)

    def close(self) -> None:
        """Write everything once more (clean shutdown) and stop the writer."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        try:
            self._write_snapshots(set(SNAPSHOT_SERVICES))
            with self._s3_lock:
                self.s3.snapshot()
                self.s3.close()
            self.executions.close()
        except Exception:
            log.exception("persistence: final write failed")
