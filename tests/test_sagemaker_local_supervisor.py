"""model_server_supervisor: a dead model server is replaced; callers see only retryable errors."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import threading
import time
import uuid
from typing import Any

import boto3
from botocore.exceptions import ClientError

from scones.testing_processes import alive as pid_alive
from tests.sagemaker_local_harness import (
    INFERENCE_PY,
    WAIT,
    SageMakerLocal,
    no_retry_runtime,
    png_bytes,
    serving_endpoint,
    sm,
    tar_gz,
    wait_for,
)

# The harness's fixtures (a sagemaker-local process, a bucket, tiny models), by name.
pytest_plugins = ["tests.sagemaker_local_harness"]


def test_a_killed_model_server_is_replaced_and_callers_only_see_retryable_errors(
    sagemaker_local: SageMakerLocal, tiny_model: dict[str, Any]
) -> None:
    client, rt, body = sm(), no_retry_runtime(), png_bytes(4)
    name, before = _served_then_killed(sagemaker_local, tiny_model["uri"], "ep-super", body)
    killed = time.monotonic()
    codes: list[str] = []
    statuses: set[str] = set()
    while True:
        statuses.add(client.describe_endpoint(EndpointName=name)["EndpointStatus"])
        try:
            rt.invoke_endpoint(EndpointName=name, Body=body, ContentType="image/png")
        except ClientError as exc:
            codes.append(exc.response["Error"]["Code"])
            assert time.monotonic() - killed < 90, "the model server was not replaced"
            continue
        if time.monotonic() - killed > 0.2 or codes:
            break
    back = time.monotonic() - killed
    after = sagemaker_local.server(name)
    print(f"model server replaced; first good answer {back:.2f} s after the kill; {codes=}")
    assert set(codes) <= {"ServiceUnavailable"}, "a crash must never come back as ModelError"
    assert after["pid"] != before["pid"] and after["alive"] and not after["restarting"]
    assert sagemaker_local.health()["modelServerRestarts"] >= 1
    assert statuses <= {"InService", "SystemUpdating"}
    assert client.describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"
    client.delete_endpoint(EndpointName=name)


def test_status_is_system_updating_while_the_server_is_replaced(
    sagemaker_local: SageMakerLocal, tiny_model: dict[str, Any]
) -> None:
    name = serving_endpoint("ep-status", tiny_model["uri"])
    client = sm()
    pid = sagemaker_local.server(name)["pid"]
    os.killpg(pid, signal.SIGKILL)
    wait_for(
        lambda: sagemaker_local.health()["endpoints"][name]["status"] == "SystemUpdating",
        "SystemUpdating while replacing",
    )
    client.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
    client.delete_endpoint(EndpointName=name)


CRASHING_INFERENCE_PY = INFERENCE_PY.replace(
    "def input_fn(body, content_type):\n",
    "def input_fn(body, content_type):\n    if body == b'crash':\n        import os\n"
    "        os._exit(17)\n",
)


def test_a_worker_crash_mid_request_is_a_retryable_503_never_a_model_error(
    sagemaker_local: SageMakerLocal, bucket: str, tiny_model: dict[str, Any]
) -> None:
    assert "os._exit(17)" in CRASHING_INFERENCE_PY
    weights = (tiny_model["dir"] / "model.pth").read_bytes()
    archive = tar_gz({"model.pth": weights, "code/inference.py": CRASHING_INFERENCE_PY.encode()})
    key = f"models/crashing-{uuid.uuid4().hex[:6]}/model.tar.gz"
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=archive)
    name = serving_endpoint("ep-crash", f"s3://{bucket}/{key}")
    client = sm()
    rt = no_retry_runtime()
    try:
        rt.invoke_endpoint(EndpointName=name, Body=b"crash", ContentType="image/png")
        raise AssertionError("a crashed worker cannot have answered")
    except ClientError as exc:
        error = exc.response["Error"]
        assert error["Code"] == "ServiceUnavailable", exc.response
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert "exited unexpectedly" in error["Message"]
    # The model server replaced its worker itself: the same endpoint answers again.
    answer = wait_for(
        lambda: _invoke_or_none(rt, name),
        "the replacement worker",
    )
    assert len(answer[0]) == 3
    client.delete_endpoint(EndpointName=name)


def _invoke_or_none(rt: Any, name: str) -> Any:
    try:
        response = rt.invoke_endpoint(EndpointName=name, Body=png_bytes(2), ContentType="image/png")
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "ServiceUnavailable", exc.response
        return None
    return json.loads(response["Body"].read())


def _served_then_killed(
    sagemaker_local: SageMakerLocal, model_uri: str, prefix: str, body: bytes
) -> tuple[str, dict[str, Any]]:
    """A new endpoint that answered `body`, then its model server SIGKILLed: name, server before."""
    name = serving_endpoint(prefix, model_uri)
    assert no_retry_runtime().invoke_endpoint(EndpointName=name, Body=body, ContentType="image/png")
    before = sagemaker_local.server(name)
    os.killpg(before["pid"], signal.SIGKILL)
    return name, before


def _impostor(port: int, stop: threading.Event) -> socket.socket:
    """A server on port that answers every request 200 "WRONG MODEL" (another endpoint's)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    listener.settimeout(0.2)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                    body = b'"WRONG MODEL"'
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                        + body
                    )
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return listener


def test_a_dead_servers_port_taken_by_another_process_never_gets_the_traffic(
    sagemaker_local: SageMakerLocal, tiny_model: dict[str, Any]
) -> None:
    client, rt = sm(), no_retry_runtime()
    name, before = _served_then_killed(sagemaker_local, tiny_model["uri"], "ep-port", png_bytes(5))
    wait_for(lambda: not pid_alive(before["pid"]), "the model server to die")
    stop = threading.Event()
    try:
        listener = _impostor(before["port"], stop)
    except OSError as exc:
        # Another process (a Lambda runtime, another endpoint) took the freed port first: the
        # very case under test, only without our impostor to detect misrouted traffic.
        assert exc.errno == errno.EADDRINUSE, exc
        answer = wait_for(lambda: _invoke_or_none(rt, name), "the replacement server")
        assert answer is not None
        after = sagemaker_local.server(name)
        assert after["port"] != before["port"]
        client.delete_endpoint(EndpointName=name)
        return
    try:
        answers = []
        while True:
            try:
                response = rt.invoke_endpoint(
                    EndpointName=name, Body=png_bytes(5), ContentType="image/png"
                )
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == "ServiceUnavailable", exc.response
                continue
            answers.append(json.loads(response["Body"].read()))
            break
        assert answers != ["WRONG MODEL"], "traffic went to whoever holds the dead server's port"
        after = sagemaker_local.server(name)
        assert after["port"] != before["port"]
    finally:
        stop.set()
        listener.close()
    client.delete_endpoint(EndpointName=name)
