"""IAM enforcement for calls made with role credentials, as AWS evaluates them, on by default.

Who is checked: a request signed with temporary credentials the emulator's STS issued
(AssumeRole: each Lambda environment's role, each state machine's role for the calls its
tasks make (`stepfunctions_roles`), any `sts assume-role`). Every other caller is the
account's administrator (the host's `local` profile, `test`/`test` keys), as before.

What is evaluated, per request, before moto acts:
- the role's identity policies (inline and attached managed), and the session policy if
  AssumeRole was given one (the result is their intersection, as on AWS);
- for S3, the bucket policy (same account: identity OR bucket policy allows, any explicit Deny
  wins);
- statements with Allow/Deny, Action/NotAction, Resource/NotResource, `*`/`?` wildcards
  (actions case-insensitive), and conditions with the String*, Arn*, Bool, Numeric* and Null
  operators, `...IfExists` and `ForAnyValue:`/`ForAllValues:` over the keys below.

Requests map to IAM action names and resource ARNs by a table per protocol: S3 (method, key
and sub-resource), Lambda (REST paths), Step Functions and CloudWatch Logs (`X-Amz-Target`,
resource from the body), IAM and STS (`Action`). A Lambda path the table does not know is
checked as `lambda:<Method><Resource>`, which only `lambda:*` or `*` allows.

Condition keys: aws:PrincipalArn, aws:PrincipalAccount, aws:userid, aws:username,
aws:RequestedRegion, aws:SecureTransport (false: plain HTTP), aws:CurrentTime, aws:EpochTime,
s3:prefix, s3:delimiter, s3:max-keys, lambda:FunctionArn.

Denied: 403 AccessDenied (S3 XML, IAM/STS query XML), AccessDeniedException (Lambda 403; Step
Functions and Logs 400), message `User: arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION is not
authorized to perform: ACTION on resource: RESOURCE because ...` as AWS words it.

`LOCAL_AWS_IAM_ENFORCE=0` turns enforcement off.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote
from xml.sax.saxutils import escape

ENV_SWITCH = "LOCAL_AWS_IAM_ENFORCE"


def enabled_by_environment() -> bool:
    """Whether the environment asks for enforcement (default: yes)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


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


@dataclass(frozen=True)
class Denial:
    """An AWS-shaped refusal."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


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


def session_of(access_key_id: str) -> Session | None:
    """The assumed-role session these credentials belong to (None: not role credentials)."""
    from moto.sts.models import sts_backends

    for account_id, partitions in list(sts_backends.items()):
        for backend in list(partitions.values()):
            for assumed in list(backend.assumed_roles):
                if assumed.access_key_id != access_key_id:
                    continue
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
    return None


def identity_policies(session: Session) -> list[dict[str, Any]]:
    """The role's inline and attached managed policy documents."""
    from moto.iam.models import iam_backends

    backend = iam_backends[session.account_id]["global"]
    try:
        role = backend.get_role(session.role_name)
    except Exception:
        return []  # a deleted role allows nothing
    documents = [_document(doc) for doc in role.policies.values()]
    for policy in role.managed_policies.values():
        version = next((v for v in policy.versions if v.is_default), None)
        if version is not None:
            documents.append(_document(version.document))
    return documents


def _document(document: Any) -> dict[str, Any]:
    if isinstance(document, dict):
        return document
    text = unquote(document) if str(document).lstrip().startswith("%7B") else str(document)
    return dict(json.loads(text))


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


# ---------------------------------------------------------------------------------------------
# Policy evaluation

ALLOW, DENY, NEUTRAL = "Allow", "Deny", "Neutral"


def evaluate(
    documents: Iterable[Mapping[str, Any]],
    action: str,
    resource: str,
    context: Mapping[str, list[str]],
    principal: str | None = None,
) -> str:
    """Allow, Deny (explicit) or Neutral for one set of policy documents."""
    result = NEUTRAL
    for document in documents:
        statements = document.get("Statement", [])
        if isinstance(statements, dict):
            statements = [statements]
        for statement in statements:
            effect = _statement(statement, action, resource, context, principal)
            if effect == DENY:
                return DENY
            if effect == ALLOW:
                result = ALLOW
    return result


def _statement(
    statement: Mapping[str, Any],
    action: str,
    resource: str,
    context: Mapping[str, list[str]],
    principal: str | None,
) -> str:
    if "NotAction" in statement:
        if _any_match(statement["NotAction"], action, ignore_case=True):
            return NEUTRAL
    elif not _any_match(statement.get("Action", []), action, ignore_case=True):
        return NEUTRAL
    if "NotResource" in statement:
        if _any_match(statement["NotResource"], resource):
            return NEUTRAL
    elif "Resource" in statement and not _any_match(statement["Resource"], resource):
        return NEUTRAL
    if principal is not None and not _principal_matches(statement, principal):
        return NEUTRAL
    if not _conditions_hold(statement.get("Condition", {}), context):
        return NEUTRAL
    return DENY if statement.get("Effect") == "Deny" else ALLOW


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _any_match(patterns: Any, value: str, ignore_case: bool = False) -> bool:
    return any(_glob(p, value, ignore_case) for p in _as_list(patterns))


def _glob(pattern: str, value: str, ignore_case: bool = False) -> bool:
    if "*" not in pattern and "?" not in pattern:
        return pattern.lower() == value.lower() if ignore_case else pattern == value
    escaped = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    flags = re.IGNORECASE if ignore_case else 0
    return re.fullmatch(escaped, value, flags) is not None


def _principal_matches(statement: Mapping[str, Any], principal: str) -> bool:
    """Resource policies: does the statement name this caller (role, session, account or *)?"""
    if "NotPrincipal" in statement:
        return not _principal_listed(statement["NotPrincipal"], principal)
    if "Principal" not in statement:
        return False
    return _principal_listed(statement["Principal"], principal)


def _principal_listed(value: Any, principal: str) -> bool:
    if value == "*":
        return True
    names = _as_list(value.get("AWS")) if isinstance(value, dict) else _as_list(value)
    session_arn, role_arn, account = principal.split("|")
    for name in names:
        if name in ("*", session_arn, role_arn, account, f"arn:aws:iam::{account}:root"):
            return True
    return False


def _conditions_hold(conditions: Mapping[str, Any], context: Mapping[str, list[str]]) -> bool:
    for operator, pairs in conditions.items():
        if not isinstance(pairs, dict):
            return False
        for key, expected in pairs.items():
            if not _condition(operator, key, _as_list(expected), context):
                return False
    return True


def _condition(
    operator: str, key: str, expected: list[str], context: Mapping[str, list[str]]
) -> bool:
    qualifier, _, op = operator.rpartition(":")
    if_exists = op.endswith("IfExists")
    op = op.removesuffix("IfExists")
    actual = _context_value(context, key)
    if op == "Null":
        return (actual is None) == (expected[0].lower() == "true")
    if actual is None:
        # A missing key: ...IfExists and negated operators hold, everything else fails.
        return if_exists or op.startswith(("StringNot", "ArnNot", "NumericNotEquals"))
    test = _OPERATORS.get(op)
    if test is None:
        return False  # an operator we do not know never grants anything
    if qualifier == "ForAllValues":
        return all(any(test(a, e) for e in expected) for a in actual)
    negated = "Not" in op
    if negated:
        return all(test(a, e) for a in actual for e in expected)
    return any(test(a, e) for a in actual for e in expected)


def _context_value(context: Mapping[str, list[str]], key: str) -> list[str] | None:
    for name, values in context.items():
        if name.lower() == key.lower():
            return values
    return None


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return float("nan")


_OPERATORS: dict[str, Any] = {
    "StringEquals": lambda a, e: a == e,
    "StringNotEquals": lambda a, e: a != e,
    "StringEqualsIgnoreCase": lambda a, e: a.lower() == e.lower(),
    "StringNotEqualsIgnoreCase": lambda a, e: a.lower() != e.lower(),
    "StringLike": lambda a, e: _glob(e, a),
    "StringNotLike": lambda a, e: not _glob(e, a),
    "ArnEquals": lambda a, e: _glob(e, a),
    "ArnLike": lambda a, e: _glob(e, a),
    "ArnNotEquals": lambda a, e: not _glob(e, a),
    "ArnNotLike": lambda a, e: not _glob(e, a),
    "Bool": lambda a, e: a.lower() == e.lower(),
    "NumericEquals": lambda a, e: _number(a) == _number(e),
    "NumericNotEquals": lambda a, e: _number(a) != _number(e),
    "NumericLessThan": lambda a, e: _number(a) < _number(e),
    "NumericLessThanEquals": lambda a, e: _number(a) <= _number(e),
    "NumericGreaterThan": lambda a, e: _number(a) > _number(e),
    "NumericGreaterThanEquals": lambda a, e: _number(a) >= _number(e),
}


def bucket_policy(resource: str) -> dict[str, Any] | None:
    """The policy of the bucket a resource ARN names, if it has one."""
    from moto.s3.models import s3_backends

    bucket_name = resource.removeprefix("arn:aws:s3:::").split("/", 1)[0]
    if not bucket_name or bucket_name == "*":
        return None
    for _, partitions in list(s3_backends.items()):
        for backend in list(partitions.values()):
            bucket = backend.buckets.get(bucket_name)
            if bucket is not None and bucket.policy:
                text = bucket.policy.decode() if isinstance(bucket.policy, bytes) else bucket.policy
                return dict(json.loads(text))
    return None


def decide(session: Session, request: Request) -> tuple[str, str]:
    """(Allow | Deny | Neutral, the policy kind that decided) for one request."""
    context = {
        "aws:PrincipalArn": [session.role_arn],
        "aws:PrincipalAccount": [session.account_id],
        "aws:userid": [session.session_name],
        "aws:username": [session.role_name],
        "aws:RequestedRegion": [request.region],
        "aws:SecureTransport": ["false"],
        "aws:CurrentTime": [datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")],
        "aws:EpochTime": [str(int(datetime.datetime.now(datetime.UTC).timestamp()))],
        **request.context,
    }
    identity = evaluate(identity_policies(session), request.action, request.resource, context)
    if identity == DENY:
        return DENY, "identity-based policy"
    if session.session_policy:
        session_result = evaluate(
            [_document(session.session_policy)], request.action, request.resource, context
        )
        if session_result == DENY:
            return DENY, "session policy"
        if session_result != ALLOW:
            return NEUTRAL, "session policy"
    resource_result = NEUTRAL
    if request.service == "s3":
        policy = bucket_policy(request.resource)
        if policy is not None:
            principal = f"{session.arn}|{session.role_arn}|{session.account_id}"
            resource_result = evaluate(
                [policy], request.action, request.resource, context, principal=principal
            )
            if resource_result == DENY:
                return DENY, "resource-based policy"
    if identity == ALLOW or resource_result == ALLOW:
        return ALLOW, ""
    return NEUTRAL, "identity-based policy"


def message(session: Session, request: Request, decision: str, kind: str) -> str:
    """AWS's wording of an AccessDenied."""
    because = (
        f"with an explicit deny in a {kind}"
        if decision == DENY
        else f"because no {kind} allows the {request.action} action"
    )
    # S3 quotes the resource in its messages; Lambda, Step Functions, IAM and Logs do not.
    resource = f'"{request.resource}"' if request.service == "s3" else request.resource
    return (
        f"User: {session.arn} is not authorized to perform: {request.action} on resource: "
        f"{resource} {because}"
    )


def denial(service: str, text: str, code: str = "AccessDenied", status: int = 403) -> Denial:
    """The refusal in the service's own wire shape."""
    if service == "s3":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{escape(text)}</Message>"
            "<RequestId>local</RequestId></Error>"
        ).encode()
        return Denial(status, [("Content-Type", "application/xml")], body)
    if service in ("iam", "sts"):
        body = (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
            f"<Message>{escape(text)}</Message></Error><RequestId>local</RequestId></ErrorResponse>"
        ).encode()
        return Denial(status, [("Content-Type", "text/xml")], body)
    json_code = "AccessDeniedException" if code == "AccessDenied" else code
    json_status = 403 if service == "lambda" else 400
    payload = {"__type": json_code, "Message": text, "message": text}
    # Every AWS JSON answer names its request; Step Functions puts the id in a task's cause.
    headers = [
        ("Content-Type", "application/x-amz-json-1.0"),
        ("x-amzn-ErrorType", json_code),
        ("x-amzn-RequestId", str(uuid.uuid4())),
    ]
    return Denial(json_status, headers, json.dumps(payload).encode())


def check(environ: Mapping[str, Any], body: bytes) -> Denial | None:
    """None when the request may proceed, else the AccessDenied to answer."""
    signed = access_key_of(environ)
    if signed is None:
        return None
    access_key_id, region, service = signed
    session = session_of(access_key_id)
    if session is None:
        return None  # not role credentials: the account's administrator
    if session.expired:
        return denial(
            service, "The security token included in the request is expired", "ExpiredToken"
        )
    request = describe(environ, body, session, region, service)
    if request is None:
        return None
    decision, kind = decide(session, request)
    if decision == ALLOW:
        return None
    return denial(service, message(session, request, decision, kind))
