"""Step Functions executions kept in their own journal: a record at start, stop and end."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import Any

from .persistence_blobs import BlobStore
from .persistence_files import atomic_write, frame, read_frames
from .persistence_pickle import LOST_BY_RESTART, StateUnpickler, dump


class ExecutionJournal:
    """Step Functions executions: a record when one starts and when it ends (the latest wins).

    Rewriting the whole Step Functions state at each StartExecution cost O(executions) per
    start (84 ms after 100 executions, 760 ms after 600, measured); a record costs one append.
    """

    def __init__(self, path: Path, blobs: BlobStore) -> None:
        self.path = path
        self._blobs = blobs
        self._lock = threading.Lock()
        self._file: Any = None
        # Group commit: records are appended in order under `_lock`; one fsync then covers
        # every record appended before it began, so writers waiting together share it.
        self._synced = threading.Condition()
        self._appended = 0  # records appended (under _lock)
        self._durable = 0  # records covered by a finished fsync (under _synced)
        self._syncing = False
        self.fsyncs = 0

    def latest(self) -> tuple[dict[str, tuple[str, Any]], int]:
        """Each execution's latest record by ARN, an end record before any other; records read.

        A start record can land after the end record (an execution faster than the fsync of
        its start): an end is final, so a later record of the execution running is ignored.
        """
        latest: dict[str, tuple[str, Any]] = {}
        records = 0
        for payload in read_frames(self.path):
            machine_arn, execution = StateUnpickler(io.BytesIO(payload), self._blobs).load()
            records += 1
            previous = latest.get(execution.exec_arn)
            if previous is not None and ended(previous[1]) and not ended(execution):
                continue
            latest[execution.exec_arn] = (machine_arn, execution)
        return latest, records

    def load(self) -> int:
        """Put every journaled execution back into its state machine; return how many."""
        latest, records = self.latest()
        if not latest:  # nothing to restore: leave moto's ASL parser unimported (3 s, 140 MB)
            self._file = open(self.path, "ab")  # noqa: SIM115 (kept open for appends)
            return 0
        machines = _state_machines()
        for machine_arn, execution in latest.values():
            machine = machines.get(machine_arn)
            if machine is None:
                continue
            kept = [e for e in machine.executions if e.exec_arn != execution.exec_arn]
            machine.executions[:] = [*kept, execution]
        for machine in machines.values():
            machine.executions.sort(key=lambda e: e.start_date)
        if records > 2 * len(latest) + 1000:
            self._rewrite(list(latest.values()))
        self._file = open(self.path, "ab")  # noqa: SIM115 (kept open for appends)
        return len(latest)

    def _rewrite(self, entries: list[tuple[str, Any]]) -> None:
        referenced: set[str] = set()
        data = b"".join(
            frame(dump(entry, self._blobs, referenced, backend_by_reference=True))
            for entry in entries
        )
        atomic_write(self.path, data)

    def record(self, execution: Any) -> None:
        """Append the execution as it is now (fsynced before returning)."""
        if self._file is None:
            return
        entry = (execution.state_machine_arn, execution)
        # Dumped under the lock: the file's order is then the order of the states read, and the
        # latest record wins on load. Dumped outside it, a start record (RUNNING) could land
        # after the end record and bring a SUCCEEDED execution back as FAILED (fault run).
        with self._lock:
            payload = dump(entry, self._blobs, set(), backend_by_reference=True)
            self._file.write(frame(payload))
            self._file.flush()
            self._appended += 1
            mine = self._appended
            fileno = self._file.fileno()
        self._wait_durable(mine, fileno)

    def _wait_durable(self, record: int, fileno: int) -> None:
        """Return once record number `record` is on disk: fsync, or wait for one that covers it.

        fsync under the append lock made every start and end wait for all the fsyncs queued
        before it (StartExecution took 0.7 s at the median under a burst, measured).
        """
        with self._synced:
            while self._durable < record:
                if self._file is None:
                    return  # closed: `close` fsynced every record appended before it
                if self._syncing:
                    self._synced.wait()
                    continue
                self._syncing = True
                with self._lock:
                    covered = self._appended  # everything flushed so far
                self._synced.release()
                try:
                    os.fsync(fileno)
                except OSError:
                    if self._file is not None:
                        raise  # else closed meanwhile, after its own fsync
                finally:
                    self._synced.acquire()
                    self._syncing = False
                    self._synced.notify_all()
                self._durable = max(self._durable, covered)
                self.fsyncs += 1

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())  # what writers still wait for is on disk
                self._file.close()
                self._file = None
        with self._synced:
            self._synced.notify_all()


def ended(execution: Any) -> bool:
    """Whether a restored record is an execution's end (not one running at the record)."""
    # A record of a running execution is restored as FAILED with LOST_BY_RESTART.
    return execution.error != LOST_BY_RESTART


def _state_machines() -> dict[str, Any]:
    from moto.stepfunctions.parser.models import stepfunctions_parser_backends

    machines: dict[str, Any] = {}
    for _, regions in list(stepfunctions_parser_backends.items()):
        for backend in list(regions.values()):
            for machine in backend.state_machines:
                machine.executions[:] = [e for e in machine.executions if e is not None]
                machines[machine.arn] = machine
    return machines
