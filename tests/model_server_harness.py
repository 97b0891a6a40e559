"""The model server's test harness: its tiny model, a real server process, HTTP helpers.

`tests/test_model_server.py` and `tests/test_model_server_resilience.py` start real
`python -m services.model_server` processes with this model; each test stops its own.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

from scones.settings import REPO_ROOT
from scones.stack import free_port
from scones.testing_models import import_file, tiny_inference_py, write_tiny_model
from scones.testing_models import png_bytes as png_bytes  # re-exported for the test modules

DEADLINE_S = 60.0

# The test's model: a tiny CNN on 3xHxW images, with hooks that let tests steer a worker
# (hold it busy, crash it, fail at load time) through files in the model directory.
INFERENCE_PY = tiny_inference_py(
    """
    import os
    import time

    PREDICT_CALLS = []


    def _wait_for(path, deadline_s=30.0):
        end = time.monotonic() + deadline_s
        while not Path(path).exists() and time.monotonic() < end:
            time.sleep(0.01)


    def model_fn(model_dir):
        model_dir = Path(model_dir)
        if (model_dir / "fail_to_load").exists():
            raise RuntimeError("weights are corrupt: " + (model_dir / "fail_to_load").read_text())
        (model_dir / "pids").mkdir(exist_ok=True)
        (model_dir / "pids" / str(os.getpid())).touch()
        if (model_dir / "hold_loading").exists():
            _wait_for(model_dir / "release_loading")
        return build_model(model_dir)


    def input_fn(body, content_type):
        if content_type == "application/json":
            request = json.loads(body)
            if request.get("crash"):
                os._exit(17)
            if "hold" in request:
                Path(request["hold"] + ".started").touch()
                _wait_for(request["hold"] + ".release")
                return torch.zeros(1, 3, 32, 32)
            return torch.tensor(request["instances"], dtype=torch.float32)
        return decode_image(body)


    def predict_fn(data, model):
        PREDICT_CALLS.append(data.shape[0])
        with torch.no_grad():
            return torch.softmax(model(data), dim=1)


    def output_fn(prediction, accept):
        if accept == "application/json":
            return json.dumps(prediction.tolist())
        if accept == "text/csv":
            return "\\n".join(",".join(f"{p:.6f}" for p in row) for row in prediction.tolist())
        raise RuntimeError(f"output exploded on {accept}")
    """
)


def write_model_dir(root: Path) -> Path:
    """A model directory as SageMaker unpacks it: weights and code/inference.py."""
    model_dir = root / "model"
    write_tiny_model(model_dir, INFERENCE_PY)
    return model_dir


def load_module(model_dir: Path) -> ModuleType:
    """The fixture's inference.py imported into the test process, under a private name."""
    return import_file(model_dir / "code" / "inference.py")


def expected_probabilities(model_dir: Path, image: bytes) -> list[list[float]]:
    """The fixture model run in-process on one encoded image."""
    module = load_module(model_dir)
    model = module.build_model(model_dir)
    return module.predict_fn(module.input_fn(image, "image/png"), model).tolist()


class Server:
    """A `python -m services.model_server` process on a free port, logging to a file."""

    def __init__(self, model_dir: Path, log_path: Path, *args: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        with open(log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.model_server", "--model-dir", str(model_dir),
                 "--port", str(self.port), *args],
                stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env,
            )  # fmt: skip

    def log(self) -> str:
        """Everything the server wrote."""
        return self.log_path.read_text(errors="replace")

    def ping_status(self) -> int | None:
        """The /ping status, or None while nothing listens."""
        try:
            return request(self.port, "GET", "/ping", timeout=2)[0]
        except OSError:
            return None

    def wait_for_ping(self, status: int = 200) -> None:
        """Poll /ping until it answers `status`; fail early if the server exits."""
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"server exited:\n{self.log()}"
            if self.ping_status() == status:
                return
            time.sleep(0.02)
        raise AssertionError(f"/ping never answered {status}:\n{self.log()}")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not stop; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@contextlib.contextmanager
def running_server(model_dir: Path, log_path: Path, *args: str) -> Iterator[Server]:
    """A ready server, always stopped afterwards."""
    server = Server(model_dir, log_path, *args)
    try:
        server.wait_for_ping(200)
        yield server
    finally:
        server.stop()


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = DEADLINE_S,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request on a fresh connection: status, headers (lower-case), body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def invoke(
    port: int, body: bytes, content_type: str = "image/png", accept: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """POST /invocations."""
    headers = {"Content-Type": content_type}
    if accept:
        headers["Accept"] = accept
    return request(port, "POST", "/invocations", body, headers)


def metric(port: int, line_prefix: str) -> float:
    """The value of the first /metrics sample whose line starts with `line_prefix`."""
    text = request(port, "GET", "/metrics")[2].decode()
    for line in text.splitlines():
        if line.startswith(line_prefix):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {line_prefix!r} in:\n{text}")


def wait_until(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    """Poll a condition with a deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@contextlib.contextmanager
def worker_held(port: int, tmp_path: Path, name: str) -> Iterator[None]:
    """Keep the (single) worker busy in input_fn until the block exits, so requests queue up."""
    gate = tmp_path / name
    pool = ThreadPoolExecutor(1)
    body = json.dumps({"hold": str(gate)}).encode()
    held = pool.submit(invoke, port, body, "application/json")
    try:
        wait_until(lambda: Path(f"{gate}.started").exists(), "the worker to be held")
        yield
    finally:
        Path(f"{gate}.release").touch()
        assert held.result(timeout=DEADLINE_S)[0] == 200
        pool.shutdown()


def answers_queued_behind_a_held_worker(
    port: int, tmp_path: Path, bodies: list[bytes]
) -> list[tuple[int, dict[str, str], bytes]]:
    """POST every body while the (single) worker is held; let it go once all are queued."""
    with ThreadPoolExecutor(len(bodies)) as pool:
        with worker_held(port, tmp_path, "gate"):
            futures = [pool.submit(invoke, port, body) for body in bodies]
            wait_until(
                lambda: metric(port, "model_server_queue_depth") == len(bodies),
                f"{len(bodies)} requests to queue",
            )
        return [f.result(timeout=DEADLINE_S) for f in futures]


def process_gone(pid: int) -> bool:
    """The process no longer exists (or is a zombie nobody will reap: counted as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
