"""The Lambda Runtime API (next / response / error / init error) one worker's runtime talks to.

It has no thread of its own: whichever thread drives the environment (an invocation, or the wait
for a provisioned environment's init) reads the runtime's requests from the connection and
answers them itself. A warm invocation then crosses no thread: the runtime's `/next` is already
waiting in the socket when the invocation comes, the invoking thread answers it with the event,
reads the `/response` and acknowledges it. A cold one waits in `accept` for the runtime's first
connection. The runtime keeps one connection open (its native client reuses it); a closed one
is replaced by the next `accept` (the Python client's `/init/error` opens its own).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import BinaryIO

RUNTIME_API_PREFIX = "/2018-06-01/runtime"
NEXT_PATH = f"{RUNTIME_API_PREFIX}/invocation/next"
_MAX_LINE = 65536
_MAX_HEADERS = 100
# Lambda's own limit on a synchronous response is 6 MB; well above it the request is refused.
MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass
class Invocation:
    """One invocation as the Runtime API hands it over and records its answer."""

    request_id: str
    payload: bytes
    timeout_s: float
    client_context: str | None = None
    fetched_at: float = 0.0  # monotonic time the runtime received it (0: never)
    result: bytes | None = None
    error: bytes | None = None


@dataclass
class Request:
    """One HTTP request from the runtime."""

    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    @property
    def is_next(self) -> bool:
        """Whether it is the long poll for the next invocation."""
        return self.method == "GET" and self.path == NEXT_PATH


class Closed(Exception):
    """The API was closed: the environment is stopping or its process exited."""


def error_payload(error_type: str, message: str) -> bytes:
    """An error body in the Runtime API's (and Invoke's) shape."""
    return json.dumps({"errorType": error_type, "errorMessage": message}).encode()


class RuntimeApi:
    """The listening socket of one environment's Runtime API and its current connection."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=8)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._conn: socket.socket | None = None
        self._rfile: BinaryIO | None = None
        self._closed = False
        self._lock = threading.Lock()  # between a driving thread taking a connection and close

    def next_request(self, deadline: float) -> Request | None:
        """The runtime's next request (accepting a connection first if none is open); None when
        the monotonic `deadline` passes first. Raises Closed once the API is closed."""
        while True:
            if self._closed:
                raise Closed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                if self._conn is None:
                    self._accept(remaining)
                assert self._conn is not None and self._rfile is not None
                self._conn.settimeout(remaining)
                request = self._read(self._conn, self._rfile)
            except TimeoutError:
                # Mid-request the stream cannot be resumed; a timed-out environment stops anyway.
                self._drop()
                return None
            except (OSError, ValueError):
                if self._closed:
                    raise Closed from None
                self._drop()  # a broken or malformed connection: the runtime may open another
                continue
            if request is None:  # the runtime closed this connection
                self._drop()
                continue
            return request

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """Answer the request last read (one write: no delayed-ACK wait between head and body)."""
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        conn = self._conn
        if conn is None:
            return
        try:
            conn.sendall(head + body)
        except OSError:  # the runtime is gone; its exit closes the API
            self._drop()

    def close(self) -> None:
        """Close the API; wakes a thread blocked in accept or read (idempotent)."""
        with self._lock:
            self._closed = True
            sockets = [s for s in (self._listener, self._conn) if s is not None]
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, timeout_s: float) -> None:
        self._listener.settimeout(timeout_s)
        conn, _ = self._listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._closed:
                conn.close()
                raise Closed
            self._conn, self._rfile = conn, conn.makefile("rb")

    def _drop(self) -> None:
        with self._lock:
            conn, self._conn, self._rfile = self._conn, None, None
        if conn is not None:
            conn.close()

    def _read(self, conn: socket.socket, rfile: BinaryIO) -> Request | None:
        """One request; None at a clean end of the connection; ValueError when malformed."""
        line = rfile.readline(_MAX_LINE + 1)
        if not line:
            return None
        parts = line.decode("latin-1").split()
        if len(line) > _MAX_LINE or len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise ValueError(f"not an HTTP request line: {line[:80]!r}")
        method, path, _ = parts
        headers = _read_headers(rfile)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise ValueError("chunked request bodies are not supported")
        length = int(headers.get("content-length") or 0)
        if not 0 <= length <= MAX_BODY_BYTES:
            raise ValueError(f"Content-Length {length} out of range")
        if length and headers.get("expect", "").lower() == "100-continue":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = rfile.read(length) if length else b""
        if len(body) < length:
            return None
        return Request(method, path, headers, body)


def _read_headers(rfile: BinaryIO) -> dict[str, str]:
    """The header fields up to the blank line (names in lower case). Not `http.client`'s parser:
    it goes through the email package, ~10x the cost, twice per invocation."""
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS + 1):
        line = rfile.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise ValueError("header line too long")
        if line in (b"\r\n", b"\n"):
            return headers
        if not line:
            raise ValueError("the connection closed inside a request's header")
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not name.strip():
            raise ValueError(f"not a header line: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    raise ValueError(f"more than {_MAX_HEADERS} header fields")
