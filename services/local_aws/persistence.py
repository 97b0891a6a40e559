"""Crash-consistent persistence of the embedded emulator's state, on by default.

What is kept, under `<state_dir>/persist/`:

- S3: every object's bytes in its own file (`s3/blobs/<id>`, written once, fsynced, renamed into
  place), loaded lazily on first read; object metadata in a snapshot of the S3 backends
  (`s3/snapshot.pkl`) plus an append-only journal of key changes (`s3/journal.<generation>`:
  length- and CRC-framed records, fsynced before the response leaves). A PUT costs one blob, one
  journal record and their fsyncs, whatever the number of objects. Bucket-level changes (create,
  delete, policy, multi-object delete, tagging) write a new snapshot generation instead, and so
  does a journal that has grown past `COMPACT_RECORDS`; blobs no longer referenced are removed then.
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
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import struct
import tempfile
import threading
import time
import uuid
import weakref
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

log = logging.getLogger("local_aws.persistence")

ENV_SWITCH = "LOCAL_AWS_PERSIST"
# Service name -> (module, BackendDict attribute) of the moto backends snapshotted whole.
SNAPSHOT_SERVICES: dict[str, tuple[str, str]] = {
    "iam": ("moto.iam.models", "iam_backends"),
    "sts": ("moto.sts.models", "sts_backends"),
    "lambda": ("moto.awslambda.models", "lambda_backends"),
    "stepfunctions": ("moto.stepfunctions.parser.models", "stepfunctions_parser_backends"),
    "logs": ("moto.logs.models", "logs_backends"),
}
COMPACT_RECORDS = 20_000
BACKGROUND_DELAY_S = 0.5
FORMAT_VERSION = 1
# JSON operations (X-Amz-Target, query Action) that only read: no write after them.
READ_ONLY_PREFIXES = ("Describe", "List", "Get", "Test", "Validate", "Filter", "Lookup")
# Written by the execution journal's hooks, not by a snapshot after the request.
JOURNALED_OPERATIONS = ("StartExecution", "StartSyncExecution", "StopExecution")
_FRAME = struct.Struct(">II")  # payload length, crc32
# S3 query parameters that leave a key-level request a key-level change.
_KEY_QUERY = {"uploadId", "versionId", "x-id"}


def enabled_by_environment() -> bool:
    """Whether the environment asks for persistence (default: yes)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def _backend_dict(service: str) -> Any:
    module, attribute = SNAPSHOT_SERVICES[service]
    return getattr(__import__(module, fromlist=[attribute]), attribute)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write-then-rename with fsync: after a crash the file is the old or the new one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class LazyBlob:
    """An S3 object's bytes in a file, read on demand (stands in for moto's spooled buffer).

    moto's value setter (seek, truncate, write) detaches it: the new bytes live in memory until
    the next write persists them as a new blob.
    """

    def __init__(self, path: Path, blob_id: str) -> None:
        self.path = path
        self.blob_id: str | None = blob_id
        self._position = 0
        self._detached: Any = None

    def seek(self, offset: int, whence: int = 0) -> int:
        if self._detached is not None:
            return int(self._detached.seek(offset, whence))
        if whence == 0:
            self._position = offset
        elif whence == 1:
            self._position += offset
        else:
            self._position = self.path.stat().st_size + offset
        return self._position

    def tell(self) -> int:
        return int(self._detached.tell()) if self._detached is not None else self._position

    def read(self, size: int = -1) -> bytes:
        if self._detached is not None:
            return bytes(self._detached.read(size))
        # Open per read: ten thousand restored objects must not hold ten thousand descriptors.
        with open(self.path, "rb") as file:
            file.seek(self._position)
            data = file.read() if size is None or size < 0 else file.read(size)
        self._position += len(data)
        return data

    def truncate(self, size: int | None = None) -> int:
        if self._detached is None:
            self._detached = tempfile.SpooledTemporaryFile()  # noqa: SIM115 (owned, closed by close)
            self.blob_id = None
        return int(self._detached.truncate(size))

    def write(self, data: bytes) -> int:
        if self._detached is None:
            self.truncate(0)
        return int(self._detached.write(data))

    def close(self) -> None:
        if self._detached is not None:
            self._detached.close()


class FrozenHistory:
    """A finished execution's worker, reduced to what describe and history calls read."""

    def __init__(self, events: list[Any]) -> None:
        self.env = self
        self.event_manager = self
        self._events = events

    def get_event_history(self) -> list[Any]:
        return list(self._events)


class _Pickler(pickle.Pickler):
    """Pickles moto's backends: S3 bytes go to blob files, unpicklable helpers are rebuilt."""

    def __init__(
        self,
        file: io.BytesIO,
        blobs: BlobStore,
        referenced: set[str],
        skip_executions: bool = False,
        backend_by_reference: bool = False,
    ) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._blobs = blobs
        self._referenced = referenced
        self._skip_executions = skip_executions
        self._backend_by_reference = backend_by_reference

    def persistent_id(self, obj: Any) -> Any:
        from moto.s3.models import FakeKey
        from moto.stepfunctions.models import StepFunctionBackend

        if self._backend_by_reference and isinstance(obj, StepFunctionBackend):
            # An execution's state machine points at its backend: name it, do not copy it.
            return ("sfn-backend", obj.account_id, obj.region_name, None)
        if type(obj) is FakeKey or isinstance(obj, FakeKey):
            blob_id = self._blobs.persist_key(obj)
            if blob_id:
                self._referenced.add(blob_id)
            state = {k: v for k, v in obj.__dict__.items() if k not in ("_value_buffer", "lock")}
            # A completed multipart upload keeps its (disposed) parts: their bytes are the
            # object's, already in its blob.
            state["multipart"] = None
            return ("s3key", type(obj), blob_id, state)
        return None

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, weakref.WeakValueDictionary):
            return _weak_values, (dict(obj.items()),)
        if isinstance(obj, defaultdict) and _unpicklable(obj.default_factory):
            # moto's `defaultdict(lambda: {})`: the same behaviour with a picklable factory.
            return _dict_of_dicts, (dict(obj),)
        if isinstance(obj, _LOCK_TYPES):
            return _new_lock, (type(obj) is _RLOCK_TYPE,)
        if isinstance(obj, threading.Thread | threading.Event | threading.Condition):
            return _none, ()
        execution_type = _parser_execution_type()
        if isinstance(obj, execution_type):
            if self._skip_executions:
                return _none, ()  # executions live in their own journal
            return _restore_execution, (type(obj), _execution_state(obj))
        return NotImplemented


_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))
_RLOCK_TYPE = type(threading.RLock())


def _unpicklable(factory: Any) -> bool:
    return factory is not None and getattr(factory, "__name__", "") == "<lambda>"


def _weak_values(items: dict[Any, Any]) -> weakref.WeakValueDictionary[Any, Any]:
    return weakref.WeakValueDictionary(items)


def _dict_of_dicts(items: dict[Any, Any]) -> defaultdict[Any, Any]:
    return defaultdict(dict, items)


def _new_lock(reentrant: bool) -> Any:
    return threading.RLock() if reentrant else threading.Lock()


def _none() -> None:
    return None


def _parser_execution_type() -> type:
    from moto.stepfunctions.parser.backend.execution import Execution

    return Execution


def _execution_state(execution: Any) -> dict[str, Any]:
    state = dict(execution.__dict__)
    worker = state.get("exec_worker")
    env = getattr(worker, "env", None)
    events = list(env.event_manager.get_event_history()) if env is not None else []
    state["exec_worker"] = FrozenHistory(events)
    state["_cloud_watch_logging_session"] = None
    return state


def _restore_execution(cls: Any, state: dict[str, Any]) -> Any:
    from moto.stepfunctions.parser.api import ExecutionStatus

    execution = cls.__new__(cls)
    execution.__dict__.update(state)
    if execution.exec_status == ExecutionStatus.RUNNING:
        import datetime

        execution.exec_status = ExecutionStatus.FAILED
        execution.error = "Local.EmulatorRestarted"
        execution.cause = "The local emulator stopped while this execution ran."
        execution.stop_date = datetime.datetime.now(tz=datetime.UTC)
    return execution


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, blobs: BlobStore) -> None:
        super().__init__(file)
        self._blobs = blobs

    def persistent_load(self, pid: Any) -> Any:
        kind, cls, blob_id, state = pid
        if kind == "sfn-backend":
            from moto.stepfunctions.parser.models import stepfunctions_parser_backends

            return stepfunctions_parser_backends[cls][blob_id]
        if kind != "s3key":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        key = cls.__new__(cls)
        key.__dict__.update(state)
        if blob_id:
            key._value_buffer = LazyBlob(self._blobs.path(blob_id), blob_id)
        else:  # a disposed key: moto had already dropped its bytes
            key._value_buffer = tempfile.SpooledTemporaryFile()  # noqa: SIM115 (moto closes it)
        key.lock = threading.Lock()
        return key


class BlobStore:
    """Object bytes, one immutable file per object version."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._unsynced = False

    def path(self, blob_id: str) -> Path:
        return self.root / blob_id

    def persist_key(self, key: Any) -> str:
        """The blob holding this key's bytes, written now if it has none ("": disposed key)."""
        with key.lock:
            buffer = key._value_buffer
            if isinstance(buffer, LazyBlob) and buffer.blob_id is not None:
                return buffer.blob_id
            if getattr(key, "disposed", False) or getattr(buffer, "closed", False):
                return ""  # nothing left to keep
            buffer.seek(0)
            data = buffer.read()
            blob_id = uuid.uuid4().hex
            tmp = self.root / f".{blob_id}.tmp"
            with open(tmp, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self.root / blob_id)
            self._unsynced = True
            # The bytes now live on disk: moto's in-memory copy is dropped.
            key._value_buffer = LazyBlob(self.root / blob_id, blob_id)
            buffer.close()
            return blob_id

    def sync(self) -> None:
        """Make the renames of new blobs durable (one directory fsync for a batch)."""
        if self._unsynced:
            _fsync_dir(self.root)
            self._unsynced = False

    def collect(self, referenced: set[str], older_than: float) -> int:
        """Remove blobs nothing refers to; return how many.

        Only blobs older than the snapshot: one written meanwhile belongs to a request whose
        journal record is still to come.
        """
        removed = 0
        for entry in os.scandir(self.root):
            if entry.name not in referenced and entry.stat().st_mtime < older_than - 1.0:
                os.unlink(entry.path)
                removed += 1
        return removed


def _dump(obj: Any, blobs: BlobStore, referenced: set[str], **mode: bool) -> bytes:
    # moto may change a dict while we walk it (requests run concurrently): try again.
    for attempt in range(5):
        buffer = io.BytesIO()
        try:
            _Pickler(buffer, blobs, referenced, **mode).dump(obj)
            return buffer.getvalue()
        except RuntimeError:
            if attempt == 4:
                raise
            time.sleep(0.01)
    raise AssertionError("unreachable")


def _backends_state(backend_dict: Any) -> dict[str, dict[str, Any]]:
    return {account: dict(regions.items()) for account, regions in list(backend_dict.items())}


def _install_backends(backend_dict: Any, state: Mapping[str, Mapping[str, Any]]) -> None:
    for account, regions in state.items():
        account_backends = backend_dict[account]
        for region, backend in regions.items():
            dict.__setitem__(account_backends, region, backend)


def _frame(payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def read_frames(path: Path) -> Iterator[bytes]:
    """The whole records of a journal; a torn tail (never acknowledged) is cut off."""
    if not path.exists():
        return
    data = path.read_bytes()
    offset = 0
    while offset + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, offset)
        payload = data[offset + _FRAME.size : offset + _FRAME.size + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        yield payload
        offset += _FRAME.size + length
    if offset < len(data):
        # Appends must follow the last whole record.
        log.warning("journal %s: torn tail at byte %d dropped", path.name, offset)
        with open(path, "r+b") as file:
            file.truncate(offset)
            os.fsync(file.fileno())


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

    def load(self) -> int:
        """Put every journaled execution back into its state machine; return how many."""
        latest: dict[str, tuple[str, Any]] = {}
        records = 0
        for payload in read_frames(self.path):
            machine_arn, execution = _Unpickler(io.BytesIO(payload), self._blobs).load()
            latest[execution.exec_arn] = (machine_arn, execution)
            records += 1
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
            _frame(_dump(entry, self._blobs, referenced, backend_by_reference=True))
            for entry in entries
        )
        atomic_write(self.path, data)

    def record(self, execution: Any) -> None:
        """Append the execution as it is now (fsynced before returning)."""
        if self._file is None:
            return
        entry = (execution.state_machine_arn, execution)
        payload = _dump(entry, self._blobs, set(), backend_by_reference=True)
        with self._lock:
            self._file.write(_frame(payload))
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def _state_machines() -> dict[str, Any]:
    from moto.stepfunctions.parser.models import stepfunctions_parser_backends

    machines: dict[str, Any] = {}
    for _, regions in list(stepfunctions_parser_backends.items()):
        for backend in list(regions.values()):
            for machine in backend.state_machines:
                machine.executions[:] = [e for e in machine.executions if e is not None]
                machines[machine.arn] = machine
    return machines


class S3Store:
    """S3 metadata: a snapshot generation plus its journal of key changes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(root / "blobs")
        self.generation = 0
        self.records = 0
        self._journal: Any = None

    def load(self) -> int:
        """Install the snapshot and replay its journal; return the number of objects."""
        from moto.s3.models import s3_backends

        snapshot = self.root / "snapshot.pkl"
        if snapshot.exists():
            data = _Unpickler(io.BytesIO(snapshot.read_bytes()), self.blobs).load()
            self.generation = int(data["generation"])
            _install_backends(s3_backends, data["backends"])
            s3_backends.bucket_accounts.update(data["bucket_accounts"])
        for record in self._read_journal(self._journal_path(self.generation)):
            bucket_name, key_name, versions = record
            bucket = _find_bucket(bucket_name)
            if bucket is None:
                continue
            if versions:
                bucket.keys.setlist(key_name, versions)
            elif key_name in bucket.keys:
                bucket.keys.pop(key_name)
            self.records += 1
        for stale in self.root.glob("journal.*"):
            # A crash between a new snapshot and the old journal's removal leaves it behind.
            if stale != self._journal_path(self.generation):
                stale.unlink()
        self._open_journal()
        return sum(len(b.keys) for _, b in _all_buckets())

    def _journal_path(self, generation: int) -> Path:
        return self.root / f"journal.{generation}"

    def _read_journal(self, path: Path) -> Iterator[Any]:
        for payload in read_frames(path):
            yield _Unpickler(io.BytesIO(payload), self.blobs).load()

    def _open_journal(self) -> None:
        if self._journal is not None:
            self._journal.close()
        path = self._journal_path(self.generation)
        self._journal = open(path, "ab")  # noqa: SIM115 (kept open for appends)
        _fsync_dir(self.root)

    def write_blobs(self, bucket_name: str, key_name: str) -> None:
        """Write the bytes of a key's versions that have no blob yet."""
        bucket = _find_bucket(bucket_name)
        if bucket is None:
            return
        from moto.s3.models import FakeKey

        for version in list(bucket.keys.getlist(key_name, []) or []):
            if isinstance(version, FakeKey):
                self.blobs.persist_key(version)

    def record_key(self, bucket_name: str, key_name: str) -> None:
        """Journal the current versions of one key (None: it is gone)."""
        bucket = _find_bucket(bucket_name)
        if bucket is None:
            self.snapshot()
            return
        versions = list(bucket.keys.getlist(key_name, []) or [])
        referenced: set[str] = set()
        payload = _dump((bucket_name, key_name, versions), self.blobs, referenced)
        self.blobs.sync()
        self._journal.write(_frame(payload))
        self._journal.flush()
        os.fsync(self._journal.fileno())
        self.records += 1
        if self.records >= COMPACT_RECORDS:
            self.snapshot()

    def snapshot(self) -> None:
        """Write the next generation of the whole S3 state; drop the old journal and blobs."""
        from moto.s3.models import s3_backends

        referenced: set[str] = set()
        started = time.time()
        state = {
            "format": FORMAT_VERSION,
            "generation": self.generation + 1,
            "backends": _backends_state(s3_backends),
            "bucket_accounts": dict(s3_backends.bucket_accounts),
        }
        data = _dump(state, self.blobs, referenced)
        self.blobs.sync()
        atomic_write(self.root / "snapshot.pkl", data)
        old = self._journal_path(self.generation)
        self.generation += 1
        self.records = 0
        self._open_journal()
        old.unlink(missing_ok=True)
        removed = self.blobs.collect(referenced, older_than=started)
        if removed:
            log.info("s3: %d unreferenced blobs removed", removed)

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None


def _all_buckets() -> Iterator[tuple[str, Any]]:
    from moto.s3.models import s3_backends

    for _, regions in list(s3_backends.items()):
        for backend in list(regions.values()):
            yield from list(backend.buckets.items())


def _find_bucket(name: str) -> Any:
    for bucket_name, bucket in _all_buckets():
        if bucket_name == name:
            return bucket
    return None


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
            payload = _Unpickler(io.BytesIO(path.read_bytes()), self.s3.blobs).load()
            _install_backends(_backend_dict(service), payload["backends"])
            found[service] = True
        found["s3_objects"] = self.s3.load()
        found["executions"] = self.executions.load()
        self.stats["load_s"] = round(time.perf_counter() - started, 3)
        found["load_s"] = self.stats["load_s"]
        self._install_hooks()
        self._thread.start()
        return found

    def _install_hooks(self) -> None:
        """Executions are journaled where they start, stop and end (requests or not)."""
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
                "backends": _backends_state(_backend_dict(service)),
            }
            data = _dump(
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


def request_service(environ: Mapping[str, Any], body: bytes | None) -> str | None:
    """Which persisted service a request may have changed: None (a read), a name, or `*`."""
    target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
    if target:
        operation = target.rpartition(".")[2]
        if operation.startswith(READ_ONLY_PREFIXES) or operation in JOURNALED_OPERATIONS:
            return None
    service = _signed_service(environ)
    if service == "lambda" and str(environ.get("PATH_INFO", "")).endswith("/invocations"):
        return None  # an invoke changes nothing persisted but logs (written in the background)
    if service in ("iam", "sts") and body:
        action = parse_qs(body.decode("utf-8", "replace")).get("Action", [""])[0]
        if action.startswith(READ_ONLY_PREFIXES):
            return None
    if service is None:
        return "*"  # unsigned: we cannot tell, so write everything
    if service == "states":
        return "stepfunctions"
    if service == "s3" or service in SNAPSHOT_SERVICES:
        return service
    return None


def _signed_service(environ: Mapping[str, Any]) -> str | None:
    authorization = str(environ.get("HTTP_AUTHORIZATION", ""))
    credential = ""
    if "Credential=" in authorization:
        credential = authorization.split("Credential=", 1)[1].split(",", 1)[0]
    else:
        query = parse_qs(str(environ.get("QUERY_STRING", "")))
        credential = query.get("X-Amz-Credential", [""])[0]
    parts = credential.split("/")
    return parts[3] if len(parts) >= 5 else None


def s3_target(environ: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """(bucket, key) of a key-level S3 change, (bucket, None) for no change, None: bucket-level."""
    path = str(environ.get("PATH_INFO", "/"))
    # WSGI gives the raw path as latin-1 text; object keys are UTF-8.
    path = path.encode("latin-1").decode("utf-8", "replace")
    query = parse_qs(str(environ.get("QUERY_STRING", "")), keep_blank_values=True)
    host = str(environ.get("HTTP_HOST", "")).split(":")[0].lower()
    labels = host.split(".")
    if len(labels) > 1 and labels[0] not in ("s3", "localhost") and not host[0].isdigit():
        bucket, key = labels[0], path.lstrip("/")
    else:
        bucket, _, key = path.lstrip("/").partition("/")
    method = str(environ.get("REQUEST_METHOD", "")).upper()
    if not bucket or not key:
        return None
    if "uploads" in query or ("partNumber" in query and method == "PUT"):
        return bucket, None  # a multipart upload in progress is not persisted
    if set(query) - _KEY_QUERY:
        return None  # tagging, ACL, retention...: kept outside the key, snapshot instead
    return bucket, key
