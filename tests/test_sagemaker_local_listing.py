"""The List* operations' shared page: filters, StatusEquals, sorting, paging and summaries."""

from __future__ import annotations

from typing import Any

import pytest

from services.sagemaker_local.exceptions import ValidationException
from services.sagemaker_local.listing import summaries_page

FIELDS = ("JobName", "CreationTime", "Status")


def records() -> list[dict[str, Any]]:
    statuses = ["Completed", "Failed", "InProgress", "Completed", "Failed"]
    return [
        {"_name": f"job-{i}", "JobName": f"job-{i}", "CreationTime": 100.0 + i, "Status": s,
         "Secret": "not in a summary"}
        for i, s in enumerate(statuses)
    ]  # fmt: skip


def test_newest_first_by_default_and_only_the_summary_fields() -> None:
    summaries, token = summaries_page(records(), {}, FIELDS, status_field="Status")
    assert [s["JobName"] for s in summaries] == [f"job-{i}" for i in (4, 3, 2, 1, 0)]
    assert all(set(s) == set(FIELDS) for s in summaries)
    assert token is None


def test_status_equals_and_sorting_by_status() -> None:
    params = {"StatusEquals": "Failed", "SortOrder": "Ascending"}
    summaries, _ = summaries_page(records(), params, FIELDS, status_field="Status")
    assert [s["JobName"] for s in summaries] == ["job-1", "job-4"]
    by_status, _ = summaries_page(
        records(), {"SortBy": "Status", "SortOrder": "Ascending"}, FIELDS, status_field="Status"
    )
    assert [s["Status"] for s in by_status] == sorted(r["Status"] for r in records())


def test_a_kind_without_status_ignores_status_equals_and_sorts_by_creation() -> None:
    params = {"StatusEquals": "Failed", "SortBy": "Status", "SortOrder": "Ascending"}
    summaries, _ = summaries_page(records(), params, ("JobName",))
    assert summaries == [{"JobName": f"job-{i}"} for i in range(5)]


def test_pages_follow_the_next_token_and_a_bad_token_is_a_validation_error() -> None:
    first, token = summaries_page(records(), {"MaxResults": 2, "NameContains": "job"}, FIELDS)
    assert [s["JobName"] for s in first] == ["job-4", "job-3"] and token == "2"
    second, token = summaries_page(records(), {"MaxResults": 2, "NextToken": token}, FIELDS)
    assert [s["JobName"] for s in second] == ["job-2", "job-1"] and token == "4"
    with pytest.raises(ValidationException, match="pagination token"):
        summaries_page(records(), {"NextToken": "-1"}, FIELDS)
