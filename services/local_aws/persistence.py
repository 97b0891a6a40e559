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
  each execution wins (an end record over any later one), and the journal is rewritten on
  start when it holds more than twice as many records as executions. An end is visible to
  clients (DescribeExecution, ListExecutions, the history's last event) only once its record
  is on disk: no client sees a terminal status that a kill -9 could take back.
- Step Functions state is restored on the first Step Functions request (`load_stepfunctions`),
  not at start-up: it imports moto's ASL parser. A snapshot file not restored yet is never
  written over, and nothing is written for a service moto never imported.

A kill -9 leaves either the previous or the next file, never half of one: the journal's torn
tail (a record never acknowledged) is ignored on load. An execution still running when the
emulator stopped cannot resume: it is restored as FAILED (`Local.EmulatorRestarted`). A
snapshot is pickled under its service's guard, which requests changing that service and the
Lambda log sink hold too (moto's dicts must not change size under the pickler).

`LOCAL_AWS_PERSIST=0` keeps everything in memory only, as before.

The parts: `persistence_files` (durable writes, journal frames), `persistence_blobs` (object
bytes), `persistence_pickle` (backends as bytes), `persistence_s3` (S3 snapshot + journal),
`persistence_executions` (execution journal), `persistence_requests` (what a request changed).
This module loads them all and writes each change before its response (group commit).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import sys
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
    is_end_event,
)
from .persistence_requests import request_service, s3_multipart_target, s3_target
from .persistence_s3 import S3Store

log = logging.getLogger("local_aws.persistence")

ENV_SWITCH = "LOCAL_AWS_PERSIST"
BACKGROUND_DELAY_S = 0.5


def _publish(execution: Any, ending: Any, before: dict[str, Any]) -> None:
    """Copy what moto's end set on `ending` to the execution; its status last."""
    changed = {k: v for k, v in ending.__dict__.items() if before.get(k, _UNSET) is not v}
    status = changed.pop("exec_status", _UNSET)
    execution.__dict__.update(changed)
    if status is not _UNSET:
        execution.exec_status = status


_UNSET = object()


def _any_content(folder: Path) -> bool:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    for entry in entries:  # files first: the snapshots sit at the top
        if entry.is_file(follow_symlinks=False) and entry.stat().st_size > 0:
            return True
    return any(_any_content(Path(e.path)) for e in entries if e.is_dir(follow_symlinks=False))


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
        self._stepfunctions_lock = threading.Lock()
        # Services restored from disk; one whose file exists is never written before it is.
        self._loaded: set[str] = set()
        # Held while a request or a background writer changes a service, and while its snapshot
        # is pickled: moto's dicts must not change size under the pickler.
        self._guards = {service: threading.RLock() for service in SNAPSHOT_SERVICES}
        self._thread = threading.Thread(target=self._run, name="persistence", daemon=True)
        self.stats: dict[str, float] = {"snapshots": 0, "journal_records": 0, "load_s": 0.0}

    # -- start -----------------------------------------------------------------------------
    def has_state(self) -> bool:
        """Whether anything was persisted here (a file with content; imports nothing)."""
        return _any_content(self.root)

    def load(self) -> dict[str, Any]:
        """Restore every persisted service but Step Functions; return what was found.

        Step Functions (`load_stepfunctions`) is restored on its first request: unpickling it
        imports moto's ASL parser, which an emulator used for S3 or Lambda alone never needs.
        """
        started = time.perf_counter()
        found: dict[str, Any] = {}
        for service in SNAPSHOT_SERVICES:
            if service == "stepfunctions":
                continue
            if self._restore_snapshot(service):
                found[service] = True
        found["s3_objects"] = self.s3.load()
        self.stats["load_s"] = round(time.perf_counter() - started, 3)
        found["load_s"] = self.stats["load_s"]
        found["stepfunctions"] = "on its first request"
        self._loaded.add("s3")
        self._thread.start()
        return found

    def _restore_snapshot(self, service: str) -> bool:
        path = self.root / f"{service}.pkl"
        if path.exists():
            payload = StateUnpickler(io.BytesIO(path.read_bytes()), self.s3.blobs).load()
            install_backends(backend_dict(service), payload["backends"])
        self._loaded.add(service)
        return path.exists()

    def load_stepfunctions(self) -> dict[str, Any]:
        """Restore state machines and executions, then journal executions (idempotent).

        Called before the first Step Functions request is served (server._install_stepfunctions).
        """
        with self._stepfunctions_lock:
            if self._stepfunctions_hooked:
                return {}
            started = time.perf_counter()
            found: dict[str, Any] = {"stepfunctions": self._restore_snapshot("stepfunctions")}
            found["executions"] = self.executions.load()
            self._install_stepfunctions_hooks()
            self._stepfunctions_hooked = True
            found["load_s"] = round(time.perf_counter() - started, 3)
            self.stats["stepfunctions_load_s"] = found["load_s"]
            log.info("Step Functions state restored: %s", found)
            return found

    # The former name (server.py called it before restoring Step Functions became lazy).
    install_stepfunctions_hooks = load_stepfunctions

    def guard(self, service: str) -> Any:
        """The lock held while `service`'s moto state changes and while it is snapshotted."""
        return self._guards.get(service) or contextlib.nullcontext()

    def request_guard(self, environ: Mapping[str, Any], body: bytes | None) -> Any:
        """The guard of the service a mutating request changes (held while moto runs it)."""
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        if method in ("GET", "HEAD", "OPTIONS"):
            return contextlib.nullcontext()
        return self.guard(request_service(environ, body) or "")

    def _install_stepfunctions_hooks(self) -> None:
        """Executions are journaled where they start, stop and end (requests or not).

        An end becomes visible (describe, list, history) only once its record is on disk: a
        client never sees a terminal status that a kill -9 could take back.
        """
        from moto.stepfunctions.parser.api import ExecutionStatus
        from moto.stepfunctions.parser.backend.execution import (
            BaseExecutionWorkerCommunication,
            Execution,
        )
        from moto.stepfunctions.parser.models import StepFunctionsParserBackend

        journal = self.executions
        terminated_before: Callable[[Any], None] = BaseExecutionWorkerCommunication.terminated
        start_before = StepFunctionsParserBackend.start_execution
        stop_before = StepFunctionsParserBackend.stop_execution
        history_before = Execution.to_history_output

        def terminated(comm: Any) -> None:
            execution = comm.execution
            # moto sets the end (status, stop date, output, error) on the execution itself;
            # here it is set on a copy, journaled, and only then copied to the execution.
            ending = copy.copy(execution)
            before = dict(ending.__dict__)
            comm.execution = ending
            try:
                terminated_before(comm)
            finally:
                comm.execution = execution
            try:
                journal.record(ending)
            except Exception:
                # Kept visible rather than RUNNING forever; the log says it is not durable.
                log.exception("execution %s: end record not written", execution.exec_arn)
            _publish(execution, ending, before)

        def start_execution(backend: Any, *args: Any, **kwargs: Any) -> Any:
            execution = start_before(backend, *args, **kwargs)
            journal.record(execution)
            return execution

        def stop_execution(backend: Any, *args: Any, **kwargs: Any) -> Any:
            execution = stop_before(backend, *args, **kwargs)
            journal.record(execution)
            return execution

        def to_history_output(execution: Any) -> Any:
            output = history_before(execution)
            if execution.exec_status == ExecutionStatus.RUNNING:
                # The end event is added before the end is journaled: not shown until then.
                output["events"] = [e for e in output["events"] if not is_end_event(e)]
            return output

        BaseExecutionWorkerCommunication.terminated = terminated  # type: ignore[method-assign,assignment]
        StepFunctionsParserBackend.start_execution = start_execution  # type: ignore[method-assign,assignment]
        StepFunctionsParserBackend.stop_execution = stop_execution  # type: ignore[method-assign,assignment]
        Execution.to_history_output = to_history_output  # type: ignore[method-assign,assignment]

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
        uploads = s3_multipart_target(environ)
        if target is not None and target[1] is not None:
            # Object bytes are written (and fsynced) outside the journal lock, in parallel.
            self.s3.write_blobs(target[0], target[1])
        if uploads is not None:
            self.s3.write_upload_blobs(*uploads)
        with self._s3_lock:
            if target is None:
                self.s3.snapshot()  # multipart uploads included
            elif target[1] is not None:
                self._journal(self.s3.record_key, target[0], target[1])
            if target is not None and uploads is not None:
                # After the object's record: a completed upload ends once its object is kept.
                self._journal(self.s3.record_uploads, *uploads)
            self.stats["journal_records"] = self.s3.records

    def _journal(self, record: Callable[[str, str], None], bucket: str, key: str) -> None:
        try:
            record(bucket, key)
        except Exception:
            # moto has applied the change: make it durable the slow way, or fail loudly.
            log.exception("s3: journal record failed, writing a snapshot instead")
            self.s3.snapshot()

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

    def _writable(self, service: str) -> bool:
        """Never write over a file not restored yet, nor a service moto never imported."""
        module = SNAPSHOT_SERVICES[service][0]
        if module not in sys.modules:
            return False  # nothing of it exists, so nothing changed
        return service in self._loaded or not (self.root / f"{service}.pkl").exists()

    def _write_snapshots(self, services: set[str]) -> None:
        started = time.perf_counter()
        for service in sorted(services):
            if not self._writable(service):
                continue
            referenced: set[str] = set()
            with self.guard(service):
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
        if "s3" not in self._loaded:  # never loaded: nothing changed, and nothing to overwrite
            self.executions.close()
            return
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
