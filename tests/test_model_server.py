"""The model server as SageMaker runs it: a real server process on a free port, a tiny model."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from services.model_server.__main__ import parse_config
from services.model_server.handler import InferenceRequest, ModelHandler
from tests.model_server_harness import (
    DEADLINE_S,
    Server,
    answers_queued_behind_a_held_worker,
    expected_probabilities,
    invoke,
    metric,
    png_bytes,
    process_gone,
    request,
    running_server,
    wait_until,
    write_model_dir,
)

MAX_PAYLOAD = 6_291_456


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, written once for the module."""
    torch.set_num_threads(1)
    return write_model_dir(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One shared server: one worker, batches of up to 8."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(model_dir, log_path, "--workers", "1", "--max-batch-size", "8") as s:
        yield s


# --- settings --------------------------------------------------------------------------------

SETTING_VARIABLES = [
    "SM_MODEL_DIR", "SAGEMAKER_BIND_TO_PORT", "MODEL_SERVER_PORT", "MODEL_SERVER_HOST",
    "SAGEMAKER_MODEL_SERVER_WORKERS", "MODEL_SERVER_WORKERS", "MODEL_SERVER_MAX_BATCH_SIZE",
]  # fmt: skip


def test_container_serve_binds_all_interfaces_on_8080_and_local_runs_bind_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in SETTING_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    container = parse_config(["serve"], container=True)  # as `docker run IMAGE serve` passes it
    assert (container.host, container.port) == ("0.0.0.0", 8080)
    assert container.model_dir == Path("/opt/ml/model")
    assert (container.workers, container.max_batch_size) == (1, 8)
    assert parse_config([]).host == "127.0.0.1"


def test_settings_come_from_sagemaker_variables_and_flags_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SM_MODEL_DIR", "/models/a")
    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", "9001")
    monkeypatch.setenv("MODEL_SERVER_WORKERS", "3")
    config = parse_config([])
    assert (config.model_dir, config.port, config.workers) == (Path("/models/a"), 9001, 3)
    config = parse_config(["--port", "9002", "--workers", "2", "--max-batch-delay-ms", "1.5"])
    assert (config.port, config.workers, config.max_batch_delay_ms) == (9002, 2, 1.5)


# --- the SageMaker contract --------------------------------------------------------------------


def test_png_and_jpeg_invocations_return_the_models_probabilities(
    server: Server, model_dir: Path
) -> None:
    image = png_bytes(1)
    for content_type, body in [
        ("image/png", image),
        ("application/x-image", image),
        ("image/jpeg", png_bytes(2, fmt="JPEG")),
    ]:
        status, headers, answer = invoke(server.port, body, content_type)
        assert status == 200, answer
        assert headers["content-type"] == "application/json"
        probabilities = json.loads(answer)
        assert np.allclose(probabilities, expected_probabilities(model_dir, body), atol=1e-5)
        assert abs(sum(probabilities[0]) - 1) < 1e-5


def test_accept_header_chooses_the_encoding(server: Server) -> None:
    status, headers, answer = invoke(server.port, png_bytes(3), accept="text/csv")
    assert status == 200
    assert headers["content-type"] == "text/csv"
    assert len(answer.decode().split(",")) == 3


def test_unsupported_content_type_is_415(server: Server) -> None:
    status, _, answer = invoke(server.port, b"hello", "text/plain")
    assert status == 415
    assert "text/plain" in json.loads(answer)["message"]


def test_decode_error_is_400_with_the_message_and_the_server_keeps_serving(
    server: Server,
) -> None:
    status, _, answer = invoke(server.port, b"definitely not a png")
    assert status == 400
    assert "cannot decode the image" in json.loads(answer)["message"]
    assert invoke(server.port, png_bytes(4))[0] == 200


def test_other_hook_errors_are_500_with_the_message(server: Server) -> None:
    status, _, answer = invoke(server.port, png_bytes(5), accept="application/x-boom")
    assert status == 500
    assert "output exploded on application/x-boom" in json.loads(answer)["message"]
    assert invoke(server.port, png_bytes(5))[0] == 200


def test_oversized_content_length_is_refused_before_the_body_is_sent(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_S) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            + f"Content-Length: {MAX_PAYLOAD + 1}\r\n\r\n".encode()
        )
        sock.settimeout(10)
        answer = sock.recv(65536)  # no body sent: only an early answer can arrive
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_oversized_bodies_get_413_and_the_server_keeps_serving(server: Server) -> None:
    status, _, answer = invoke(server.port, b"\0" * (MAX_PAYLOAD + 1))
    assert status == 413
    assert "6291456" in json.loads(answer)["message"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_S) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
        chunk = b"\0" * 1_048_576
        with contextlib.suppress(OSError):  # the server may stop reading once over the limit
            for _ in range(7):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        assert sock.recv(65536).startswith(b"HTTP/1.1 413 ")
    # A body of exactly the limit is accepted (and then refused by the model's input_fn).
    assert invoke(server.port, b"\0" * MAX_PAYLOAD)[0] == 400
    assert invoke(server.port, png_bytes(6))[0] == 200


def test_keep_alive_and_pipelined_requests_are_answered_in_order(server: Server) -> None:
    bodies = [png_bytes(10), b"broken", png_bytes(11)]
    wire = b"".join(
        b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
        for body in bodies
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_S) as sock:
        sock.sendall(wire)
        reader = sock.makefile("rb")
        statuses = []
        for _ in bodies:  # each answer is read off the one stream, in order
            status_line = reader.readline()
            headers = {}
            while (line := reader.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                headers[name.lower()] = value.strip()
            reader.read(int(headers["content-length"]))
            statuses.append(int(status_line.split()[1]))
    assert statuses == [200, 400, 200]


def test_unknown_route_is_404_and_metrics_are_prometheus_text(server: Server) -> None:
    assert request(server.port, "GET", "/nope")[0] == 404
    status, headers, text = request(server.port, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for family in [
        "model_server_requests_total",
        "model_server_errors_total",
        "model_server_request_duration_seconds",
        "model_server_batch_size",
    ]:
        assert f"# TYPE {family} " in text.decode()
    assert re.search(rb'model_server_requests_total\{path="/invocations",status="200"\} \d+', text)


# --- batching --------------------------------------------------------------------------------


def test_concurrent_requests_are_batched_and_answered_each_with_its_own_result(
    server: Server, model_dir: Path, tmp_path: Path
) -> None:
    images = [png_bytes(100 + i) for i in range(8)]
    batches_before = metric(server.port, "model_server_batch_size_count")
    singles_before = metric(server.port, 'model_server_batch_size_bucket{le="1"}')
    answers = answers_queued_behind_a_held_worker(server.port, tmp_path, images)
    for image, (status, _, body) in zip(images, answers, strict=True):
        assert status == 200
        assert np.allclose(json.loads(body), expected_probabilities(model_dir, image), atol=1e-5)
    # The held request was a batch of one; the 8 queued behind it went to the worker together.
    assert metric(server.port, "model_server_batch_size_count") == batches_before + 2
    assert metric(server.port, 'model_server_batch_size_bucket{le="1"}') == singles_before + 1
    assert metric(server.port, 'model_server_batch_size_bucket{le="4"}') < metric(
        server.port, 'model_server_batch_size_bucket{le="8"}'
    )


def test_a_batch_that_cannot_be_concatenated_is_predicted_request_by_request(
    server: Server, model_dir: Path, tmp_path: Path
) -> None:
    bodies = [png_bytes(200), png_bytes(201, size=16), b"garbage", png_bytes(202)]
    answers = answers_queued_behind_a_held_worker(server.port, tmp_path, bodies)
    assert [status for status, _, _ in answers] == [200, 200, 400, 200]
    for body, (_, _, answer) in zip(bodies, answers, strict=True):
        if body != b"garbage":
            assert np.allclose(json.loads(answer), expected_probabilities(model_dir, body), 1e-5)


def test_handler_runs_one_predict_for_a_batch_and_splits_it(model_dir: Path) -> None:
    handler = ModelHandler(model_dir)
    handler.load()
    calls = sys.modules["inference"].PREDICT_CALLS
    calls.clear()
    images = [png_bytes(300 + i) for i in range(5)]
    responses = handler.handle_batch([InferenceRequest(b, "image/png", "text/csv") for b in images])
    assert calls == [5]
    for image, response in zip(images, responses, strict=True):
        assert response.status == 200 and response.content_type == "text/csv"
        expected = expected_probabilities(model_dir, image)[0]
        assert np.allclose([float(v) for v in response.body.decode().split(",")], expected, 1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_default_hooks_serve_a_torchscript_model_on_json(tmp_path: Path) -> None:
    model = torch.jit.script(torch.nn.Linear(2, 1))
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.5)
    model.save(str(tmp_path / "model.pt"))
    handler = ModelHandler(tmp_path)  # no code/inference.py: every hook is a default
    handler.load()
    requests = [InferenceRequest(b"[[1, 2]]", "application/json", "application/json")] * 2
    requests.append(InferenceRequest(b"\x89PNG", "image/png", "application/json"))
    responses = handler.handle_batch(requests)
    assert [json.loads(r.body) for r in responses[:2]] == [[[3.5]], [[3.5]]]
    assert responses[2].status == 415


# --- workers: crashes, timeouts, load failures, shutdown ------------------------------------------


def test_a_crashed_worker_fails_its_request_and_is_restarted(server: Server) -> None:
    status, _, answer = invoke(server.port, b'{"crash": true}', "application/json")
    # A crash is not the request's fault: 503 (retryable), not 500 (issue 13 item 4).
    assert status == 503
    assert "exited unexpectedly (exit code 17)" in json.loads(answer)["message"]
    assert invoke(server.port, png_bytes(7))[0] == 200  # waits for the new worker
    assert metric(server.port, "model_server_worker_restarts_total") >= 1
    assert metric(server.port, "model_server_workers_ready") == 1
    assert server.ping_status() == 200


def test_a_worker_killed_while_idle_is_replaced_without_failing_a_request(
    server: Server, model_dir: Path
) -> None:
    assert invoke(server.port, png_bytes(12))[0] == 200
    pids = {int(p.name) for p in (model_dir / "pids").glob("*")} - {os.getpid()}  # in-process
    alive = [pid for pid in pids if not process_gone(pid)]
    assert len(alive) == 1
    restarts = metric(server.port, "model_server_worker_restarts_total")
    os.kill(alive[0], signal.SIGKILL)
    wait_until(lambda: process_gone(alive[0]), "the worker to be reaped")
    assert invoke(server.port, png_bytes(12))[0] == 200
    assert metric(server.port, "model_server_worker_restarts_total") == restarts + 1


@pytest.mark.slow
def test_a_hung_model_times_out_with_504_and_its_worker_is_replaced(
    model_dir: Path, tmp_path: Path
) -> None:
    with running_server(model_dir, tmp_path / "log", "--request-timeout", "1") as server:
        hang = json.dumps({"hold": str(tmp_path / "never")}).encode()
        status, _, answer = invoke(server.port, hang, "application/json")
        assert status == 504
        assert "did not answer within 1 s" in json.loads(answer)["message"]
        assert invoke(server.port, png_bytes(8))[0] == 200


@pytest.mark.slow
def test_ping_is_503_until_every_worker_has_loaded_the_model(tmp_path: Path) -> None:
    model_dir = write_model_dir(tmp_path)
    (model_dir / "hold_loading").touch()
    server = Server(model_dir, tmp_path / "log", "--workers", "2")
    try:
        server.wait_for_ping(503)
        wait_until(lambda: len(list((model_dir / "pids").glob("*"))) == 2, "2 workers loading")
        assert invoke(server.port, png_bytes(9))[0] == 503
        assert server.ping_status() == 503
        (model_dir / "release_loading").touch()
        server.wait_for_ping(200)
        assert invoke(server.port, png_bytes(9))[0] == 200
    finally:
        server.stop()


@pytest.mark.slow
def test_a_model_that_fails_to_load_exits_non_zero_with_the_reason(tmp_path: Path) -> None:
    model_dir = write_model_dir(tmp_path)
    (model_dir / "fail_to_load").write_text("checksum mismatch 1234")
    server = Server(model_dir, tmp_path / "log", "--workers", "2")
    try:
        code = server.process.wait(timeout=DEADLINE_S)
    finally:
        server.stop()
    assert code != 0
    last_line = server.log().strip().splitlines()[-1]
    assert "RuntimeError: weights are corrupt: checksum mismatch 1234" in last_line
    for pid_file in (model_dir / "pids").glob("*"):
        assert process_gone(int(pid_file.name))


def test_a_missing_model_dir_exits_non_zero_with_the_reason(tmp_path: Path) -> None:
    server = Server(tmp_path / "nowhere", tmp_path / "log")
    code = server.process.wait(timeout=DEADLINE_S)
    assert code != 0
    assert "does not exist" in server.log().strip().splitlines()[-1]


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests_and_stops_every_worker(tmp_path: Path) -> None:
    model_dir = write_model_dir(tmp_path)
    server = Server(model_dir, tmp_path / "log", "--workers", "2")
    try:
        server.wait_for_ping(200)
        worker_pids = [int(p.name) for p in (model_dir / "pids").glob("*")]
        assert len(worker_pids) == 2
        gate = tmp_path / "gate"
        result: list[tuple[int, dict[str, str], bytes]] = []
        body = json.dumps({"hold": str(gate)}).encode()
        client = threading.Thread(
            target=lambda: result.append(invoke(server.port, body, "application/json"))
        )
        client.start()
        wait_until(lambda: Path(f"{gate}.started").exists(), "the request to be in flight")
        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: server.ping_status() is None, "the server to stop listening")
        Path(f"{gate}.release").touch()
        client.join(timeout=DEADLINE_S)
        assert result and result[0][0] == 200
        assert server.process.wait(timeout=DEADLINE_S) == 0
    finally:
        server.stop()
    assert all(process_gone(pid) for pid in worker_pids)
    assert "Traceback" not in server.log()
