"""endpoint_router: routes InvokeEndpoint to the endpoints' model servers and captures traffic.

Invocations are proxied over pooled keep-alive connections (`http_pool`); the container's
errors become `ModelError`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .capture import CaptureWriter, capture_record
from .exceptions import ModelError, RuntimeValidationError, ServiceUnavailable
from .http_pool import ConnectionPool
from .model_server_process import ModelServerProcess

log = logging.getLogger(__name__)


@dataclass
class VariantRoute:
    """Where one production variant's traffic goes."""

    name: str
    weight: float
    server: ModelServerProcess
    image: str = ""
    startup_timeout_s: float = 600.0


@dataclass
class Route:
    """A live endpoint: its variants and its capture_writer."""

    endpoint_name: str
    variants: list[VariantRoute]
    capture: CaptureWriter | None = None
    servers: list[ModelServerProcess] = field(default_factory=list)

    def pick(self, target_variant: str | None) -> VariantRoute:
        """The variant for one request: the target if named, else weighted at random."""
        if target_variant:
            for v in self.variants:
                if v.name == target_variant:
                    return v
            raise RuntimeValidationError(
                f"Variant {target_variant} not found for endpoint {self.endpoint_name}."
            )
        if len(self.variants) == 1:
            return self.variants[0]
        weights = [max(v.weight, 0.0) for v in self.variants]
        if sum(weights) <= 0:
            weights = [1.0] * len(self.variants)
        return random.choices(self.variants, weights=weights)[0]


@dataclass
class Invocation:
    """A successful InvokeEndpoint answer."""

    body: bytes
    content_type: str
    variant: str
    custom_attributes: str | None = None


class EndpointRouter:
    """endpoint_router: routes InvokeEndpoint to model servers and captures the traffic."""

    def __init__(self, region: str, account_id: str, invocation_timeout_s: float = 60.0) -> None:
        self.region = region
        self.account_id = account_id
        self.invocation_timeout_s = invocation_timeout_s
        self._routes: dict[str, Route] = {}
        self._pending: set[str] = set()
        self._pool: ConnectionPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closing = False

    async def start(self) -> None:
        """Open the connection pool (inside the serving event loop)."""
        self._pool = ConnectionPool()
        self._loop = asyncio.get_running_loop()

    def forget_server(self, port: int) -> None:
        """Drop pooled connections to a stopped server (callable from any thread)."""
        if self._pool is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._pool.forget, "127.0.0.1", port)

    async def close(self) -> None:
        """Close the pooled connections."""
        self.closing = True
        if self._pool is not None:
            self._pool.close()

    def set_route(self, route: Route) -> None:
        """Send an endpoint's traffic to a new set of variants."""
        self._routes[route.endpoint_name] = route
        self._pending.discard(route.endpoint_name)

    def mark_pending(self, endpoint_name: str) -> None:
        """An endpoint that is coming back after a restart: invocations wait for it."""
        self._pending.add(endpoint_name)

    def remove_route(self, endpoint_name: str) -> Route | None:
        """Stop routing to an endpoint."""
        self._pending.discard(endpoint_name)
        return self._routes.pop(endpoint_name, None)

    def routes(self) -> list[Route]:
        """Every live route (a snapshot: safe to iterate from another thread)."""
        return list(self._routes.values())

    def route(self, endpoint_name: str) -> Route | None:
        """The live route of an endpoint, if any."""
        return self._routes.get(endpoint_name)

    def _not_found(self, endpoint_name: str) -> RuntimeValidationError:
        return RuntimeValidationError(
            f"Endpoint {endpoint_name} of account {self.account_id} not found."
        )

    def _log_stream_arn(self, endpoint_name: str) -> str:
        return (
            f"arn:aws:logs:{self.region}:{self.account_id}:log-group:"
            f"/aws/sagemaker/Endpoints/{endpoint_name}"
        )

    def _model_error(self, endpoint_name: str, message: str, **members: Any) -> ModelError:
        return ModelError(message, LogStreamArn=self._log_stream_arn(endpoint_name), **members)

    async def _live_route(self, endpoint_name: str) -> Route:
        route = self._routes.get(endpoint_name)
        if route is not None:
            return route
        if endpoint_name not in self._pending:
            raise self._not_found(endpoint_name)
        deadline = time.monotonic() + self.invocation_timeout_s
        while endpoint_name in self._pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            route = self._routes.get(endpoint_name)
            if route is not None:
                return route
        raise self._not_found(endpoint_name)

    async def invoke(
        self,
        endpoint_name: str,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        custom_attributes: str | None = None,
        inference_id: str | None = None,
        target_variant: str | None = None,
    ) -> Invocation:
        """Proxy one invocation to the endpoint's model server; capture it if configured."""
        if self.closing or self._pool is None:
            raise ServiceUnavailable("sagemaker-local is shutting down.")
        inference_time = datetime.now(UTC)
        route = await self._live_route(endpoint_name)
        variant = route.pick(target_variant)
        if not variant.server.alive():
            # Never connect to a dead server's port: another endpoint's new model server may
            # hold it by now, and would answer with the wrong model.
            raise ServiceUnavailable(
                f"The model server of production variant {variant.name} is down; it is being "
                "replaced. Try your call again."
            )
        headers = {"Content-Type": content_type or "application/octet-stream"}
        if accept:
            headers["Accept"] = accept
        if custom_attributes:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = custom_attributes
        if inference_id:
            headers["X-Amzn-SageMaker-Inference-Id"] = inference_id
        try:
            async with asyncio.timeout(self.invocation_timeout_s):
                status, answer_headers, answer = await self._pool.post(
                    "127.0.0.1", variant.server.port, "/invocations", body, headers
                )
            answer_type = answer_headers.get("content-type", "application/octet-stream")
            answer_attributes = answer_headers.get("x-amzn-sagemaker-custom-attributes")
        except TimeoutError as exc:
            raise self._model_error(
                endpoint_name,
                f"Your invocation timed out while waiting for a response from container "
                f"{variant.name}. Review the latency metrics for each container in Amazon "
                f"CloudWatch, resolve the issue, and try again.",
            ) from exc
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            # The model server process is gone (the supervisor is replacing it): not the
            # request's fault, so a retryable 503 rather than a ModelError.
            raise ServiceUnavailable(
                f"The model server of production variant {variant.name} is not reachable "
                f"({exc}); it is being replaced. Try your call again."
            ) from exc
        if status == 503:
            # The model server's own "not now": no worker ready, its worker died mid-request,
            # or its queue is full. Retryable, and botocore retries a 503 by itself.
            raise ServiceUnavailable(
                f"The model server of production variant {variant.name} is busy or restarting "
                f"({answer.decode(errors='replace')[:200]}). Try your call again."
            )
        if not 200 <= status < 300:
            original = answer.decode(errors="replace")
            side = "client" if 400 <= status < 500 else "server"
            raise self._model_error(
                endpoint_name,
                f'Received {side} error ({status}) from primary with message "{original}". '
                f"See https://{self.region}.console.aws.amazon.com/cloudwatch/home?region="
                f"{self.region}#logEventViewer:group=/aws/sagemaker/Endpoints/{endpoint_name} "
                f"in account {self.account_id} for more information.",
                OriginalStatusCode=status,
                OriginalMessage=original,
            )
        capture = route.capture
        if capture is not None and capture.sampled():
            record = capture_record(
                capture.settings,
                input_content_type=content_type or "application/octet-stream",
                input_data=body,
                output_content_type=answer_type,
                output_data=answer,
                inference_time=inference_time,
                inference_id=inference_id,
            )
            capture.add(variant.name, record, inference_time)
        return Invocation(answer, answer_type, variant.name, answer_attributes)
