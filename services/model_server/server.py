"""The model server app: the SageMaker hosting contract on top of `http_server`.

Routes: `GET /ping` (200 once every worker has the model loaded, 503 before), `POST /invocations`,
`GET /metrics` (Prometheus text), `GET /execution-parameters` (batch transform). Bodies are
limited to 6,291,456 bytes (InvokeEndpoint's limit): a larger Content-Length is answered 413
before the body is read, and a chunked body is counted as it streams. The front end only parses
HTTP and batches; decoding, the model and encoding run in the worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .batching import BatchQueue, InvocationResult, PendingInvocation
from .http_server import DEFAULT_ACCEPT, HttpConnection, RequestHead, error_result
from .image_budget import ImageBudget
from .metrics import ServerMetrics
from .workers import WorkerFailed, WorkerPool, WorkerSettings

try:
    from ..browser_guard import refusal as browser_refusal
except ImportError:  # the serving image is built from services/model_server alone
    browser_refusal = None  # type: ignore[assignment]

log = logging.getLogger("model_server")

MAX_PAYLOAD_BYTES = 6_291_456
DEFAULT_CONTENT_TYPES = (
    "image/png",
    "image/jpeg",
    "application/x-image",
    "application/json",
    "text/csv",
    "application/x-npy",
)


@dataclass(frozen=True)
class ServerConfig:
    """Every setting of the model server."""

    model_dir: Path = Path("/opt/ml/model")
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_batch_size: int = 8
    max_batch_delay_ms: float = 0.0
    threads_per_worker: int = 1
    request_timeout_s: float = 60.0
    graceful_timeout_s: float = 30.0
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    content_types: tuple[str, ...] = field(default=DEFAULT_CONTENT_TYPES)
    check_host: bool = True  # Host allowlist (off as the container's `serve`)
    max_queue: int = 256  # invocations waiting for a worker; more get 503
    image_budget: ImageBudget = field(default_factory=ImageBudget)


class ModelServer:
    """The model server: HTTP front end, batch queue and worker pool."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = ServerMetrics()
        self.queue = BatchQueue(config.max_batch_size, config.max_batch_delay_ms / 1000)
        self.content_types = frozenset(config.content_types)
        self.connections: set[HttpConnection] = set()
        self.pool: WorkerPool | None = None
        self.stopping = False
        self._stop: asyncio.Event | None = None
        self._connections_closed: asyncio.Event | None = None
        self._fatal: str | None = None

    # --- life cycle ---------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT (exit 0) or a model that cannot be loaded (exit 1)."""
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._connections_closed = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        try:
            server = await loop.create_server(
                lambda: HttpConnection(self),
                self.config.host,
                self.config.port,
                reuse_address=True,
                backlog=1024,
            )
        except OSError as exc:
            print(
                f"model_server: cannot listen on {self.config.host}:{self.config.port}: {exc}",
                file=sys.stderr,
            )
            return 2
        log.info(
            "listening on http://%s:%d (model %s, %d worker(s), batch %d, delay %g ms)",
            self.config.host,
            self.config.port,
            self.config.model_dir,
            self.config.workers,
            self.config.max_batch_size,
            self.config.max_batch_delay_ms,
        )
        settings = WorkerSettings(
            self.config.model_dir,
            self.config.threads_per_worker,
            self.config.request_timeout_s,
            self.config.image_budget,
        )
        self.pool = WorkerPool(
            self.config.workers, settings, self.queue, self.metrics, self._on_fatal
        )
        starting = asyncio.create_task(self.pool.start())
        stopped = asyncio.create_task(self._stop.wait())
        await asyncio.wait((starting, stopped), return_when=asyncio.FIRST_COMPLETED)
        if starting.done() and starting.exception() is not None:
            self._fatal = str(starting.exception())
        elif not starting.done():  # asked to stop while the model was loading
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, WorkerFailed):
                await starting
        else:
            log.info("model loaded; ready")
            await self._stop.wait()
        stopped.cancel()
        await self._shutdown(server)
        if self._fatal is None:
            return 0
        # Last on stderr, where sagemaker-local takes an endpoint's FailureReason from.
        print(f"model_server: {self._fatal}", file=sys.stderr, flush=True)
        return 1

    def request_stop(self) -> None:
        """Begin a graceful shutdown (SIGTERM)."""
        if self._stop is not None:
            self._stop.set()

    def _on_fatal(self, reason: str) -> None:
        self._fatal = reason
        self.request_stop()

    async def _shutdown(self, server: asyncio.Server) -> None:
        """Stop accepting, finish in-flight requests, close connections, stop the workers."""
        self.stopping = True
        server.close()
        for connection in list(self.connections):
            connection.close_when_idle()
        assert self._connections_closed is not None
        if self.connections:
            self._connections_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._connections_closed.wait(), timeout=self.config.graceful_timeout_s
                )
        for connection in list(self.connections):
            connection.abort()
        if self.pool is not None:
            await self.pool.stop()
        for item in self.queue.drain():
            item.future.cancel()
        log.info("stopped")

    def connection_closed(self, connection: HttpConnection) -> None:
        """Forget a closed connection; wake the shutdown when it was the last one."""
        self.connections.discard(connection)
        if not self.connections and self._connections_closed is not None:
            self._connections_closed.set()

    # --- routes -------------------------------------------------------------------------------

    def refusal(self, head: RequestHead) -> tuple[int, str] | None:
        """Browser safety (`services.browser_guard`): foreign Origin or Host -> 403."""
        if browser_refusal is None:  # in SageMaker's network no browser reaches the container
            return None
        headers = head.headers
        if not self.config.check_host:
            # In the SageMaker container the platform's Host is not ours to predict.
            headers = {k: v for k, v in headers.items() if k != "host"}
        return browser_refusal(head.method, head.path, headers, (self.config.host,))

    @property
    def ready(self) -> bool:
        """Every worker has loaded the model once: invocations are queued from now on."""
        return self.pool is not None and self.pool.ready and not self.stopping

    def ping(self) -> InvocationResult:
        """200 while a worker is ready; 503 while loading, restarting or stopping."""
        if self.ready and self.pool is not None and self.pool.serving:
            return InvocationResult(200, b'{"status": "Healthy"}\n', DEFAULT_ACCEPT)
        return InvocationResult(503, b'{"status": "Unhealthy"}\n', DEFAULT_ACCEPT)

    def execution_parameters(self) -> InvocationResult:
        """What SageMaker batch transform asks the container for."""
        body = json.dumps(
            {
                "MaxConcurrentTransforms": self.config.workers * self.config.max_batch_size,
                "BatchStrategy": "MULTI_RECORD",
                "MaxPayloadInMB": self.config.max_payload_bytes // (1024 * 1024),
            }
        )
        return InvocationResult(200, body.encode(), DEFAULT_ACCEPT)

    def invoke(self, head: RequestHead, body: bytes) -> asyncio.Future[InvocationResult]:
        """Queue an invocation from its HTTP request."""
        return self.submit(
            body,
            _media_type(head.headers.get("content-type")) or DEFAULT_ACCEPT,
            _choose_accept(head.headers.get("accept")),
        )

    def submit(
        self, body: bytes, content_type: str, accept: str
    ) -> asyncio.Future[InvocationResult]:
        """Queue one invocation for the workers."""
        future: asyncio.Future[InvocationResult] = asyncio.get_running_loop().create_future()
        if content_type not in self.content_types:
            self.metrics.record_error("unsupported_media_type")
            supported = ", ".join(sorted(self.content_types))
            future.set_result(
                error_result(
                    415, f"unsupported content type {content_type}; use one of {supported}"
                )
            )
            return future
        if not self.ready:
            self.metrics.record_error("not_ready")
            reason = "the server is shutting down" if self.stopping else "the model is loading"
            future.set_result(error_result(503, reason))
            return future
        if len(self.queue) >= self.config.max_queue:
            # Back-pressure: a bounded wait, and a retryable answer beyond it.
            self.metrics.record_error("overloaded")
            future.set_result(
                error_result(503, f"the server is overloaded ({len(self.queue)} queued)")
            )
            return future
        self.metrics.in_flight += 1
        future.add_done_callback(self._invocation_done)
        self.queue.put(PendingInvocation(body, content_type, accept, future))
        self.metrics.queue_depth = len(self.queue)
        return future

    def _invocation_done(self, future: asyncio.Future[InvocationResult]) -> None:
        self.metrics.in_flight -= 1
        if future.cancelled():
            return
        status = future.result().status
        if status >= 400:
            self.metrics.record_error(_error_reason(status))


def _error_reason(status: int) -> str:
    return {
        400: "bad_request",
        413: "payload_too_large",
        415: "unsupported_media_type",
        503: "not_ready",
        504: "timeout",
    }.get(status, "client_error" if status < 500 else "model_error")


def _media_type(value: str | None) -> str | None:
    if not value:
        return None
    return value.split(";", 1)[0].strip().lower() or None


def _choose_accept(value: str | None) -> str:
    """The first concrete media type the client accepts; application/json for none or */*."""
    if value:
        for part in value.split(","):
            media, _, params = part.partition(";")
            media = media.strip().lower()
            if media and media != "*/*":
                # JSON Lines parameters reach output_fn: `verbose=true` of the built-in algorithms
                if media == "application/jsonlines" and params.strip():
                    return f"{media}; {params.strip().lower()}"
                return media
    return DEFAULT_ACCEPT


def serve(config: ServerConfig) -> int:
    """Run the model server until it is stopped; the process exit code."""
    logging.basicConfig(
        level=os.environ.get("MODEL_SERVER_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s model_server[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    return asyncio.run(ModelServer(config).run())
