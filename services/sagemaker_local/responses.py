"""The wire: SageMaker's JSON 1.1 control plane and the rest-json runtime, as one ASGI app.

- `POST /` with `X-Amz-Target: SageMaker.<Operation>`: validated against botocore's model of
  `sagemaker`, answered with the operation's output shape or `{"__type", "message"}`;
- `POST /endpoints/{EndpointName}/invocations`: InvokeEndpoint (`sagemaker-runtime`), errors
  named in `x-amzn-ErrorType`;
- `GET /_health`: readiness and what runs (endpoints, their model servers, training jobs).

A bare ASGI callable rather than a framework: the invocation path is the hot one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any
from urllib.parse import unquote

from ..browser_guard import refusal
from . import shapes
from .authorization import Authorizer, endpoint_arn, resource_arn
from .backend import SageMakerBackend
from .exceptions import (
    InternalFailure,
    PayloadTooLarge,
    RuntimeValidationError,
    SageMakerError,
    SerializationException,
    UnknownOperationException,
    ValidationException,
)
from .notebooks import NOTEBOOK_OPERATIONS

log = logging.getLogger(__name__)

# InvokeEndpoint's documented payload limit (botocore: Body max 6291456).
MAX_INVOKE_BYTES = 6_291_456
MAX_CONTROL_BYTES = 16 << 20
JSON_11 = b"application/x-amz-json-1.1"
# Deeper than any SageMaker input shape nests (HyperParameters maps are flat): refused early.
MAX_JSON_DEPTH = 32

OPERATIONS = {
    op: "".join("_" + c.lower() if c.isupper() else c for c in op).lstrip("_")
    for op in (
        "CreateTrainingJob",
        "DescribeTrainingJob",
        "StopTrainingJob",
        "ListTrainingJobs",
        "CreateModel",
        "DescribeModel",
        "DeleteModel",
        "ListModels",
        "CreateEndpointConfig",
        "DescribeEndpointConfig",
        "DeleteEndpointConfig",
        "ListEndpointConfigs",
        "CreateEndpoint",
        "DescribeEndpoint",
        "DeleteEndpoint",
        "ListEndpoints",
        "UpdateEndpoint",
        *NOTEBOOK_OPERATIONS,
    )
}

Send = Any
Receive = Any


class _Disconnected(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None once it passes limit (the rest is drained)."""
    chunks: list[bytes] = []
    size = 0
    too_large = False
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            too_large = True
            chunks.clear()
        elif chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if too_large:
        return None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _request_id() -> bytes:
    return str(uuid.uuid4()).encode()


class SageMakerApp:
    """The ASGI application of sagemaker-local."""

    def __init__(
        self,
        backend: SageMakerBackend,
        bind_host: str = "127.0.0.1",
        authorizer: Authorizer | None = None,
    ) -> None:
        self.backend = backend
        self.authorizer = authorizer  # None: no IAM checks (see authorization.py)
        self.router = backend.router
        self.bind_host = bind_host

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        """Dispatch one ASGI connection scope."""
        if scope["type"] == "http":
            try:
                await self._http(scope, receive, send)
            except _Disconnected:
                return
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.router.start()
                    await asyncio.to_thread(self.backend.start)
                except Exception as exc:
                    log.exception("sagemaker-local failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.router.closing = True
                try:
                    await asyncio.to_thread(self.backend.shutdown)
                finally:
                    await self.router.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        method = scope["method"]
        path = scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        refused = refusal(method, path, headers, (self.bind_host,))
        if refused is not None:  # a browser page (or a rebinding one): before anything acts
            status, message = refused
            body = json.dumps({"__type": "AccessDeniedException", "message": message}).encode()
            await _respond(
                send,
                status,
                body,
                [(b"content-type", b"application/json"), (b"x-amzn-requestid", _request_id())],
            )
            return
        if method == "POST" and path.startswith("/endpoints/") and path.endswith("/invocations"):
            await self._invoke(
                scope, receive, send, unquote(path[len("/endpoints/") : -len("/invocations")])
            )
        elif method == "POST" and path == "/":
            await self._control_plane(scope, receive, send)
        elif method == "GET" and path in ("/_health", "/ping"):
            body = json.dumps(self.backend.health()).encode()
            await _respond(send, 200, body, [(b"content-type", b"application/json")])
        else:
            await _read_body(receive, MAX_CONTROL_BYTES)
            body = json.dumps({"message": f"No route for {method} {path}"}).encode()
            await _respond(send, 404, body, [(b"content-type", b"application/json")])

    # -- control plane ---------------------------------------------------------------------------
    async def _control_plane(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        request_id = _request_id()
        try:
            body = await _read_body(receive, MAX_CONTROL_BYTES)
            target = headers.get(b"x-amz-target", b"").decode()
            result = await self._operation(target, body, headers)
            status, payload = 200, json.dumps(result).encode()
        except SageMakerError as exc:
            status, payload = exc.status, json.dumps(exc.body()).encode()
        except _Disconnected:
            raise
        except Exception as exc:
            log.exception("control-plane request failed")
            error = InternalFailure(f"sagemaker-local failed: {exc}")
            status, payload = error.status, json.dumps(error.body()).encode()
        await _respond(
            send, status, payload, [(b"content-type", JSON_11), (b"x-amzn-requestid", request_id)]
        )

    async def _operation(
        self, target: str, body: bytes | None, headers: dict[bytes, bytes] | None = None
    ) -> dict[str, Any]:
        service, _, operation = target.partition(".")
        if service != "SageMaker" or not operation:
            raise UnknownOperationException(f"Unknown target: {target or '(none)'}")
        if operation not in OPERATIONS:
            raise UnknownOperationException(f"sagemaker-local does not implement {operation}.")
        if body is None:
            raise ValidationException("Request body too large.")
        params = parse_request(body)
        if self.authorizer is not None and headers is not None:
            config = self.backend.config
            arn = resource_arn(config.region, config.account_id, operation, params)
            await self.authorizer.check(headers, f"sagemaker:{operation}", arn)
        op_model = shapes.operation("sagemaker", operation)
        shapes.validate_input(op_model, params)
        handler = getattr(self.backend, OPERATIONS[operation])
        result = await asyncio.to_thread(handler, params)
        return shapes.shape_output(op_model.output_shape, result)

    # -- runtime ---------------------------------------------------------------------------------
    async def _invoke(
        self, scope: dict[str, Any], receive: Receive, send: Send, endpoint_name: str
    ) -> None:
        request_id = _request_id()
        headers = dict(scope["headers"])
        try:
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > MAX_INVOKE_BYTES:
                await _read_body(receive, 0)
                raise PayloadTooLarge(f"HTTP content length exceeded {MAX_INVOKE_BYTES} bytes.")
            body = await _read_body(receive, MAX_INVOKE_BYTES)
            if body is None:
                raise PayloadTooLarge(f"HTTP content length exceeded {MAX_INVOKE_BYTES} bytes.")
            params = {
                "EndpointName": endpoint_name,
                "ContentType": _header(headers, b"content-type"),
                "Accept": _header(headers, b"accept"),
                "CustomAttributes": _header(headers, b"x-amzn-sagemaker-custom-attributes"),
                "InferenceId": _header(headers, b"x-amzn-sagemaker-inference-id"),
                "TargetVariant": _header(headers, b"x-amzn-sagemaker-target-variant"),
            }
            _validate_invoke(params)
            if self.authorizer is not None:
                config = self.backend.config
                arn = endpoint_arn(config.region, config.account_id, endpoint_name)
                await self.authorizer.check(headers, "sagemaker:InvokeEndpoint", arn)
            result = await self.router.invoke(
                endpoint_name,
                body,
                params["ContentType"],
                params["Accept"],
                custom_attributes=params["CustomAttributes"],
                inference_id=params["InferenceId"],
                target_variant=params["TargetVariant"],
            )
        except SageMakerError as exc:
            await self._runtime_error(send, exc, request_id)
            return
        except _Disconnected:
            raise
        except Exception as exc:
            log.exception("invocation of %s failed", endpoint_name)
            await self._runtime_error(
                send, InternalFailure(f"sagemaker-local failed: {exc}"), request_id
            )
            return
        out = [
            (b"content-type", result.content_type.encode()),
            (b"x-amzn-invoked-production-variant", result.variant.encode()),
            (b"x-amzn-requestid", request_id),
        ]
        if result.custom_attributes:
            out.append((b"x-amzn-sagemaker-custom-attributes", result.custom_attributes.encode()))
        await _respond(send, 200, result.body, out)

    async def _runtime_error(self, send: Send, exc: SageMakerError, request_id: bytes) -> None:
        headers = [(b"content-type", b"application/json"), (b"x-amzn-requestid", request_id)]
        if exc.code:
            headers.append((b"x-amzn-errortype", exc.code.encode()))
            body: dict[str, Any] = {"Message": exc.message, **exc.members}
            if exc.code == "ModelError":
                status = exc.members.get("OriginalStatusCode")
                kind = (
                    "CLIENT_ERROR_FROM_MODEL"
                    if status and status < 500
                    else "SERVER_ERROR_FROM_MODEL"
                )
                body["ErrorCode"] = kind if status else "MODEL_ERROR"
        else:
            body = exc.body()
        await _respond(send, exc.status, json.dumps(body).encode(), headers)


def _refuse_constant(name: str) -> Any:
    raise ValidationException(f"Value {name} is not a valid number: JSON has no {name}.")


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level > MAX_JSON_DEPTH:
                return level
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def parse_request(body: bytes) -> dict[str, Any]:
    """A control-plane request body as a JSON object; 400 for anything else, never 500."""
    try:
        params = json.loads(body, parse_constant=_refuse_constant) if body.strip() else {}
    except RecursionError:
        raise ValidationException(
            f"Request body is nested deeper than {MAX_JSON_DEPTH} levels."
        ) from None
    except ValueError as exc:  # also UnicodeDecodeError
        raise SerializationException(f"Request body is not JSON: {exc}") from exc
    if not isinstance(params, dict):
        raise SerializationException("Request body must be a JSON object.")
    if _depth(params) > MAX_JSON_DEPTH:
        raise ValidationException(f"Request body is nested deeper than {MAX_JSON_DEPTH} levels.")
    return params


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return value.decode("latin-1") if value is not None else None


def _validate_invoke(params: dict[str, Any]) -> None:
    """InvokeEndpoint's header and name constraints, answered as the runtime's ValidationError."""
    present = {k: v for k, v in params.items() if v is not None}
    try:
        shapes.validate_input(
            shapes.operation("sagemaker-runtime", "InvokeEndpoint"), {**present, "Body": b""}
        )
    except (ValidationException, SerializationException) as exc:
        raise RuntimeValidationError(exc.message) from exc
