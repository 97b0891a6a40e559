"""moto's backends as bytes and back: which services are snapshotted, and the pickler that
sends S3 bytes to blob files, rebuilds unpicklable helpers and freezes finished executions."""

from __future__ import annotations

import io
import pickle
import sys
import tempfile
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from .persistence_blobs import BlobStore, LazyBlob

# Service name -> (module, BackendDict attribute) of the moto backends snapshotted whole.
SNAPSHOT_SERVICES: dict[str, tuple[str, str]] = {
    "iam": ("moto.iam.models", "iam_backends"),
    "sts": ("moto.sts.models", "sts_backends"),
    "lambda": ("moto.awslambda.models", "lambda_backends"),
    "stepfunctions": ("moto.stepfunctions.parser.models", "stepfunctions_parser_backends"),
    "logs": ("moto.logs.models", "logs_backends"),
}
FORMAT_VERSION = 1
# The error of an execution that was running when the emulator stopped (it cannot resume).
LOST_BY_RESTART = "Local.EmulatorRestarted"
END_EVENT_TYPES = frozenset(
    {"ExecutionSucceeded", "ExecutionFailed", "ExecutionAborted", "ExecutionTimedOut"}
)


def backend_dict(service: str) -> Any:
    module, attribute = SNAPSHOT_SERVICES[service]
    return getattr(__import__(module, fromlist=[attribute]), attribute)


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
        # Types of modules never imported have no instances: looking them up must not import
        # them (moto's Step Functions models pull in the ASL parser: ~1 s and ~130 MB).
        self._key_type = _loaded_type("moto.s3.models", "FakeKey")
        self._backend_type = (
            _loaded_type("moto.stepfunctions.models", "StepFunctionBackend")
            if backend_by_reference
            else None
        )
        self._execution_type = _loaded_type(
            "moto.stepfunctions.parser.backend.execution", "Execution"
        )

    # No `persistent_id`: pickle calls it for every object (every int and str), which made it
    # the largest share of a snapshot's time. `reducer_override` is called only for objects
    # that are not plain containers or atoms, so both special cases are reduces here.

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
        if self._key_type is not None and isinstance(obj, self._key_type):
            blob_id = self._blobs.persist_key(obj)
            if blob_id:
                self._referenced.add(blob_id)
            state = {k: v for k, v in obj.__dict__.items() if k not in ("_value_buffer", "lock")}
            # A completed multipart upload keeps its (disposed) parts: their bytes are the
            # object's, already in its blob.
            state["multipart"] = None
            return _s3_key, (type(obj), blob_id, state)
        if self._backend_type is not None and isinstance(obj, self._backend_type):
            # An execution's state machine points at its backend: name it, do not copy it.
            return _sfn_backend, (obj.account_id, obj.region_name)
        if self._execution_type is not None and isinstance(obj, self._execution_type):
            if self._skip_executions:
                return _none, ()  # executions live in their own journal
            return _restore_execution, (type(obj), _execution_state(obj))
        return NotImplemented


def _s3_key(cls: Any, blob_id: str | None, state: dict[str, Any]) -> Any:
    """Replaced by `StateUnpickler._s3_key` when loading (it knows the blob store)."""
    raise pickle.UnpicklingError("an S3 key is loaded by StateUnpickler only")


def _sfn_backend(account_id: str, region_name: str) -> Any:
    from moto.stepfunctions.parser.models import stepfunctions_parser_backends

    return stepfunctions_parser_backends[account_id][region_name]


_FORMER_MODULE = "services.local_aws.persistence"
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


def _loaded_type(module: str, name: str) -> Any:
    """`module.name` if that module is imported already, else None (never imports it)."""
    loaded = sys.modules.get(module)
    found = getattr(loaded, name, None) if loaded is not None else None
    return found if isinstance(found, type) else None


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
        execution.error = LOST_BY_RESTART
        execution.cause = "The local emulator stopped while this execution ran."
        execution.stop_date = datetime.datetime.now(tz=datetime.UTC)
        history = execution.__dict__.get("exec_worker")
        if isinstance(history, FrozenHistory):
            # Its end event may have been recorded before the emulator stopped, never its end:
            # a FAILED execution's history does not end with ExecutionSucceeded.
            history._events = [e for e in history._events if not is_end_event(e)]
    return execution


def is_end_event(event: Any) -> bool:
    """Whether a history event is the execution's own end (succeeded, failed, ...)."""
    kind = event.get("type") if isinstance(event, dict) else None
    return str(getattr(kind, "value", kind)) in END_EVENT_TYPES


class StateUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, blobs: BlobStore) -> None:
        super().__init__(file)
        self._blobs = blobs

    def find_class(self, module: str, name: str) -> Any:
        # State written before persistence.py was split names these helpers in that module.
        if module == _FORMER_MODULE and name in globals():
            module = __name__
        if module == __name__ and name == "_s3_key":
            return self._s3_key
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        # The form state was written in before the pickler stopped using persistent ids.
        kind, cls, blob_id, state = pid
        if kind == "sfn-backend":
            return _sfn_backend(cls, blob_id)
        if kind != "s3key":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        return self._s3_key(cls, blob_id, state)

    def _s3_key(self, cls: Any, blob_id: str | None, state: dict[str, Any]) -> Any:
        key = cls.__new__(cls)
        key.__dict__.update(state)
        if blob_id:
            key._value_buffer = LazyBlob(self._blobs.path(blob_id), blob_id)
        else:  # a disposed key: moto had already dropped its bytes
            key._value_buffer = tempfile.SpooledTemporaryFile()  # noqa: SIM115 (moto closes it)
        key.lock = threading.Lock()
        return key


def dump(obj: Any, blobs: BlobStore, referenced: set[str], **mode: bool) -> bytes:
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


def backends_state(backend_dict: Any) -> dict[str, dict[str, Any]]:
    return {account: dict(regions.items()) for account, regions in list(backend_dict.items())}


def install_backends(backend_dict: Any, state: Mapping[str, Mapping[str, Any]]) -> None:
    for account, regions in state.items():
        account_backends = backend_dict[account]
        for region, backend in regions.items():
            dict.__setitem__(account_backends, region, backend)
