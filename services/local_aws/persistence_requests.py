"""Which persisted state a request may have changed, read from its WSGI environ alone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from .persistence_pickle import SNAPSHOT_SERVICES

# JSON operations (X-Amz-Target, query Action) that only read: no write after them.
READ_ONLY_PREFIXES = ("Describe", "List", "Get", "Test", "Validate", "Filter", "Lookup")
# Written by the execution journal's hooks, not by a snapshot after the request.
JOURNALED_OPERATIONS = ("StartExecution", "StartSyncExecution", "StopExecution")
# S3 query parameters that leave a key-level request a key-level change.
_KEY_QUERY = {"uploadId", "versionId", "x-id"}


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


def _bucket_key(environ: Mapping[str, Any]) -> tuple[str, str]:
    path = str(environ.get("PATH_INFO", "/"))
    # WSGI gives the raw path as latin-1 text; object keys are UTF-8.
    path = path.encode("latin-1").decode("utf-8", "replace")
    host = str(environ.get("HTTP_HOST", "")).split(":")[0].lower()
    labels = host.split(".")
    if len(labels) > 1 and labels[0] not in ("s3", "localhost") and not host[0].isdigit():
        return labels[0], path.lstrip("/")
    bucket, _, key = path.lstrip("/").partition("/")
    return bucket, key


def s3_multipart_target(environ: Mapping[str, Any]) -> tuple[str, str] | None:
    """(bucket, key) whose multipart uploads a request changed: create, part, complete, abort."""
    method = str(environ.get("REQUEST_METHOD", "")).upper()
    query = parse_qs(str(environ.get("QUERY_STRING", "")), keep_blank_values=True)
    bucket, key = _bucket_key(environ)
    if not bucket or not key or method not in ("POST", "PUT", "DELETE"):
        return None
    if "uploads" in query or "uploadId" in query:
        return bucket, key
    return None


def s3_target(environ: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """(bucket, key) of a key-level S3 change, (bucket, None) for no change, None: bucket-level."""
    query = parse_qs(str(environ.get("QUERY_STRING", "")), keep_blank_values=True)
    bucket, key = _bucket_key(environ)
    method = str(environ.get("REQUEST_METHOD", "")).upper()
    if not bucket or not key:
        return None
    if "uploads" in query or ("partNumber" in query and method == "PUT"):
        return bucket, None  # no object changed: the upload is journaled (s3_multipart_target)
    if set(query) - _KEY_QUERY:
        return None  # tagging, ACL, retention...: kept outside the key, snapshot instead
    return bucket, key
