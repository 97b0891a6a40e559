"""A kill -9 of the emulator cuts no response in half: each leaves in one send.

werkzeug sent headers and body separately; a SIGKILL between the two gave clients a 200 with no
body, which botocore parses as an empty answer (StartExecution without `executionArn`).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from services.local_aws import server, whole_responses
from services.local_aws.whole_responses import WholeResponses


class RecordingHandler(WholeResponses, WSGIRequestHandler):
    """The mixin on werkzeug's own handler, recording each send."""

    sends: ClassVar[list[bytes]] = []

    def send_whole(self, data: bytes) -> None:
        RecordingHandler.sends.append(data)
        super().send_whole(data)


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    received = environ["wsgi.input"].read(length) if length else b""
    body = json.dumps({"executionArn": "arn:x", "received": len(received)}).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


@pytest.fixture
def served() -> Iterator[BaseWSGIServer]:
    RecordingHandler.sends = []
    httpd = make_server("127.0.0.1", 0, _app, request_handler=RecordingHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        thread.join(timeout=10)
        httpd.server_close()


def _receive_all(connection: socket.socket) -> bytes:
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    return data


def _status_line(response: bytes) -> bytes:
    return response.split(b"\r\n", 1)[0].split(b" ", 1)[1]


def test_status_headers_and_body_leave_in_one_send(served: BaseWSGIServer) -> None:
    port = served.server_address[1]
    body = b'{"stateMachineArn": "arn:m"}'
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-amz-json-1.0\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        answer = _receive_all(connection)
    (sent,) = RecordingHandler.sends
    assert sent == answer
    assert _status_line(sent) == b"200 OK"
    assert sent.endswith(json.dumps({"executionArn": "arn:x", "received": len(body)}).encode())


def test_100_continue_is_sent_before_the_body_is_read(served: BaseWSGIServer) -> None:
    port = served.server_address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(
            b"PUT /b/k HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        interim = connection.recv(65536)  # the client waits for this before sending the body
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        connection.sendall(b"hello")
        answer = _receive_all(connection)
    assert RecordingHandler.sends == [interim, answer]
    assert _status_line(answer) == b"200 OK" and answer.endswith(b'"received": 5}')


def test_a_large_body_is_sent_without_a_joined_copy() -> None:
    sent: list[bytes] = []
    writer = whole_responses.WholeResponseWriter(sent.append)
    big = b"x" * (whole_responses.WHOLE_LIMIT_BYTES + 1)
    writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
    writer.write(big)
    writer.flush()
    writer.write(b"small")
    writer.close()
    assert [len(s) for s in sent] == [19, len(big), 5]
    assert writer.closed


def test_the_emulator_serves_every_request_with_whole_responses() -> None:
    assert issubclass(server._LazyMotoHandler, WholeResponses)
    from moto.moto_server.werkzeug_app import MotoRequestHandler

    handler = whole_responses.moto_handler()
    assert issubclass(handler, WholeResponses) and issubclass(handler, MotoRequestHandler)
