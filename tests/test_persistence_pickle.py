"""The state pickler: S3 keys go to blobs, and state in the earlier persistent-id form loads."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from moto.s3.models import FakeKey

from services.local_aws.persistence_blobs import BlobStore
from services.local_aws.persistence_pickle import StateUnpickler, dump


class _PersistentIdPickler(pickle.Pickler):
    """How S3 keys were written until the pickler stopped calling `persistent_id`."""

    def __init__(self, file: io.BytesIO, blobs: BlobStore) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.blobs = blobs

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, FakeKey):
            state = {k: v for k, v in obj.__dict__.items() if k not in ("_value_buffer", "lock")}
            state["multipart"] = None
            return ("s3key", type(obj), self.blobs.persist_key(obj), state)
        return None


def _key(name: str, body: bytes) -> FakeKey:
    return FakeKey(name, body, account_id="123456789012", region_name="us-east-1")


def test_keys_round_trip_through_blobs_and_a_shared_key_is_stored_once(tmp_path: Path) -> None:
    blobs, referenced = BlobStore(tmp_path), set[str]()
    scone = _key("in/scone.png", b"\x89PNG butter")
    state = {"bucket": {"keys": [scone, scone], "count": 2, "names": ["in/scone.png"]}}
    data = dump(state, blobs, referenced)
    assert b"butter" not in data and len(referenced) == 1
    loaded = StateUnpickler(io.BytesIO(data), blobs).load()
    first, second = loaded["bucket"]["keys"]
    assert first is second and first.name == "in/scone.png" and first.value == b"\x89PNG butter"
    assert loaded["bucket"]["count"] == 2


def test_state_in_the_earlier_persistent_id_form_still_loads(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    buffer = io.BytesIO()
    _PersistentIdPickler(buffer, blobs).dump({"keys": [_key("old.txt", b"jam")]})
    loaded = StateUnpickler(io.BytesIO(buffer.getvalue()), blobs).load()
    assert loaded["keys"][0].name == "old.txt" and loaded["keys"][0].value == b"jam"
