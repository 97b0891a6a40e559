"""The records of one resource kind: by name, persisted, found or refused, listed as AWS does.

Training jobs, models, endpoint configs and endpoints share this life: a record is stored on
every change (`store.JsonStore`), a Describe* of an unknown name raises that kind's AWS error,
and List* answers one page of summaries (`listing.summaries_page`). Records are plain dicts in
the shape of the Describe* answer (internal fields start with `_`); callers hold the lock.
`describe_operation`, `delete_operation` and `list_operation` write a room's plain Describe*,
Delete* and List* methods from the name of its `Records` attribute.
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


def request_record(name: str, params: dict[str, Any], **fields: Any) -> Record:
    """A new record from its Create* request: a deep copy less Tags, `_name`, `_tags`, `fields`."""
    return {
        **copy.deepcopy({k: v for k, v in params.items() if k != "Tags"}),
        "_name": name,
        "_tags": params.get("Tags", []),
        **fields,
    }


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


Operation = Callable[[Any, dict[str, Any]], Any]


def _records_operation(
    records_attribute: str, act: Callable[[Records, dict[str, Any]], Any], doc: str
) -> Operation:
    """A method of a room that holds `lock`: `act` on its Records `records_attribute`, locked."""

    def operation(room: Any, params: dict[str, Any]) -> Any:
        with room.lock:
            return act(cast(Records, getattr(room, records_attribute)), params)

    operation.__doc__ = doc
    return operation


def describe_operation(records_attribute: str, name_param: str) -> Operation:
    """A Describe* method: a deep copy of the record named by `name_param`."""
    return _records_operation(
        records_attribute,
        lambda records, params: records.describe(params[name_param]),
        f"Describe* by {name_param}: a deep copy of the record.",
    )


def delete_operation(records_attribute: str, name_param: str) -> Operation:
    """A Delete* method that only forgets the record (this kind's AWS error for an unknown one)."""

    def forget(records: Records, params: dict[str, Any]) -> dict[str, Any]:
        records.remove(params[name_param])
        return {}

    return _records_operation(records_attribute, forget, f"Delete* by {name_param}: the record.")


def list_operation(records_attribute: str, answer_key: str) -> Operation:
    """A List* method: one page of summaries under `answer_key`, and its NextToken."""

    def page(records: Records, params: dict[str, Any]) -> dict[str, Any]:
        summaries, token = records.summaries(params)
        return {answer_key: summaries, "NextToken": token}

    return _records_operation(records_attribute, page, f"List*: one page of {answer_key}.")
