"""The emulator keeps HTTP/1.1 connections open, and an unread body never becomes a request."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scones.testing import LocalAws, running_local_aws

HEALTH = "/_local_aws/health"
# A SigV4 header naming S3: moto's dispatcher routes the request by it (unchecked locally).
S3_AUTH = (
    "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, "
    "SignedHeaders=host, Signature=0"
)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAws]:
    with running_local_aws(Path(tmp_path_factory.mktemp("keep-alive")), ["--preload"]) as aws:
        yield aws


@dataclass
class Answer:
    status: int
    version: int
    connection: str | None
    body: bytes


def answer_of(connection: http.client.HTTPConnection) -> Answer:
    """The whole answer read, so that the connection can carry the next request."""
    answer = connection.getresponse()
    return Answer(answer.status, answer.version, answer.getheader("Connection"), answer.read())


def _connection(emulator: LocalAws) -> http.client.HTTPConnection:
    host, port = emulator.endpoint_url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=10)


def _local_port(connection: http.client.HTTPConnection) -> int:
    assert connection.sock is not None
    return int(connection.sock.getsockname()[1])


def test_requests_share_one_connection(emulator: LocalAws) -> None:
    connection = _connection(emulator)
    ports = []
    for _ in range(3):
        connection.request("GET", "/", headers={"Authorization": S3_AUTH})
        answer = answer_of(connection)
        assert answer.status == 200 and answer.version == 11
        assert answer.connection is None
        ports.append(_local_port(connection))
    assert len(set(ports)) == 1, "the client never had to reconnect"


def test_a_body_the_application_never_reads_is_dropped_not_parsed(emulator: LocalAws) -> None:
    connection = _connection(emulator)
    # The health check does not read its body; werkzeug must not take it for the next request.
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    connection.request("POST", HEALTH, body=smuggled)
    assert json.loads(answer_of(connection).body)["status"] == "running"
    connection.request("GET", HEALTH)
    second = answer_of(connection)
    assert second.status == 200 and json.loads(second.body)["status"] == "running"


@pytest.mark.parametrize("closing", ["client asks", "HTTP/1.0", "chunked body"])
def test_the_connection_closes_when_it_cannot_be_kept(emulator: LocalAws, closing: str) -> None:
    host, port = emulator.endpoint_url.removeprefix("http://").split(":")
    request = {
        "client asks": b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n",
        "HTTP/1.0": b"GET %s HTTP/1.0\r\nHost: %s\r\n\r\n",
        "chunked body": b"POST %s HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
    }[closing] % (HEALTH.encode(), f"{host}:{port}".encode())
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(request)
        received = b""
        while chunk := raw.recv(65536):  # ends only when the server closes the connection
            received += chunk
    assert received.split(b"\r\n", 1)[0].endswith(b"200 OK")
    assert b'"status": "running"' in received
