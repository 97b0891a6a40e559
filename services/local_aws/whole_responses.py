"""Each HTTP response of the emulator leaves in one send: a kill -9 cuts none in half.

werkzeug writes a response's status line and headers, then its body, in separate sends. A
SIGKILL between the two left clients a 200 with its Content-Length and no body, and botocore
(which does not enforce Content-Length, `httpsession.py`) parsed that as an empty answer: the
fault run saw StartExecution answered without `executionArn` and an empty DescribeExecution.

Here what werkzeug writes is kept until it flushes (after each body chunk) and then sent with
one `sendall`: once that returns the kernel delivers the whole response even if the process
dies, and before it nothing was sent, so the client sees a connection error and retries.
Responses larger than `WHOLE_LIMIT_BYTES` (S3 objects) are sent in parts as before: botocore
checks the length of streamed bodies itself. A `100 Continue` is sent at once (the client
waits for it before sending the body).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

WHOLE_LIMIT_BYTES = 1 << 20


class WholeResponseWriter(io.BufferedIOBase):
    """A handler's `wfile`: what was written since the last flush goes out in one send."""

    def __init__(self, send: Callable[[bytes], Any]) -> None:
        super().__init__()
        self._send = send
        self._parts: list[bytes] = []
        self._size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._size += len(chunk)
        return len(chunk)

    def flush(self) -> None:
        parts, self._parts, size, self._size = self._parts, [], self._size, 0
        if not parts:
            return
        if size <= WHOLE_LIMIT_BYTES:
            self._send(b"".join(parts))
        else:  # not copied: a large body's length is checked by the client
            for part in parts:
                self._send(part)

    def close(self) -> None:
        if not self.closed:
            try:
                self.flush()
            finally:
                super().close()


class WholeResponses:
    """Mixin for a werkzeug `WSGIRequestHandler`: responses sent whole (see the module)."""

    connection: Any
    headers: Any
    wfile: Any

    def setup(self) -> None:
        super().setup()  # type: ignore[misc]
        self.wfile = WholeResponseWriter(self.send_whole)

    def send_whole(self, data: bytes) -> None:
        """One send of everything written since the last flush."""
        self.connection.sendall(data)

    def run_wsgi(self) -> None:
        if self.headers.get("Expect", "").lower().strip(" \t") == "100-continue":
            # werkzeug writes it without a flush: sent here, and not a second time there.
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.wfile.flush()
            del self.headers["Expect"]
        super().run_wsgi()  # type: ignore[misc]


_moto_handler: type | None = None


def moto_handler() -> type:
    """moto's request handler with whole responses, kept alive (imports moto: call once loaded)."""
    global _moto_handler
    if _moto_handler is None:
        from moto.moto_server.werkzeug_app import MotoRequestHandler

        from .keep_alive import KeepAlive

        _moto_handler = type(
            "WholeMotoRequestHandler", (KeepAlive, WholeResponses, MotoRequestHandler), {}
        )
    return _moto_handler
