"""Who is calling and what a request asks of IAM: role session, action, resource, context.

Requests map to IAM action names and resource ARNs by a table per protocol: S3 (method, key
and sub-resource), Lambda (REST paths), Step Functions and CloudWatch Logs (`X-Amz-Target`,
resource from the body), IAM and STS (`Action`). A Lambda path the table does not know is
checked as `lambda:<Method><Resource>`, which only `lambda:*` or `*` allows.

Request-specific condition keys: s3:prefix, s3:delimiter, s3:max-keys, lambda:FunctionArn
(the caller's keys are added by `iam_enforcement.decide`).
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote


@dataclass(frozen=True)
class Session:
    """An assumed-role session: who is calling."""

    account_id: str
    role_name: str
    role_arn: str
    session_name: str
    session_policy: str
    expired: bool

    @property
    def arn(self) -> str:
        return f"arn:aws:sts::{self.account_id}:assumed-role/{self.role_name}/{self.session_name}"


@dataclass(frozen=True)
class Request:
    """One request as IAM sees it."""

    service: str  # the signing name: s3, lambda, states, logs, iam, sts
    action: str  # e.g. s3:GetObject
    resource: str
    region: str
    context: dict[str, list[str]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Who is calling


def access_key_of(environ: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(access key id, region, signing service) from SigV4 header or presigned query."""
    authorization = str(environ.get("HTTP_AUTHORIZATION", ""))
    credential = ""
    if "Credential=" in authorization:
        credential = authorization.split("Credential=", 1)[1].split(",", 1)[0].strip()
    else:
        credential = parse_qs(str(environ.get("QUERY_STRING", ""))).get("X-Amz-Credential", [""])[0]
    parts = credential.split("/")
    if len(parts) < 5:
        return None
    return parts[0], parts[2], parts[3]


# Access key -> (STS backend, its list of assumed roles, the assumed role, its account): every
# request asks, and walking every session ever assumed grew with each Lambda environment. A
# key not issued by STS (the administrator's) is remembered as None: keys are never reissued.
_KNOWN_KEYS: dict[str, tuple[Any, list[Any], Any, str] | None] = {}
_KNOWN_KEYS_MAX = 4096
_UNKNOWN: Any = object()


def session_of(access_key_id: str) -> Session | None:
    """The assumed-role session these credentials belong to (None: not role credentials)."""
    found = _assumed(access_key_id)
    if found is None:
        return None
    assumed, account_id = found
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    expiration = assumed.expiration
    if expiration.tzinfo is not None:
        expiration = expiration.astimezone(datetime.UTC).replace(tzinfo=None)
    return Session(
        account_id=account_id,
        role_name=assumed.role_arn.split("/")[-1],
        role_arn=assumed.role_arn,
        session_name=assumed.session_name,
        session_policy=assumed.policy or "",
        expired=expiration < now,
    )


def _assumed(access_key_id: str) -> tuple[Any, str] | None:
    from moto.sts.models import sts_backends

    known = _KNOWN_KEYS.get(access_key_id, _UNKNOWN)
    if known is not _UNKNOWN:
        if known is None:
            return None
        backend, sessions, assumed, account_id = known
        if backend.assumed_roles is sessions:  # not reset since (a reset makes a new list)
            return assumed, account_id
    if len(_KNOWN_KEYS) >= _KNOWN_KEYS_MAX:
        _KNOWN_KEYS.clear()
    for account_id, partitions in list(sts_backends.items()):
        for backend in list(partitions.values()):
            for assumed in list(backend.assumed_roles):
                if assumed.access_key_id == access_key_id:
                    sessions = backend.assumed_roles
                    _KNOWN_KEYS[access_key_id] = (backend, sessions, assumed, account_id)
                    return assumed, account_id
    _KNOWN_KEYS[access_key_id] = None
    return None


# ---------------------------------------------------------------------------------------------
# What is asked


def describe(
    environ: Mapping[str, Any], body: bytes, session: Session, region: str, service: str
) -> Request | None:
    """The IAM action, resource and context of a request (None: nothing to check)."""
    account = session.account_id
    context: dict[str, list[str]] = {}
    if service == "s3":
        action, resource, context = _s3(environ)
    elif service == "lambda":
        action, resource = _lambda(environ, region, account)
        context["lambda:FunctionArn"] = [resource]
    elif service in ("states", "logs"):
        action, resource = _json_target(environ, body, service, region, account)
    elif service in ("iam", "sts"):
        action, resource = _query(body, environ, service, account)
    else:
        return None
    if action in ("sts:GetCallerIdentity",):
        return None  # always allowed, even under an explicit Deny
    return Request(service, action, resource, region, context)


_S3_BUCKET_SUBRESOURCES = {
    ("GET", "policy"): "GetBucketPolicy",
    ("PUT", "policy"): "PutBucketPolicy",
    ("DELETE", "policy"): "DeleteBucketPolicy",
    ("GET", "location"): "GetBucketLocation",
    ("GET", "tagging"): "GetBucketTagging",
    ("PUT", "tagging"): "PutBucketTagging",
    ("DELETE", "tagging"): "PutBucketTagging",
    ("GET", "versioning"): "GetBucketVersioning",
    ("PUT", "versioning"): "PutBucketVersioning",
    ("GET", "versions"): "ListBucketVersions",
    ("GET", "uploads"): "ListBucketMultipartUploads",
    ("GET", "notification"): "GetBucketNotification",
    ("PUT", "notification"): "PutBucketNotification",
    ("GET", "acl"): "GetBucketAcl",
    ("PUT", "acl"): "PutBucketAcl",
    ("GET", "cors"): "GetBucketCORS",
    ("PUT", "cors"): "PutBucketCORS",
    ("DELETE", "cors"): "PutBucketCORS",
    ("GET", "lifecycle"): "GetLifecycleConfiguration",
    ("PUT", "lifecycle"): "PutLifecycleConfiguration",
    ("GET", "encryption"): "GetEncryptionConfiguration",
    ("PUT", "encryption"): "PutEncryptionConfiguration",
    ("POST", "delete"): "DeleteObject",
}
_S3_OBJECT_SUBRESOURCES = {
    ("GET", "tagging"): "GetObjectTagging",
    ("PUT", "tagging"): "PutObjectTagging",
    ("DELETE", "tagging"): "DeleteObjectTagging",
    ("GET", "acl"): "GetObjectAcl",
    ("PUT", "acl"): "PutObjectAcl",
    ("DELETE", "uploadId"): "AbortMultipartUpload",
    ("GET", "uploadId"): "ListMultipartUploadParts",
}


def _s3(environ: Mapping[str, Any]) -> tuple[str, str, dict[str, list[str]]]:
    method = str(environ.get("REQUEST_METHOD", "GET")).upper()
    path = str(environ.get("PATH_INFO", "/")).encode("latin-1").decode("utf-8", "replace")
    query = parse_qs(str(environ.get("QUERY_STRING", "")), keep_blank_values=True)
    host = str(environ.get("HTTP_HOST", "")).split(":")[0].lower()
    labels = host.split(".")
    if len(labels) > 1 and labels[0] not in ("s3", "localhost") and not host[:1].isdigit():
        bucket, key = labels[0], path.lstrip("/")
    else:
        bucket, _, key = path.lstrip("/").partition("/")
    context: dict[str, list[str]] = {}
    if not bucket:
        return "s3:ListAllMyBuckets", "*", context
    if not key:
        for (verb, name), action in _S3_BUCKET_SUBRESOURCES.items():
            if verb == method and name in query:
                resource = (
                    f"arn:aws:s3:::{bucket}/*" if name == "delete" else f"arn:aws:s3:::{bucket}"
                )
                return f"s3:{action}", resource, context
        if method in ("GET", "HEAD"):
            for name in ("prefix", "delimiter", "max-keys"):
                if name in query:
                    context[f"s3:{name}"] = query[name][:1]
            return "s3:ListBucket", f"arn:aws:s3:::{bucket}", context
        action = {"PUT": "CreateBucket", "DELETE": "DeleteBucket"}.get(method, "ListBucket")
        return f"s3:{action}", f"arn:aws:s3:::{bucket}", context
    resource = f"arn:aws:s3:::{bucket}/{key}"
    for (verb, name), action in _S3_OBJECT_SUBRESOURCES.items():
        if verb == method and name in query:
            return f"s3:{action}", resource, context
    versioned = "versionId" in query
    action = {
        "GET": "GetObjectVersion" if versioned else "GetObject",
        "HEAD": "GetObjectVersion" if versioned else "GetObject",
        "PUT": "PutObject",
        "POST": "PutObject",
        "DELETE": "DeleteObjectVersion" if versioned else "DeleteObject",
    }.get(method, "GetObject")
    return f"s3:{action}", resource, context


_LAMBDA_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (m, re.compile(p), a)
    for m, p, a in [
        ("POST", r"^/[\d-]+/functions/(?P<name>[^/]+)/invocations$", "InvokeFunction"),
        ("POST", r"^/[\d-]+/functions/(?P<name>[^/]+)/invoke-async/?$", "InvokeAsync"),
        ("GET", r"^/[\d-]+/functions/?$", "ListFunctions"),
        ("POST", r"^/[\d-]+/functions/?$", "CreateFunction"),
        ("GET", r"^/[\d-]+/functions/(?P<name>[^/]+)/?$", "GetFunction"),
        ("DELETE", r"^/[\d-]+/functions/(?P<name>[^/]+)/?$", "DeleteFunction"),
        ("GET", r"^/[\d-]+/functions/(?P<name>[^/]+)/configuration$", "GetFunctionConfiguration"),
        (
            "PUT",
            r"^/[\d-]+/functions/(?P<name>[^/]+)/configuration$",
            "UpdateFunctionConfiguration",
        ),
        ("PUT", r"^/[\d-]+/functions/(?P<name>[^/]+)/code$", "UpdateFunctionCode"),
        ("POST", r"^/[\d-]+/functions/(?P<name>[^/]+)/versions$", "PublishVersion"),
        ("GET", r"^/[\d-]+/functions/(?P<name>[^/]+)/versions$", "ListVersionsByFunction"),
        ("POST", r"^/[\d-]+/functions/(?P<name>[^/]+)/aliases$", "CreateAlias"),
        ("GET", r"^/[\d-]+/functions/(?P<name>[^/]+)/aliases$", "ListAliases"),
        ("GET", r"^/[\d-]+/functions/(?P<name>[^/]+)/aliases/[^/]+$", "GetAlias"),
        ("PUT", r"^/[\d-]+/functions/(?P<name>[^/]+)/aliases/[^/]+$", "UpdateAlias"),
        ("DELETE", r"^/[\d-]+/functions/(?P<name>[^/]+)/aliases/[^/]+$", "DeleteAlias"),
        ("PUT", r"^/[\d-]+/functions/(?P<name>[^/]+)/concurrency$", "PutFunctionConcurrency"),
        ("GET", r"^/[\d-]+/functions/(?P<name>[^/]+)/concurrency$", "GetFunctionConcurrency"),
        ("DELETE", r"^/[\d-]+/functions/(?P<name>[^/]+)/concurrency$", "DeleteFunctionConcurrency"),
        ("POST", r"^/[\d-]+/functions/(?P<name>[^/]+)/policy$", "AddPermission"),
        ("GET", r"^/[\d-]+/functions/(?P<name>[^/]+)/policy$", "GetPolicy"),
    ]
]


def _lambda(environ: Mapping[str, Any], region: str, account: str) -> tuple[str, str]:
    method = str(environ.get("REQUEST_METHOD", "GET")).upper()
    path = str(environ.get("PATH_INFO", "/"))
    query = parse_qs(str(environ.get("QUERY_STRING", "")))
    for verb, pattern, action in _LAMBDA_ROUTES:
        match = pattern.match(path)
        if verb != method or match is None:
            continue
        name = unquote(match.groupdict().get("name") or "")
        if not name:
            return f"lambda:{action}", "*"
        return f"lambda:{action}", _function_arn(name, query, region, account)
    tail = "".join(part.title() for part in path.strip("/").split("/")[1:2])
    return f"lambda:{method.title()}{tail}", f"arn:aws:lambda:{region}:{account}:function:*"


def _function_arn(name: str, query: Mapping[str, list[str]], region: str, account: str) -> str:
    arn = name if name.startswith("arn:") else f"arn:aws:lambda:{region}:{account}:function:{name}"
    qualifier = query.get("Qualifier", [""])[0]
    if qualifier and arn.count(":") == 6:
        arn = f"{arn}:{qualifier}"
    return arn


def _json_target(
    environ: Mapping[str, Any], body: bytes, service: str, region: str, account: str
) -> tuple[str, str]:
    operation = str(environ.get("HTTP_X_AMZ_TARGET", "")).rpartition(".")[2]
    try:
        params = json.loads(body or b"{}")
    except ValueError:
        params = {}
    if not isinstance(params, dict):
        params = {}
    if service == "states":
        for name in ("stateMachineArn", "executionArn", "activityArn", "resourceArn"):
            if params.get(name):
                return f"states:{operation}", str(params[name])
        if operation == "CreateStateMachine" and params.get("name"):
            return (
                f"states:{operation}",
                f"arn:aws:states:{region}:{account}:stateMachine:{params['name']}",
            )
        return f"states:{operation}", "*"
    group = params.get("logGroupName")
    if not group:
        return f"logs:{operation}", "*"
    resource = f"arn:aws:logs:{region}:{account}:log-group:{group}"
    stream = params.get("logStreamName")
    resource += f":log-stream:{stream}" if stream else ":*"
    return f"logs:{operation}", resource


def _query(body: bytes, environ: Mapping[str, Any], service: str, account: str) -> tuple[str, str]:
    params = parse_qs(body.decode("utf-8", "replace")) if body else {}
    params.update(parse_qs(str(environ.get("QUERY_STRING", ""))))
    action = params.get("Action", ["Unknown"])[0]
    if service == "sts":
        return f"sts:{action}", params.get("RoleArn", ["*"])[0]
    for name, kind in (("RoleName", "role"), ("UserName", "user")):
        if params.get(name):
            return f"iam:{action}", f"arn:aws:iam::{account}:{kind}/{params[name][0]}"
    if params.get("PolicyArn"):
        return f"iam:{action}", params["PolicyArn"][0]
    return f"iam:{action}", "*"
