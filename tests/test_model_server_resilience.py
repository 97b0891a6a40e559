"""The model server under stress: restarts, back-pressure, decode budgets, browsers.

Real `python -m services.model_server` processes with the tiny test model of
`tests/model_server_harness.py`; each test starts its own and always stops it.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest
from PIL import Image

from scones.testing import BROWSER_REQUESTS
from tests.model_server_harness import (
    DEADLINE_S,
    invoke,
    metric,
    png_bytes,
    request,
    running_server,
    wait_until,
    write_model_dir,
)


def huge_png(width: int = 4096, height: int = 4096) -> bytes:
    """A small file with a huge canvas (one colour compresses to almost nothing)."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(out, format="PNG", optimize=True)
    return out.getvalue()


def test_ping_is_503_while_the_only_worker_restarts_and_requests_wait_for_it(
    tmp_path: Path,
) -> None:
    model_dir = write_model_dir(tmp_path)
    with running_server(model_dir, tmp_path / "log") as server:
        (model_dir / "hold_loading").touch()  # the replacement worker will wait to load
        status, _, _ = invoke(server.port, b'{"crash": true}', "application/json")
        assert status == 503
        server.wait_for_ping(503)
        answers: list[int] = []
        waiting = threading.Thread(
            target=lambda: answers.append(invoke(server.port, png_bytes(3))[0])
        )
        waiting.start()
        # Queued behind the restart, not refused: it waits for the new worker.
        wait_until(lambda: metric(server.port, "model_server_queue_depth") == 1, "a queued call")
        assert not answers and server.ping_status() == 503
        (model_dir / "release_loading").touch()
        server.wait_for_ping(200)
        waiting.join(timeout=DEADLINE_S)
        assert answers == [200]


def test_a_full_queue_answers_503_and_the_server_recovers(tmp_path: Path) -> None:
    model_dir = write_model_dir(tmp_path)
    hold = tmp_path / "hold"
    with running_server(
        model_dir, tmp_path / "log", "--max-queue", "2", "--max-batch-size", "1"
    ) as server:
        results: list[int] = []
        lock = threading.Lock()

        def call(body: bytes, content_type: str = "image/png") -> None:
            status = invoke(server.port, body, content_type)[0]
            with lock:
                results.append(status)

        blocker = threading.Thread(
            target=call, args=(json.dumps({"hold": str(hold)}).encode(), "application/json")
        )
        blocker.start()
        wait_until(lambda: Path(f"{hold}.started").exists(), "the worker to be busy")
        queued = [threading.Thread(target=call, args=(png_bytes(i),)) for i in range(2)]
        for t in queued:
            t.start()
        wait_until(lambda: metric(server.port, "model_server_queue_depth") == 2, "2 queued")
        status, _, answer = invoke(server.port, png_bytes(9))
        assert status == 503
        assert "overloaded" in json.loads(answer)["message"]
        Path(f"{hold}.release").touch()
        blocker.join(DEADLINE_S)
        for t in queued:
            t.join(DEADLINE_S)
        assert sorted(results) == [200, 200, 200]
        assert invoke(server.port, png_bytes(9))[0] == 200


def _worker_peak_rss_kib(model_dir: Path, tmp_path: Path, body: bytes, *args: str) -> int:
    """Peak RSS of the (only) worker after answering body, read from /proc."""
    with running_server(model_dir, tmp_path / f"log{len(args)}", *args) as server:
        pids = {int(p.name) for p in (model_dir / "pids").glob("*")}
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        assert len(alive) == 1
        invoke(server.port, body)
        status = Path(f"/proc/{alive[0]}/status").read_text()
        (model_dir / "pids" / str(alive[0])).unlink()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])


def test_an_image_over_the_decode_budget_is_400_before_it_is_decoded(tmp_path: Path) -> None:
    model_dir = write_model_dir(tmp_path)
    body = huge_png()
    assert len(body) < 100_000, "a small body with a 4096x4096 canvas"
    with running_server(model_dir, tmp_path / "log") as server:
        status, _, answer = invoke(server.port, body)
        assert status == 400
        message = json.loads(answer)["message"]
        assert "4096x4096" in message and "MODEL_SERVER_MAX_IMAGE_PIXELS" in message
        assert invoke(server.port, png_bytes(1))[0] == 200
    with running_server(
        model_dir, tmp_path / "log2", "--max-image-pixels", "0", "--max-image-bytes", "1000"
    ) as server:
        status, _, answer = invoke(server.port, png_bytes(1, size=64))
        assert status == 400 and "MODEL_SERVER_MAX_IMAGE_BYTES" in json.loads(answer)["message"]


@pytest.mark.slow
def test_the_decode_budget_bounds_a_workers_memory(tmp_path: Path) -> None:
    model_dir = write_model_dir(tmp_path)
    body = huge_png()
    unbounded = _worker_peak_rss_kib(
        model_dir, tmp_path, body, "--max-image-pixels", "0", "--max-image-bytes", "0"
    )
    bounded = _worker_peak_rss_kib(model_dir, tmp_path, body)
    print(f"worker peak RSS for a {len(body)} B 4096x4096 PNG: {unbounded} KiB without the "
          f"budget, {bounded} KiB with it")  # fmt: skip
    assert bounded + 100_000 < unbounded, "the budget should spare the decode (~100+ MB)"


@pytest.mark.parametrize(("headers", "expected"), BROWSER_REQUESTS)
def test_browser_requests_are_refused_and_plain_clients_pass(
    tmp_path_factory: pytest.TempPathFactory, headers: dict[str, str], expected: int
) -> None:
    tmp_path = tmp_path_factory.mktemp("guard")
    model_dir = write_model_dir(tmp_path)
    with running_server(model_dir, tmp_path / "log") as server:
        status, _, answer = request(
            server.port,
            "POST",
            "/invocations",
            png_bytes(2),
            {"Content-Type": "image/png", **headers},
        )
        assert status == expected, answer
        ping = request(server.port, "GET", "/ping", headers=headers)[0]
        assert ping == (200 if expected == 200 else 403)


def test_the_container_serve_skips_the_host_check_but_not_the_origin_check(
    tmp_path: Path,
) -> None:
    from services.model_server.__main__ import parse_config

    assert parse_config(["--model-dir", str(tmp_path)], container=True).check_host is False
    assert parse_config(["--model-dir", str(tmp_path)]).check_host is True
