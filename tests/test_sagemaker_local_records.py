"""One resource kind's records: held and stored together, AWS's error for an unknown name."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.sagemaker_local.exceptions import ValidationException
from services.sagemaker_local.records import Records
from services.sagemaker_local.store import JsonStore


def models(store: JsonStore) -> Records:
    return Records(
        store,
        "models",
        lambda name: ValidationException(f'Could not find model "{name}".'),
        ("ModelName", "CreationTime"),
    )


def record(name: str, created: float) -> dict[str, object]:
    return {"_name": name, "ModelName": name, "CreationTime": created, "_internal": "x"}


def test_added_records_survive_a_reload_and_removed_ones_do_not(tmp_path: Path) -> None:
    held = models(JsonStore(tmp_path))
    held.add(record("a", 1.0))
    held.add(record("b", 2.0))
    held.remove("a")
    held["b"]["CreationTime"] = 3.0
    held.save(held["b"])
    again = models(JsonStore(tmp_path))
    again.load()
    assert list(again) == ["b"]
    assert again["b"]["CreationTime"] == 3.0


def test_an_unknown_name_raises_the_kinds_error(tmp_path: Path) -> None:
    held = models(JsonStore(tmp_path))
    with pytest.raises(ValidationException, match='Could not find model "nope"'):
        held.find("nope")
    with pytest.raises(ValidationException):
        held.remove("nope")
    with pytest.raises(ValidationException):
        held.describe("nope")


def test_describe_is_a_copy_and_summaries_hold_only_their_fields(tmp_path: Path) -> None:
    held = models(JsonStore(tmp_path))
    held.add(record("a", 1.0))
    held.add(record("b", 2.0))
    described = held.describe("a")
    described["ModelName"] = "changed"
    assert held["a"]["ModelName"] == "a"
    summaries, token = held.summaries({"MaxResults": 1})
    assert summaries == [{"ModelName": "b", "CreationTime": 2.0}]
    assert token == "1"
