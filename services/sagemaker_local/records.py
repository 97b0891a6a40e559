"""The records of one resource kind: by name, persisted, found or refused, listed as AWS does.

Training jobs, models, endpoint configs and endpoints share this life: a record is stored on
every change (`store.JsonStore`), a Describe* of an unknown name raises that kind's AWS error,
and List* answers one page of summaries (`listing.summaries_page`). Records are plain dicts in
the shape of the Describe* answer (internal fields start with `_`); callers hold the lock.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from .listing import summaries_page
from .store import JsonStore

Record = dict[str, Any]


@dataclass(frozen=True)
class ControlPlaneState:
    """What the control plane's rooms share: state folder, store, the backend's lock, ARNs."""

    state_dir: Path
    store: JsonStore
    lock: threading.RLock
    arn: Callable[[str, str], str]  # (resource kind, name) -> ARN


class Records(dict[str, Record]):
    """One kind's records by name (a dict), with its store, not-found error and summaries."""

    def __init__(
        self,
        store: JsonStore,
        kind: str,
        missing: Callable[[str], Exception],
        summary_fields: tuple[str, ...],
        status_field: str | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.kind = kind
        self.missing = missing
        self.summary_fields = summary_fields
        self.status_field = status_field

    def load(self) -> None:
        """Replace what is held by what the store has."""
        self.clear()
        self.update(self.store.load_all(self.kind))

    def add(self, record: Record) -> None:
        """Hold and store a new record."""
        self[record["_name"]] = record
        self.save(record)

    def save(self, record: Record) -> None:
        """Store a changed record."""
        self.store.put(self.kind, record["_name"], record)

    def remove(self, name: str) -> None:
        """Forget a record, here and in the store (this kind's AWS error if there is none)."""
        del self[self.find(name)["_name"]]
        self.store.delete(self.kind, name)

    def find(self, name: str) -> Record:
        """The record, or this kind's AWS error for an unknown name."""
        record = self.get(name)
        if record is None:
            raise self.missing(name)
        return record

    def describe(self, name: str) -> Record:
        """A deep copy of the record: a Describe* answer, or a snapshot that outlives it."""
        return copy.deepcopy(self.find(name))

    def summaries(self, params: dict[str, Any]) -> tuple[list[Record], str | None]:
        """One page of List* summaries and its NextToken."""
        return summaries_page(self.values(), params, self.summary_fields, self.status_field)


def describe_operation(
    records_attribute: str, name_param: str
) -> Callable[[Any, dict[str, Any]], Record]:
    """A Describe* method for a room that holds `lock` and the Records `records_attribute`."""

    def describe(room: Any, params: dict[str, Any]) -> Record:
        with room.lock:
            return cast(Records, getattr(room, records_attribute)).describe(params[name_param])

    describe.__doc__ = f"Describe* by {name_param}: a deep copy of the record."
    return describe
