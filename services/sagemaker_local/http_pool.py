"""A keep-alive HTTP/1.1 client pool on asyncio streams, for the InvokeEndpoint proxy.

A few lines of HTTP rather than a general-purpose client: the proxy is the hot path, and a full
client costs more than the model's forward pass on a small CNN.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


class _StaleConnection(Exception):
    """A kept-alive connection the server closed before answering: safe to retry once."""


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def close(self) -> None:
        self.writer.close()


class ConnectionPool:
    """Keep-alive HTTP/1.1 connections to the local model servers."""

    def __init__(self, max_idle_per_server: int = 256) -> None:
        self.max_idle_per_server = max_idle_per_server
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    async def post(
        self, host: str, port: int, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        """POST and read the whole answer: (status, lower-cased headers, body)."""
        head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        request = head.encode("latin-1")
        for attempt in range(2):
            conn, reused = await self._acquire(host, port)
            try:
                conn.writer.write(request + body if len(body) < 65536 else request)
                if len(body) >= 65536:
                    conn.writer.write(body)
                status, answer_headers, answer, keep_alive = await _read_response(conn.reader)
            except (_StaleConnection, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if reused and attempt == 0:
                    continue
                raise ConnectionError(f"the model server closed the connection ({exc})") from exc
            except BaseException:
                conn.close()  # cancelled or failed mid-answer: the connection is unusable
                raise
            if keep_alive:
                self._release(host, port, conn)
            else:
                conn.close()
            return status, answer_headers, answer
        raise ConnectionError("unreachable")

    async def _acquire(self, host: str, port: int) -> tuple[_Connection, bool]:
        idle = self._idle.get((host, port))
        while idle:
            conn = idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn, True
            conn.close()
        reader, writer = await asyncio.open_connection(host, port)
        return _Connection(reader, writer), False

    def _release(self, host: str, port: int, conn: _Connection) -> None:
        idle = self._idle.setdefault((host, port), [])
        if len(idle) < self.max_idle_per_server:
            idle.append(conn)
        else:
            conn.close()

    def forget(self, host: str, port: int) -> None:
        """Close the idle connections to a server that stops."""
        for conn in self._idle.pop((host, port), []):
            conn.close()

    def close(self) -> None:
        """Close every idle connection."""
        for key in list(self._idle):
            self.forget(*key)


async def _read_response(
    reader: asyncio.StreamReader,
) -> tuple[int, dict[str, str], bytes, bool]:
    status_line = await reader.readline()
    if not status_line:
        raise _StaleConnection("closed before the status line")
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise ConnectionError(f"malformed status line {status_line[:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    keep_alive = headers.get("connection", "").lower() != "close" and parts[0] == b"HTTP/1.1"
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readline()).split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(chunks)
    else:
        body = await reader.read()
        keep_alive = False
    return status, headers, body, keep_alive
