"""Serving benchmark: the model's hooks in-process vs the model server over HTTP.

For one model directory (default: a tiny CNN written to a temp folder; pass `--model-dir` for the
real one) and one 32x32 PNG it measures
  - raw: input_fn+predict_fn+output_fn in this process, batch size 1 and batched (the floor),
  - server: the model server over HTTP (keep-alive connections) at concurrency 1, 8, 32,
and prints req/s, p50 and p99 (best of `--repeat` interleaved rounds), with the goals checked:
p50 at C=1 within 2 ms of the raw bs-1 p50, and C=32 throughput at least 70 % of raw batched.

More rows plug in through `extra_rows`: a function given the PNG and the concurrency levels that
returns rows, e.g. one built with `invoke_rows` around boto3's InvokeEndpoint:

    def through_invoke_endpoint(payload, levels, requests):
        runtime = boto3.client("sagemaker-runtime")
        call = lambda body: runtime.invoke_endpoint(
            EndpointName=name, ContentType="image/png", Body=body)["Body"].read()
        return invoke_rows("InvokeEndpoint", call, payload, levels, requests)

    main(extra_rows=[through_invoke_endpoint])

`--torchserve` adds TorchServe rows for the same hooks and batch settings when `torchserve` and
`torch-model-archiver` are on PATH (they are not project dependencies; e.g.
`pip install --target /tmp/ts torchserve==0.12.0 torch-model-archiver==0.12.0 wheel enum-compat
--no-deps`, then PATH=/tmp/ts/bin:$PATH PYTHONPATH=/tmp/ts; Java 17 needed).

Run: `python -m benchmarks.bench_serving [--model-dir DIR] [--requests N] [--json out.json]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch
from PIL import Image

from services.model_server.handler import InferenceRequest, ModelHandler

REPO_ROOT = Path(__file__).resolve().parent.parent
LEVELS = (1, 8, 32)

# A tiny CNN of the project's shape (3x32x32 in, class probabilities out) for when no model
# directory is given; the real one comes from model/ through --model-dir.
TINY_INFERENCE_PY = textwrap.dedent(
    """
    import io
    import json

    import numpy as np
    import torch
    from PIL import Image
    from torch import nn


    class TinyCNN(nn.Module):
        def __init__(self, num_classes=2):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            )
            self.classifier = nn.Linear(32, num_classes)

        def forward(self, x):
            return self.classifier(self.features(x))


    def model_fn(model_dir):
        model = TinyCNN()
        model.load_state_dict(torch.load(f"{model_dir}/model.pth", weights_only=True))
        return model.eval()


    def input_fn(body, content_type):
        image = Image.open(io.BytesIO(body)).convert("RGB")
        array = np.asarray(image, dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


    def predict_fn(data, model):
        with torch.inference_mode():
            return torch.softmax(model(data), dim=1)


    def output_fn(prediction, accept):
        return json.dumps(prediction[0].tolist())
    """
)


@dataclass
class Row:
    """One line of the results table."""

    name: str
    concurrency: int
    requests: int
    req_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch: float | None = None


ExtraRows = Callable[[bytes, Sequence[int], int], list[Row]]


def write_tiny_model(root: Path) -> Path:
    """Write the tiny CNN's model directory (weights + code/inference.py) under root."""
    model_dir = root / "tiny_model"
    (model_dir / "code").mkdir(parents=True, exist_ok=True)
    (model_dir / "code" / "inference.py").write_text(TINY_INFERENCE_PY)
    namespace: dict[str, object] = {}
    exec(compile(TINY_INFERENCE_PY, "tiny_inference", "exec"), namespace)
    torch.manual_seed(0)
    model = namespace["TinyCNN"]()  # type: ignore[operator]
    torch.save(model.state_dict(), model_dir / "model.pth")
    return model_dir


def png_32x32(seed: int = 0) -> bytes:
    """A random 32x32 RGB PNG."""
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def summarise(name: str, concurrency: int, latencies: list[float], elapsed: float) -> Row:
    """A row from per-request latencies (s) and the wall time of the run."""
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return Row(
        name,
        concurrency,
        len(latencies),
        len(latencies) / elapsed,
        statistics.median(ordered) * 1000,
        p99 * 1000,
    )


# --- raw, in-process ---------------------------------------------------------------------------


class RawRunner:
    """The hooks called in this process, as a worker calls them, with no server in between."""

    def __init__(self, model_dir: Path, payload: bytes, batch_size: int, threads: int) -> None:
        torch.set_num_threads(threads)
        self.handler = ModelHandler(model_dir)
        self.handler.load()
        self.payload = payload
        self.batch_size = batch_size
        self.batch = [InferenceRequest(payload, "image/png", "application/json")] * batch_size
        for _ in range(20):
            self.one()
            self.handler.handle_batch(self.batch)

    def one(self) -> None:
        """input_fn, predict_fn and output_fn on one image."""
        handler = self.handler
        prediction = handler.predict_fn(handler.input_fn(self.payload, "image/png"), handler.model)
        handler.output_fn(prediction, "application/json")

    def bs1(self, requests: int) -> Row:
        """One image at a time: the latency floor."""
        latencies = []
        started = time.perf_counter()
        for _ in range(requests):
            t0 = time.perf_counter()
            self.one()
            latencies.append(time.perf_counter() - t0)
        return summarise("raw in-process, bs 1", 1, latencies, time.perf_counter() - started)

    def batched(self, requests: int) -> Row:
        """Full batches through handle_batch (one predict_fn each): the throughput ceiling."""
        latencies = []
        started = time.perf_counter()
        for _ in range(max(1, requests // self.batch_size)):
            t0 = time.perf_counter()
            self.handler.handle_batch(self.batch)
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
        row = summarise(
            f"raw in-process, bs {self.batch_size}", self.batch_size, latencies, elapsed
        )
        row.requests *= self.batch_size
        row.req_per_s *= self.batch_size
        return row


def best(rows: Sequence[Row]) -> Row:
    """The fastest of repeated measurements of one row (neighbours only ever slow a run down)."""
    return max(rows, key=lambda row: row.req_per_s)


# --- over HTTP ---------------------------------------------------------------------------------


def http_rows(
    name: str,
    base_url: str,
    payload: bytes,
    levels: Sequence[int],
    requests: int,
    path: str = "/invocations",
) -> list[Row]:
    """POST the PNG to base_url + path at each concurrency, one keep-alive connection a client."""
    return [asyncio.run(_http_load(name, base_url + path, payload, c, requests)) for c in levels]


def server_row(server: ServerProcess, payload: bytes, concurrency: int, requests: int) -> Row:
    """One http row against our server, with the mean batch size the server formed."""
    before = batch_totals(server.metrics())
    url = f"{server.url}/invocations"
    row = asyncio.run(_http_load("model server, HTTP", url, payload, concurrency, requests))
    after = batch_totals(server.metrics())
    batches = after[1] - before[1]
    row.mean_batch = (after[0] - before[0]) / batches if batches else None
    return row


async def _http_load(name: str, url_text: str, payload: bytes, concurrency: int, n: int) -> Row:
    url = urlsplit(url_text)
    host, port, path = url.hostname or "127.0.0.1", url.port or 80, url.path
    wire = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/png\r\n"
        f"Accept: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    latencies: list[float] = []
    remaining = [n]

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for _ in range(10):  # warm-up, not counted
                await _exchange(reader, writer, wire)
            while remaining[0] > 0:
                remaining[0] -= 1
                t0 = time.perf_counter()
                await _exchange(reader, writer, wire)
                latencies.append(time.perf_counter() - t0)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return summarise(name, concurrency, latencies, time.perf_counter() - started)


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wire: bytes
) -> None:
    writer.write(wire)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    body = await reader.readexactly(length)
    if status != 200:
        raise RuntimeError(f"server answered {status}: {body[:200]!r}")


def invoke_rows(
    name: str,
    invoke: Callable[[bytes], object],
    payload: bytes,
    levels: Sequence[int],
    requests: int,
) -> list[Row]:
    """Rows for any blocking invoke function (e.g. boto3 InvokeEndpoint), one thread per client."""
    return [_invoke_load(name, invoke, payload, c, requests) for c in levels]


def _invoke_load(
    name: str, invoke: Callable[[bytes], object], payload: bytes, concurrency: int, n: int
) -> Row:
    latencies: list[float] = []
    lock = threading.Lock()
    remaining = [n]

    def client() -> None:
        for _ in range(5):  # warm-up, not counted
            invoke(payload)
        while True:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            t0 = time.perf_counter()
            invoke(payload)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    return summarise(name, concurrency, latencies, time.perf_counter() - started)


# --- the model server process ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`python -m services.model_server` on a free port for the length of a `with` block."""

    def __init__(self, model_dir: Path, server_args: Sequence[str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.model_server", "--model-dir", str(model_dir),
             "--port", str(self.port), *server_args],
            cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )  # fmt: skip

    def __enter__(self) -> ServerProcess:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"model server exited:\n{self.log.read().decode()}")
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.__exit__()
        raise TimeoutError("model server not ready in 120 s")

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def metrics(self) -> str:
        """The server's /metrics text."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as answer:
            return answer.read().decode()


def batch_totals(metrics_text: str) -> tuple[float, float]:
    """(requests batched, batches) so far, from the server's batch-size histogram."""
    values = {}
    for line in metrics_text.splitlines():
        if line.startswith(("model_server_batch_size_sum", "model_server_batch_size_count")):
            key, value = line.split()
            values[key] = float(value)
    return (
        values.get("model_server_batch_size_sum", 0.0),
        values.get("model_server_batch_size_count", 0.0),
    )


# --- TorchServe, for comparison (optional) ---------------------------------------------------

TORCHSERVE_HANDLER = textwrap.dedent(
    """
    # TorchServe handler running the model directory's SageMaker hooks, batches included.
    import os

    from services.model_server.handler import InferenceRequest, ModelHandler

    _handler = None


    def handle(data, context):
        global _handler
        if _handler is None:
            _handler = ModelHandler(os.environ["BENCH_MODEL_DIR"])
            _handler.load()
        if data is None:
            return None
        requests = [
            InferenceRequest(bytes(row.get("body") or row.get("data")), "image/png",
                             "application/json")
            for row in data
        ]
        return [response.body.decode() for response in _handler.handle_batch(requests)]
    """
)


def torchserve_rows(
    model_dir: Path,
    payload: bytes,
    levels: Sequence[int],
    requests: int,
    batch_size: int,
    delay_ms: float,
    repeat: int,
) -> list[Row]:
    """TorchServe (`torchserve` and `torch-model-archiver` on PATH) serving the same hooks."""
    torchserve, archiver = shutil.which("torchserve"), shutil.which("torch-model-archiver")
    if not torchserve or not archiver:
        print("TorchServe row skipped: torchserve / torch-model-archiver not on PATH")
        return []
    # maxBatchDelay 0 makes TorchServe's batch aggregator answer a lone request after ~100 ms.
    delay = max(1, round(delay_ms))
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        (work / "store").mkdir()
        (work / "handler.py").write_text(TORCHSERVE_HANDLER)
        subprocess.run(
            [archiver, "--model-name", "bench", "--version", "1.0", "--handler",
             str(work / "handler.py"), "--export-path", str(work / "store")],
            check=True, cwd=work,
        )  # fmt: skip
        inference, management, metrics = _free_port(), _free_port(), _free_port()
        model = {"defaultVersion": True, "marName": "bench.mar", "minWorkers": 1,
                 "maxWorkers": 1, "batchSize": batch_size, "maxBatchDelay": delay,
                 "responseTimeout": 120}  # fmt: skip
        (work / "config.properties").write_text(
            f"inference_address=http://127.0.0.1:{inference}\n"
            f"management_address=http://127.0.0.1:{management}\n"
            f"metrics_address=http://127.0.0.1:{metrics}\n"
            "disable_token_authorization=true\ndefault_workers_per_model=1\n"
            f"install_py_dep_per_model=false\npython={sys.executable}\n"
            f"load_models=bench.mar\nmodels={json.dumps({'bench': {'1.0': model}})}\n"
        )
        env = {
            **os.environ,
            "BENCH_MODEL_DIR": str(model_dir),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                        os.environ.get("PYTHONPATH")])),
        }  # fmt: skip
        process = subprocess.Popen(
            [torchserve, "--start", "--foreground", "--ncs", "--disable-token-auth",
             "--ts-config", str(work / "config.properties"), "--model-store", str(work / "store")],
            cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            _wait_for_torchserve(process, f"http://127.0.0.1:{management}/models/bench")
            name = f"TorchServe (batch {batch_size}, delay {delay} ms)"
            url = f"http://127.0.0.1:{inference}"
            rounds = [
                http_rows(name, url, payload, levels, requests, path="/predictions/bench")
                for _ in range(repeat)
            ]
            return [best(measurements) for measurements in zip(*rounds, strict=True)]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _wait_for_torchserve(process: subprocess.Popen[bytes], model_url: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"torchserve exited with {process.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(model_url, timeout=2) as answer:
            if b'"READY"' in answer.read():
                return
        time.sleep(0.2)
    raise TimeoutError("TorchServe's model not READY in 180 s")


# --- the report --------------------------------------------------------------------------------


def table(rows: Sequence[Row]) -> str:
    """Rows as a Markdown table."""
    lines = [
        "| path | concurrency | requests | req/s | p50 ms | p99 ms | mean batch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.name} | {r.concurrency} | {r.requests} | {r.req_per_s:,.0f} | {r.p50_ms:.2f} "
        f"| {r.p99_ms:.2f} | {'' if r.mean_batch is None else f'{r.mean_batch:.1f}'} |"
        for r in rows
    ]
    return "\n".join(lines)


def goals(raw: list[Row], server: list[Row]) -> list[str]:
    """The two goals, checked."""
    floor, batched = raw[0], raw[1]
    c1 = next(r for r in server if r.concurrency == 1)
    c32 = next((r for r in server if r.concurrency == 32), server[-1])
    gap = c1.p50_ms - floor.p50_ms
    share = c32.req_per_s / batched.req_per_s
    return [
        f"p50 at C=1 is {gap:+.2f} ms from the raw floor (goal: within 2 ms): "
        f"{'met' if gap <= 2 else 'NOT met'}",
        f"C={c32.concurrency} throughput is {share:.0%} of raw batched (goal: >= 70%): "
        f"{'met' if share >= 0.7 else 'NOT met'}",
    ]


def main(argv: list[str] | None = None, extra_rows: Sequence[ExtraRows] = ()) -> int:
    """Run the benchmark and print the table; extra_rows add paths (e.g. InvokeEndpoint)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="default: a tiny CNN written to a temp dir")
    parser.add_argument("--requests", type=int, default=1000, help="per row and round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best of each row counts")
    parser.add_argument("--concurrency", default=",".join(map(str, LEVELS)))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads-per-worker", type=int, default=1, help="also raw's threads")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-batch-delay-ms", type=float, default=0.0)
    parser.add_argument(
        "--torchserve",
        action="store_true",
        help="add TorchServe rows (needs `torchserve` and `torch-model-archiver` on PATH)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model_dir or write_tiny_model(Path(scratch))
        payload = png_32x32()
        raw_runner = RawRunner(model_dir, payload, args.max_batch_size, args.threads_per_worker)
        server_args = [
            "--workers", str(args.workers),
            "--threads-per-worker", str(args.threads_per_worker),
            "--max-batch-size", str(args.max_batch_size),
            "--max-batch-delay-ms", str(args.max_batch_delay_ms),
        ]  # fmt: skip
        rounds: list[list[Row]] = []
        with ServerProcess(model_dir, server_args) as server:
            # Interleaved rounds, best of each row: shared CPUs make single runs noisy.
            for _ in range(args.repeat):
                rounds.append(
                    [raw_runner.bs1(args.requests), raw_runner.batched(args.requests)]
                    + [server_row(server, payload, c, args.requests) for c in levels]
                )
        raw_and_served = [best(measurements) for measurements in zip(*rounds, strict=True)]
        raw, served = raw_and_served[:2], raw_and_served[2:]
        extra = [row for rows in extra_rows for row in rows(payload, levels, args.requests)]
        if args.torchserve:
            extra += torchserve_rows(model_dir, payload, levels, args.requests,
                                     args.max_batch_size, args.max_batch_delay_ms,
                                     args.repeat)  # fmt: skip

    rows = raw + served + extra
    model_name = model_dir if args.model_dir else "tiny CNN (built-in)"
    print(f"model: {model_name}; payload: {len(payload)}-byte 32x32 PNG; server: "
          f"{' '.join(server_args)}; cpus: {len(os.sched_getaffinity(0))}; "
          f"load average before: {load_before:.1f}")  # fmt: skip
    print(table(rows))
    print(f"best of {args.repeat} interleaved rounds; load average after: "
          f"{os.getloadavg()[0]:.1f} (other processes slow every figure)")  # fmt: skip
    for line in goals(raw, served):
        print(line)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
