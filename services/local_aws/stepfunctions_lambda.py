"""The interpreter's Lambda `Invoke`, straight into the Lambda backend: no HTTP, no botocore.

A burst of executions spent a third of the emulator's CPU on the Lambda tasks' calls, and
only a seventh of that in the Lambda backend: the rest was botocore building, signing and
parsing the request, werkzeug building its environ and Flask and moto dispatching it. Here the
task's `Invoke` is answered by the same pieces that answer it over HTTP, in the same order:

1. IAM, as `server._iam_denial` checks a signed request: the role session's credentials, the
   request as `iam_requests.describe` maps it (`lambda:InvokeFunction` on the function ARN,
   its qualifier included) and `iam_enforcement.decide`; a refusal is the same
   `AccessDeniedException` (or `ExpiredToken`) with status 403;
2. moto's `LambdaBackend.invoke` of the caller's account and the client's region, with the
   request's headers (`X-Amz-Invocation-Type`, `X-Amz-Log-Type`, `X-Amz-Client-Context`),
   then moto's `LambdaResponse.invoke` rules: status 200/202/204, the 6 MB response limit,
   `LogResult` only for `LogType=Tail`;
3. the result as botocore parses it: `StatusCode`, `FunctionError`, `LogResult`,
   `ExecutedVersion`, a streaming `Payload`, `ResponseMetadata`; an error as the `ClientError`
   botocore raises for moto's error answer (its code, message, status and a request id).

Every other Lambda operation (the `aws-sdk:lambda:*` integrations) goes through the botocore
client as before. `tests/test_stepfunctions_speedups.py` runs the same cases both ways.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import uuid
from typing import Any
from urllib.parse import quote

from . import iam_enforcement
from .stepfunctions_roles import RoleCredentials

log = logging.getLogger("local_aws.stepfunctions")

# moto's LambdaResponse.invoke: larger answers become this function error (sys.getsizeof).
MAX_RESPONSE_BYTES = 6_000_000
DEFAULT_ACCOUNT = "123456789012"  # moto's, for unsigned-as-administrator calls


class DirectLambda:
    """A botocore Lambda client whose `invoke` goes straight to the backend (see the module)."""

    def __init__(
        self, client: Any, region: str, credentials: RoleCredentials | None, iam_enforce: bool
    ) -> None:
        self._client = client
        self._region = region
        self._credentials = credentials
        self._iam_enforce = iam_enforce

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def invoke(self, **params: Any) -> dict[str, Any]:
        """Lambda `Invoke` with botocore's request parameters and result shape."""
        INVOKES.count()
        name = str(params.get("FunctionName", ""))
        qualifier = params.get("Qualifier")
        headers = _request_headers(params)
        if self._iam_enforce and self._credentials is not None:
            self._authorize(name, qualifier)
        body = _payload_bytes(params.get("Payload"))
        response_headers: dict[str, str] = {}
        try:
            payload = self._backend().invoke(name, qualifier, body, headers, response_headers)
        except Exception as error:
            raise _client_error(error) from error
        return _result(payload, headers, response_headers)

    def _backend(self) -> Any:
        from moto.awslambda.models import lambda_backends

        account = self._credentials.role_arn.split(":")[4] if self._credentials else None
        return lambda_backends[account or DEFAULT_ACCOUNT][self._region]

    def _authorize(self, name: str, qualifier: Any) -> None:
        assert self._credentials is not None
        session = iam_enforcement.session_of(self._credentials.access_key_id)
        if session is None:
            return  # not (or no longer) an STS session: the administrator, as over HTTP
        if session.expired:
            text = "The security token included in the request is expired"
            raise _denied(iam_enforcement.denial("lambda", text, "ExpiredToken"))
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": f"/2015-03-31/functions/{quote(name, safe='')}/invocations",
            "QUERY_STRING": f"Qualifier={quote(str(qualifier), safe='')}" if qualifier else "",
        }
        request = iam_enforcement.describe(environ, b"", session, self._region, "lambda")
        if request is None:
            return
        decision, kind = iam_enforcement.decide(session, request)
        if decision != iam_enforcement.ALLOW:
            text = iam_enforcement.message(session, request, decision, kind)
            raise _denied(iam_enforcement.denial("lambda", text))


class _Counter:
    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def count(self) -> None:
        with self._lock:
            self.value += 1


INVOKES = _Counter()


def _request_headers(params: dict[str, Any]) -> Any:
    from werkzeug.datastructures import Headers

    headers = Headers()  # case-insensitive, as the request's headers are for moto
    for parameter, header in (
        ("InvocationType", "X-Amz-Invocation-Type"),
        ("LogType", "X-Amz-Log-Type"),
        ("ClientContext", "X-Amz-Client-Context"),
    ):
        if params.get(parameter) is not None:
            headers[header] = str(params[parameter])
    return headers


def _payload_bytes(payload: Any) -> bytes:
    if payload is None:
        return b""
    if hasattr(payload, "read"):
        payload = payload.read()
    return payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)


def _result(payload: Any, headers: Any, response_headers: dict[str, str]) -> dict[str, Any]:
    from botocore.response import StreamingBody

    invocation_type = headers.get("X-Amz-Invocation-Type")
    if payload is None:
        raise _error("404", "Not Found", 404)  # moto answers 404 with `{}`: no error code
    if invocation_type != "Event" and sys.getsizeof(payload) > MAX_RESPONSE_BYTES:
        response_headers["x-amz-function-error"] = "Unhandled"
        payload = json.dumps(
            {
                "errorMessage": "Response payload size exceeded maximum allowed payload size "
                "(6291556 bytes).",
                "errorType": "Function.ResponseSizeTooLarge",
            }
        ).encode("utf-8")
    status = {"Event": 202, "DryRun": 204}.get(str(invocation_type), 200)
    if status == 200 and headers.get("X-Amz-Log-Type") != "Tail":
        response_headers.pop("x-amz-log-result", None)
    data = _payload_bytes(payload)
    request_id = response_headers.get("x-amzn-requestid") or str(uuid.uuid4())
    result: dict[str, Any] = {
        "ResponseMetadata": {
            "RequestId": request_id,
            "HTTPStatusCode": status,
            "HTTPHeaders": {k.lower(): str(v) for k, v in response_headers.items()},
            "RetryAttempts": 0,
        },
        "StatusCode": status,
    }
    for key, header in (
        ("FunctionError", "x-amz-function-error"),
        ("LogResult", "x-amz-log-result"),
        ("ExecutedVersion", "x-amz-executed-version"),
    ):
        if header in response_headers:
            result[key] = response_headers[header]
    result["Payload"] = StreamingBody(io.BytesIO(data), len(data))
    return result


def _error(code: str, message: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    response = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {
            "RequestId": str(uuid.uuid4()),
            "HTTPStatusCode": status,
            "HTTPHeaders": {},
            "RetryAttempts": 0,
        },
    }
    return ClientError(response, "Invoke")  # type: ignore[arg-type]


def _denied(denial: iam_enforcement.Denial) -> Exception:
    body = json.loads(denial.body)
    return _error(str(body["__type"]), str(body["Message"]), denial.status)


def _client_error(error: Exception) -> Exception:
    """The ClientError botocore raises for the answer moto's handler gives this exception."""
    from moto.core.exceptions import JsonRESTError

    if isinstance(error, JsonRESTError):  # what every Lambda backend error is
        message = error.message or ""
        return _error(error.relative_error_type or "UnknownError", message, int(error.code))
    # Over HTTP an exception in the application is werkzeug's 500 page, no error code.
    log.error("Lambda Invoke failed in-process", exc_info=error)
    return _error("500", "Internal Server Error", 500)
