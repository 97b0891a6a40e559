"""The Lambda Runtime API (next / response / error / init error) one worker's runtime polls.

`awslambdaric` in the worker long-polls `invocation/next` and posts the handler's result back;
the server hands those calls to its `Worker` (`lambda_worker`).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .lambda_worker import Worker

RUNTIME_API_PREFIX = "/2018-06-01/runtime"


@dataclass
class Invocation:
    request_id: str
    payload: bytes
    timeout_s: float
    client_context: str | None = None
    fetched: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    fetched_at: float = 0.0
    result: bytes | None = None
    error: bytes | None = None


def error_payload(error_type: str, message: str) -> bytes:
    return json.dumps({"errorType": error_type, "errorMessage": message}).encode()


class _RuntimeApiHandler(BaseHTTPRequestHandler):
    """The Lambda Runtime API (next / response / error / init error) for one worker."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without this, delayed ACKs add ~40 ms.
    disable_nagle_algorithm = True
    server: RuntimeApiServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        if self.path != f"{RUNTIME_API_PREFIX}/invocation/next":
            self._reply(404, b'{"errorType":"NotFound"}')
            return
        worker = self.server.worker
        invocation = worker.next_invocation()
        if invocation is None:  # the worker is being stopped
            self._reply(410, b'{"errorType":"Gone"}')
            return
        deadline_ms = int((time.time() + invocation.timeout_s) * 1000)
        headers = {
            "Content-Type": "application/json",
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": worker.spec.function_arn,
            "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}",
        }
        if invocation.client_context:
            headers["Lambda-Runtime-Client-Context"] = invocation.client_context
        self._reply(200, invocation.payload, headers)

    def do_POST(self) -> None:
        body = self._body()
        parts = self.path[len(RUNTIME_API_PREFIX) :].strip("/").split("/")
        worker = self.server.worker
        if parts == ["init", "error"]:
            worker.init_error = body or error_payload("Runtime.Unknown", "init failed")
            self._reply(202, b'{"status":"OK"}')
            return
        if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
            accepted = worker.complete(parts[1], body, is_error=parts[2] == "error")
            status = 202 if accepted else 400
            self._reply(status, b'{"status":"OK"}' if accepted else b'{"errorType":"InvalidId"}')
            return
        self._reply(404, b'{"errorType":"NotFound"}')


class RuntimeApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        super().__init__(("127.0.0.1", 0), _RuntimeApiHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A worker killed during its long poll resets the connection: expected, not news.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)
