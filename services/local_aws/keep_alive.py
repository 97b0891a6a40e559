"""HTTP/1.1 keep-alive for the emulator's connections (werkzeug closes every one).

werkzeug's development server ends every response with `Connection: close`, so each request a
client made to the emulator opened a TCP connection and a server thread and tore both down
again: 35-40 % of the emulator's CPU for a small request (profiled: accept, thread start,
stream set-up, close), and as much again in the client (botocore's new connection per call).

werkzeug closes because `http.server` cannot tell where an unread request body ends; after a
response it even reads whatever else the client sent, which on a kept-alive connection would
be the next request. Here a request with a `Content-Length` (or none) is read through a stream
limited to that length; after the response what the application left unread is read and
dropped (up to `DRAIN_LIMIT_BYTES`, else the connection closes), and werkzeug's own after-read
finds nothing left to take. A chunked request body, a client asking `Connection: close`,
HTTP/1.0, or a response werkzeug could not finish close the connection as before. An idle
kept-alive connection is closed after `IDLE_TIMEOUT_S` (its thread with it).
"""

from __future__ import annotations

import selectors
import threading
from typing import Any, ClassVar

DRAIN_LIMIT_BYTES = 1 << 20
IDLE_TIMEOUT_S = 60.0

_draining = threading.local()


class KeepAlive:
    """Mixin for a werkzeug `WSGIRequestHandler` (first in the bases): connections kept open."""

    protocol_version = "HTTP/1.1"
    # The socket's timeout: an idle kept-alive connection (and its thread) ends with it.
    timeout: ClassVar[float | None] = IDLE_TIMEOUT_S
    close_connection: bool
    headers: Any
    request_version: str
    rfile: Any

    def make_environ(self) -> Any:
        environ = super().make_environ()  # type: ignore[misc]
        self._body = None
        if self._may_keep_alive(environ):
            from werkzeug.wsgi import LimitedStream

            length = int(environ.get("CONTENT_LENGTH") or 0)
            self._body = environ["wsgi.input"] = LimitedStream(self.rfile, length)
        else:
            self.close_connection = True
        return environ

    def _may_keep_alive(self, environ: dict[str, Any]) -> bool:
        if self.close_connection or self.request_version != "HTTP/1.1":
            return False
        if environ.get("wsgi.input_terminated"):  # chunked: its end is the body's to find
            return False
        length = str(environ.get("CONTENT_LENGTH") or "0")
        return length.isdigit()

    def send_header(self, keyword: str, value: str) -> None:
        if (
            keyword.lower() == "connection"
            and value.lower() == "close"
            and getattr(self, "_body", None) is not None
        ):
            return  # werkzeug's unconditional close: this connection stays open
        super().send_header(keyword, value)  # type: ignore[misc]

    def run_wsgi(self) -> None:
        _draining.handler = self
        try:
            super().run_wsgi()  # type: ignore[misc]
        finally:
            _draining.handler = None

    def log_error(self, format: str, *args: Any) -> None:
        if format.startswith("Request timed out"):
            return  # an idle kept-alive connection closing: nothing went wrong
        super().log_error(format, *args)  # type: ignore[misc]

    def drain(self) -> None:
        """Read and drop what the application left of this request's body."""
        body = getattr(self, "_body", None)
        if body is None:
            return
        if body.limit - body.tell() > DRAIN_LIMIT_BYTES:
            self.close_connection = True  # not worth reading: the client reconnects
            return
        body.exhaust()


class _AfterResponseSelector:
    """What werkzeug's after-response read gets on a kept-alive connection: the unread rest of
    this request's body is dropped by length, and nothing further is read."""

    def __init__(self, handler: KeepAlive) -> None:
        self._handler = handler

    def register(self, *args: Any, **kwargs: Any) -> None:
        self._handler.drain()

    def select(self, timeout: float | None = None) -> list[Any]:
        return []

    def close(self) -> None:
        pass


class _Selectors:
    """`selectors` as werkzeug.serving sees it (it uses it only for its after-response read)."""

    EVENT_READ = selectors.EVENT_READ
    EVENT_WRITE = selectors.EVENT_WRITE

    @staticmethod
    def DefaultSelector() -> Any:
        handler = getattr(_draining, "handler", None)
        if handler is not None and getattr(handler, "_body", None) is not None:
            return _AfterResponseSelector(handler)
        return selectors.DefaultSelector()


def install() -> None:
    """Give werkzeug.serving the selector above (idempotent)."""
    import werkzeug.serving

    werkzeug.serving.selectors = _Selectors  # type: ignore[assignment]
