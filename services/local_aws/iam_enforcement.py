"""IAM enforcement for calls made with role credentials, as AWS evaluates them, on by default.

Who is checked: a request signed with temporary credentials the emulator's STS issued
(AssumeRole: each Lambda environment's role, each state machine's role for the calls its
tasks make (`stepfunctions_roles`), any `sts assume-role`). Every other caller is the
account's administrator (the host's `local` profile, `test`/`test` keys), as before.

What is evaluated, per request, before moto acts (statements: `iam_policy`; the request's
action, resource and context: `iam_requests`):
- the role's identity policies (inline and attached managed), and the session policy if
  AssumeRole was given one (the result is their intersection, as on AWS);
- for S3, the bucket policy (same account: identity OR bucket policy allows, any explicit Deny
  wins).

Condition keys of the caller: aws:PrincipalArn, aws:PrincipalAccount, aws:userid,
aws:username, aws:RequestedRegion, aws:SecureTransport (false: plain HTTP), aws:CurrentTime,
aws:EpochTime.

Denied: 403 AccessDenied (S3 XML, IAM/STS query XML), AccessDeniedException (Lambda 403; Step
Functions and Logs 400), message `User: arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION is not
authorized to perform: ACTION on resource: RESOURCE because ...` as AWS words it.

`LOCAL_AWS_IAM_ENFORCE=0` turns enforcement off.
"""

from __future__ import annotations

import datetime
import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote
from xml.sax.saxutils import escape

from .iam_policy import ALLOW, DENY, NEUTRAL, evaluate
from .iam_requests import Request, Session, access_key_of, describe, session_of

# Callers import these from here as before (the test suite, iam_authorize, server).
__all__ = [
    "ALLOW",
    "DENY",
    "NEUTRAL",
    "Denial",
    "Request",
    "Session",
    "access_key_of",
    "check",
    "decide",
    "denial",
    "describe",
    "enabled_by_environment",
    "evaluate",
    "message",
    "session_of",
]

ENV_SWITCH = "LOCAL_AWS_IAM_ENFORCE"


def enabled_by_environment() -> bool:
    """Whether the environment asks for enforcement (default: yes)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class Denial:
    """An AWS-shaped refusal."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


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
