"""The Runtime API server an environment's runtime talks to (`lambda_runtime_api.RuntimeApi`),
driven as the worker drives it: requests read and answered by the calling thread, over one
kept-alive connection, a closed connection replaced by the next, and close() waking a waiter."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from services.local_aws.lambda_runtime_api import NEXT_PATH, Closed, RuntimeApi


@pytest.fixture
def api() -> Iterator[RuntimeApi]:
    server = RuntimeApi()
    try:
        yield server
    finally:
        server.close()


def _soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def _client(api: RuntimeApi) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(api.address, timeout=5)


def test_requests_on_one_connection_are_read_and_answered_in_turn(api: RuntimeApi) -> None:
    client = _client(api)
    answers: list[tuple[int, bytes, str | None]] = []

    def runtime() -> None:
        for method, path, body in (("GET", NEXT_PATH, None), ("POST", "/x/response", b'{"a":1}')):
            client.request(method, path, body=body)
            answer = client.getresponse()
            answers.append(
                (answer.status, answer.read(), answer.getheader("Lambda-Runtime-Aws-Request-Id"))
            )

    thread = threading.Thread(target=runtime)
    thread.start()
    first = api.next_request(_soon())
    assert first is not None and first.is_next and first.body == b""
    api.reply(200, b'{"event":1}', {"Lambda-Runtime-Aws-Request-Id": "r1"})
    second = api.next_request(_soon())
    assert second is not None and (second.method, second.path, second.body) == (
        "POST",
        "/x/response",
        b'{"a":1}',
    )
    api.reply(202, b"{}")
    thread.join(5)
    assert answers == [(200, b'{"event":1}', "r1"), (202, b"{}", None)]
    assert client.sock is not None  # one connection, kept alive throughout
    client.close()


def test_a_closed_connection_is_replaced_by_the_next_one(api: RuntimeApi) -> None:
    # The Python client posts /init/error on a connection of its own and closes it.
    for path in ("/first", "/second"):
        client = _client(api)
        client.request("POST", path, body=b"x", headers={"Connection": "close"})
        request = api.next_request(_soon())
        assert request is not None and request.path == path
        api.reply(202)
        assert client.getresponse().status == 202
        client.close()


def test_expect_continue_and_malformed_requests(api: RuntimeApi) -> None:
    host, port = api.address.split(":")
    raw = socket.create_connection((host, int(port)))
    raw.sendall(b"POST /big HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")

    def send_body() -> None:
        assert raw.recv(64).startswith(b"HTTP/1.1 100 Continue")
        raw.sendall(b"abc")

    thread = threading.Thread(target=send_body)
    thread.start()
    request = api.next_request(_soon())
    thread.join(5)
    assert request is not None and request.body == b"abc"
    # Header names in any case; a second request on the connection after the first.
    raw.sendall(b"POST /small HTTP/1.1\r\ncontent-LENGTH: 2\r\n\r\nhi")
    request = api.next_request(_soon())
    assert request is not None and (request.path, request.body) == ("/small", b"hi")
    # A request that is not HTTP drops its connection; the next connection is served.
    raw.sendall(b"garbage\r\n\r\n")
    good = _client(api)
    good.request("GET", NEXT_PATH)
    request = api.next_request(_soon())
    assert request is not None and request.is_next
    raw.close()
    good.close()


def test_a_deadline_returns_none_and_close_wakes_a_waiter(api: RuntimeApi) -> None:
    assert api.next_request(time.monotonic() + 0.05) is None  # nobody connected in time
    woken: list[BaseException] = []

    def wait() -> None:
        try:
            api.next_request(_soon(30))
        except Closed as closed:
            woken.append(closed)

    thread = threading.Thread(target=wait)
    thread.start()
    api.close()  # e.g. the environment's process exited
    thread.join(5)
    assert not thread.is_alive() and len(woken) == 1
    with pytest.raises(Closed):
        api.next_request(_soon())


def test_too_many_header_fields_drop_the_connection(api: RuntimeApi) -> None:
    host, port = api.address.split(":")
    raw = socket.create_connection((host, int(port)))
    raw.sendall(b"GET /x HTTP/1.1\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n")
    assert api.next_request(time.monotonic() + 0.5) is None  # dropped, nothing else came
    assert raw.recv(16) == b""  # closed by the server
    raw.close()
