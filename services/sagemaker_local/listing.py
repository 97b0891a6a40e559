"""Sorting, filtering and paging of the List* operations, as AWS does them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .exceptions import ValidationException
from .shapes import epoch_seconds

DEFAULT_MAX_RESULTS = 10


def page(
    items: list[dict[str, Any]],
    params: dict[str, Any],
    sort_keys: dict[str, str],
    default_sort: str = "CreationTime",
) -> tuple[list[dict[str, Any]], str | None]:
    """Sort, cut one page and give the NextToken, as the List* operations do."""
    sort_by = params.get("SortBy", default_sort)
    field = sort_keys.get(sort_by, "CreationTime")
    reverse = params.get("SortOrder", "Descending") == "Descending"
    items = sorted(items, key=lambda r: (r.get(field) or 0, r.get("_name", "")), reverse=reverse)
    token = params.get("NextToken")
    try:
        start = int(token) if token else 0
        if start < 0:
            raise ValueError(token)
    except ValueError:
        raise ValidationException("Invalid pagination token.") from None
    size = int(params.get("MaxResults") or DEFAULT_MAX_RESULTS)
    page = items[start : start + size]
    next_token = str(start + size) if start + size < len(items) else None
    return page, next_token


def filter_times(items: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    checks = [
        ("CreationTimeAfter", "CreationTime", lambda v, bound: v > bound),
        ("CreationTimeBefore", "CreationTime", lambda v, bound: v < bound),
        ("LastModifiedTimeAfter", "LastModifiedTime", lambda v, bound: v > bound),
        ("LastModifiedTimeBefore", "LastModifiedTime", lambda v, bound: v < bound),
    ]
    for param, field, ok in checks:
        if params.get(param) is not None:
            bound = epoch_seconds(params[param])
            if bound is None:  # validated before: only a direct caller gets here
                raise ValidationException(f"{param} must be a timestamp.")
            items = [r for r in items if ok(float(r.get(field, 0)), bound)]
    if params.get("NameContains"):
        needle = params["NameContains"]
        items = [r for r in items if needle in r["_name"]]
    return items


def summaries_page(
    records: Iterable[dict[str, Any]],
    params: dict[str, Any],
    summary_fields: tuple[str, ...],
    status_field: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of a List* answer: filters, StatusEquals, sorting, paging, then the summaries."""
    items = filter_times(list(records), params)
    sort_keys = {"Name": "_name", "CreationTime": "CreationTime"}
    if status_field is not None:
        if params.get("StatusEquals"):
            items = [r for r in items if r[status_field] == params["StatusEquals"]]
        sort_keys["Status"] = status_field
    page_items, token = page(items, params, sort_keys)
    return [{k: r.get(k) for k in summary_fields} for r in page_items], token
