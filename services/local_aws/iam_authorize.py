"""Authorization as a service: other local services ask the emulator whether a caller may act.

sagemaker-local is a separate process without IAM of its own; the emulator holds the roles,
their policies and the STS sessions. `POST /_local_aws/iam/authorize` with JSON
`{"access_key_id", "session_token", "action", "resource", "region"}` answers
`{"allowed": bool, "code": str, "message": str, "principal": str}` from the same evaluator
that guards the emulator's own APIs (`iam_enforcement.decide`/`message`).

- Credentials that are not an STS role session are the account's administrator: allowed.
- A session token that does not belong to the access key, or an expired session: not allowed
  (`UnrecognizedClientException` / `ExpiredTokenException`), as AWS answers bad credentials.
- With enforcement off (`LOCAL_AWS_IAM_ENFORCE=0`) everything is allowed.

Only loopback peers are answered (403 otherwise): the decision says which permissions a
principal lacks, which is nobody else's business; the browser guard already refuses
cross-origin requests to `/_local_aws/*` before this runs.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Mapping
from typing import Any

from . import iam_enforcement

PATH = "/_local_aws/iam/authorize"
MAX_BODY_BYTES = 64 << 10


class BadRequest(ValueError):
    """A request this endpoint cannot read."""


def authorize(question: Mapping[str, Any], enforce: bool = True) -> dict[str, Any]:
    """The decision for one question (see the module docstring for its fields)."""
    access_key_id = _text(question, "access_key_id")
    action = _text(question, "action")
    resource = _text(question, "resource")
    region = str(question.get("region") or "us-east-1")
    token = question.get("session_token")
    if ":" not in action:
        raise BadRequest(f"action {action!r} is not service:Operation")
    if not enforce:
        return {"allowed": True, "code": "", "message": "", "principal": ""}
    session = iam_enforcement.session_of(access_key_id)
    if session is None:
        return {"allowed": True, "code": "", "message": "", "principal": "administrator"}
    if token is not None and token != _session_token(access_key_id):
        return _refused(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
            session.arn,
        )
    if session.expired:
        return _refused(
            "ExpiredTokenException", "The security token included in the request is expired", ""
        )
    request = iam_enforcement.Request(action.split(":", 1)[0], action, resource, region)
    decision, kind = iam_enforcement.decide(session, request)
    if decision == iam_enforcement.ALLOW:
        return {"allowed": True, "code": "", "message": "", "principal": session.arn}
    text = iam_enforcement.message(session, request, decision, kind)
    return _refused("AccessDeniedException", text, session.arn)


def _refused(code: str, message: str, principal: str) -> dict[str, Any]:
    return {"allowed": False, "code": code, "message": message, "principal": principal}


def _text(question: Mapping[str, Any], name: str) -> str:
    value = question.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name} must be a non-empty string")
    return value


def _session_token(access_key_id: str) -> str | None:
    from moto.sts.models import sts_backends

    for partitions in list(sts_backends.values()):
        for backend in list(partitions.values()):
            for assumed in list(backend.assumed_roles):
                if assumed.access_key_id == access_key_id:
                    return str(assumed.session_token)
    return None


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def serve(environ: Mapping[str, Any], start_response: Callable[..., Any], enforce: bool) -> Any:
    """The WSGI answer for `PATH`."""
    if not _loopback(str(environ.get("REMOTE_ADDR", ""))):
        return _json(start_response, 403, {"message": f"{PATH} answers loopback callers only"})
    if str(environ.get("REQUEST_METHOD", "")).upper() != "POST":
        return _json(start_response, 405, {"message": f"{PATH} takes POST"})
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = -1
    if not 0 < length <= MAX_BODY_BYTES:
        return _json(start_response, 400, {"message": f"body must be 1..{MAX_BODY_BYTES} bytes"})
    try:
        question = json.loads(environ["wsgi.input"].read(length))
        if not isinstance(question, dict):
            raise BadRequest("body must be a JSON object")
        answer = authorize(question, enforce)
    except (ValueError, BadRequest) as exc:  # JSONDecodeError is a ValueError
        return _json(start_response, 400, {"message": str(exc)})
    return _json(start_response, 200, answer)


def _json(start_response: Callable[..., Any], status: int, payload: Any) -> list[bytes]:
    body = json.dumps(payload).encode()
    reasons = {200: "OK", 400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed"}
    start_response(
        f"{status} {reasons[status]}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]
