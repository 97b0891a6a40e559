"""Serving benchmark: the model's hooks in-process vs the model server direct vs InvokeEndpoint.

For one model directory (default: the project's small CNN from model/, random weights, written by
model/train.py's save_model; `--model-dir` for another) and one 32x32 PNG it measures
  - raw: input_fn+predict_fn+output_fn with no server, batch size 1 and batched (the floor), in
    a child of the interpreter the model servers run with (the serving venv's when installed,
    services/model_server/environment.py), so raw and served rows share one torch build,
  - server: the model server over HTTP (keep-alive connections) at concurrency 1, 8, 32,
  - InvokeEndpoint: boto3's sagemaker-runtime client -> sagemaker-local -> model server, on the
    embedded stack (local_aws + sagemaker-local, started here, the model packed as model.tar.gz
    and uploaded to its S3), one client per thread, at the same concurrency levels; with a second
    endpoint capturing 100 % of its traffic unless `--no-capture`; `--no-invoke-endpoint` skips
    both. The endpoint's server gets the direct server's settings through the Model's container
    Environment (SAGEMAKER_MODEL_SERVER_WORKERS, SAGEMAKER_TS_BATCH_SIZE, ...),
  - sagemaker-local over plain HTTP with the direct row's client (it checks no signature): the
    same hop as InvokeEndpoint without boto3, to tell sagemaker-local's cost from the client's,
    and boto3's own signed InvokeEndpoint request (captured from one real call) replayed over
    plain HTTP: the server side of InvokeEndpoint, byte for byte, without boto3's CPU per call,
and prints req/s, p50 and p99 (best of `--repeat` interleaved rounds; every client sends
WARMUP untimed requests first and the clock starts once all are warm), with the goals checked for
the direct server and for InvokeEndpoint: p50 at C=1 within 2 ms of the raw bs-1 p50, and C=32
throughput at least 70 % of raw batched; then what InvokeEndpoint adds over direct at each C.

More rows plug in through `extra_rows`: functions given the PNG, the concurrency levels and the
request count that return rows, e.g. built with `invoke_rows(name, call, payload, levels, n)`
around any blocking call: `main(extra_rows=[my_rows])`.

`--torchserve` adds TorchServe rows for the same hooks and batch settings when `torchserve` and
`torch-model-archiver` are on PATH (they are not project dependencies; e.g.
`pip install --target /tmp/ts torchserve==0.12.0 torch-model-archiver==0.12.0 wheel enum-compat
--no-deps`, then PATH=/tmp/ts/bin:$PATH PYTHONPATH=/tmp/ts; Java 17 needed).

Run: `python -m benchmarks.bench_serving [--model-dir DIR] [--requests N] [--repeat R]
[--no-invoke-endpoint] [--no-capture] [--json out.json]`.
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
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
import uuid
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
from PIL import Image

from scones.stack import free_port, stop_process_group, wait_for_health
from services.model_server.environment import serving_python
from services.model_server.workers import WORKER_MALLOC

REPO_ROOT = Path(__file__).resolve().parent.parent
LEVELS = (1, 8, 32)
WARMUP = 10  # requests per client before timing, on every served path alike
CIFAR100_MEAN = [0.507075, 0.486549, 0.440918]
CIFAR100_STD = [0.267334, 0.256438, 0.276151]


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
    # CPU time of this (the measuring) process per request: the compute itself for the raw
    # rows, the load generator's own cost (sharing the CPUs with the servers) for the others.
    bench_cpu_ms: float | None = None


class Clock:
    """Wall and process CPU time since start()."""

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        """Start (again) now."""
        self.wall, self.cpu = time.perf_counter(), time.process_time()


ExtraRows = Callable[[bytes, Sequence[int], int], list[Row]]


def write_small_cnn(root: Path) -> Path:
    """The project's small CNN with random weights, written by model/train.py's save_model."""
    from model import networks, train
    from scones.etl.transform import DEFAULT_CLASSES

    classes = list(DEFAULT_CLASSES)
    torch.manual_seed(0)
    model = networks.build_network("small_cnn", len(classes)).eval()
    # Serving cost does not depend on the weights' values, so no training: epochs 0 says so.
    args = argparse.Namespace(model="small_cnn", epochs=0, seed=0)
    model_dir = root / "small_cnn"
    train.save_model(model_dir, model, args, classes, CIFAR100_MEAN, CIFAR100_STD, 0.0)
    return model_dir


def png_32x32(seed: int = 0) -> bytes:
    """A random 32x32 RGB PNG."""
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def summarise(name: str, concurrency: int, latencies: list[float], clock: Clock) -> Row:
    """A row from per-request latencies (s) and the clock started with the timed run."""
    elapsed, cpu = time.perf_counter() - clock.wall, time.process_time() - clock.cpu
    return make_row(name, concurrency, latencies, elapsed, cpu)


def make_row(
    name: str, concurrency: int, latencies: list[float], elapsed: float, cpu: float
) -> Row:
    """A row from per-request latencies, the run's wall time and the CPU time it took (s)."""
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return Row(
        name,
        concurrency,
        len(latencies),
        len(latencies) / elapsed,
        statistics.median(ordered) * 1000,
        p99 * 1000,
        bench_cpu_ms=cpu / len(latencies) * 1000,
    )


# --- raw, in-process ---------------------------------------------------------------------------


# The hooks' loop, run by RawRunner in the interpreter the model server runs with (the serving
# venv's CPU-only torch when installed): the same torch build on both sides of every ratio.
RAW_CHILD = textwrap.dedent(
    """
    import json, sys, time

    import torch

    from services.model_server.handler import InferenceRequest, ModelHandler

    model_dir, payload_path, batch_size, threads = sys.argv[1:5]
    torch.set_num_threads(int(threads))
    handler = ModelHandler(model_dir)
    handler.load()
    with open(payload_path, "rb") as f:
        payload = f.read()
    batch = [InferenceRequest(payload, "image/png", "application/json")] * int(batch_size)


    def one():
        prediction = handler.predict_fn(handler.input_fn(payload, "image/png"), handler.model)
        handler.output_fn(prediction, "application/json")


    def full_batch():
        handler.handle_batch(batch)


    for _ in range(20):
        one()
        full_batch()
    print("ready", flush=True)
    for line in sys.stdin:
        kind, count = line.split()
        step = one if kind == "bs1" else full_batch
        latencies = []
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(int(count)):
            t0 = time.perf_counter()
            step()
            latencies.append(time.perf_counter() - t0)
        elapsed, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(json.dumps({"latencies": latencies, "elapsed": elapsed, "cpu": cpu}), flush=True)
    """
)


class RawRunner:
    """The hooks called as a worker calls them, with no server in between.

    They run in a child process of the interpreter model servers run with (`serving_python`),
    so raw and served rows use the same torch build; the child exits with this object.
    """

    def __init__(
        self,
        model_dir: Path,
        payload: bytes,
        batch_size: int,
        threads: int,
        python: str | None = None,
    ) -> None:
        self.batch_size = batch_size
        self._scratch = tempfile.TemporaryDirectory()
        payload_path = Path(self._scratch.name) / "payload"
        payload_path.write_bytes(payload)
        env = {**WORKER_MALLOC, **os.environ}  # the allocator a worker has: the same ceiling
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [python or serving_python(), "-c", RAW_CHILD, str(model_dir), str(payload_path),
             str(batch_size), str(threads)],
            cwd=REPO_ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        weakref.finalize(self, _end_child, self.process, self._scratch)
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the raw runner exited with code {self.process.wait()}")

    def _run(self, kind: str, count: int) -> tuple[list[float], float, float]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{kind} {count}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the raw runner exited with code {self.process.wait()}")
        result = json.loads(line)
        return result["latencies"], result["elapsed"], result["cpu"]

    def bs1(self, requests: int) -> Row:
        """One image at a time: the latency floor."""
        return make_row("raw in-process, bs 1", 1, *self._run("bs1", requests))

    def batched(self, requests: int) -> Row:
        """Full batches through handle_batch (one predict_fn each): the throughput ceiling."""
        latencies, elapsed, cpu = self._run("batched", max(1, requests // self.batch_size))
        name = f"raw in-process, bs {self.batch_size}"
        row = make_row(name, self.batch_size, latencies, elapsed, cpu)
        row.requests *= self.batch_size
        row.req_per_s *= self.batch_size
        row.bench_cpu_ms = (row.bench_cpu_ms or 0.0) / self.batch_size
        return row


def _end_child(process: subprocess.Popen[str], scratch: tempfile.TemporaryDirectory[str]) -> None:
    with contextlib.suppress(OSError):
        process.kill()
    process.wait()
    scratch.cleanup()


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
    headers: dict[str, str] | None = None,
) -> list[Row]:
    """POST the PNG to base_url + path at each concurrency, one keep-alive connection a client.

    `headers` replace the default Content-Type and Accept (Host and Content-Length are set here).
    """
    url = base_url + path
    return [asyncio.run(_http_load(name, url, payload, c, requests, headers)) for c in levels]


def server_row(server: ServerProcess, payload: bytes, concurrency: int, requests: int) -> Row:
    """One http row against our server, with the mean batch size the server formed."""
    before = batch_totals(server.metrics())
    url = f"{server.url}/invocations"
    row = asyncio.run(_http_load("model server, HTTP", url, payload, concurrency, requests))
    after = batch_totals(server.metrics())
    batches = after[1] - before[1]
    row.mean_batch = (after[0] - before[0]) / batches if batches else None
    return row


async def _http_load(
    name: str,
    url_text: str,
    payload: bytes,
    concurrency: int,
    n: int,
    headers: dict[str, str] | None = None,
) -> Row:
    url = urlsplit(url_text)
    host, port, path = url.hostname or "127.0.0.1", url.port or 80, url.path
    fields = headers or {"Content-Type": "image/png", "Accept": "application/json"}
    lines = "".join(
        f"{key}: {value}\r\n"
        for key, value in fields.items()
        if key.lower() not in ("host", "content-length")
    )
    wire = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{lines}"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    latencies: list[float] = []
    remaining = [n]
    warmed, clock = [0], Clock()
    all_warm = asyncio.Event()

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for _ in range(WARMUP):  # not counted
                await _exchange(reader, writer, wire)
            # The clock starts once every client is warm, so warm-ups never count as load.
            warmed[0] += 1
            if warmed[0] == concurrency:
                clock.start()
                all_warm.set()
            await all_warm.wait()
            while remaining[0] > 0:
                remaining[0] -= 1
                t0 = time.perf_counter()
                await _exchange(reader, writer, wire)
                latencies.append(time.perf_counter() - t0)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return summarise(name, concurrency, latencies, clock)


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


Invoke = Callable[[bytes], object]


def invoke_rows(
    name: str,
    invoke: Invoke | Sequence[Invoke],
    payload: bytes,
    levels: Sequence[int],
    requests: int,
) -> list[Row]:
    """Rows for a blocking invoke function (e.g. boto3 InvokeEndpoint), one thread per client.

    `invoke` is one function shared by every thread, or one per client (at least max(levels)).
    """
    return [_invoke_load(name, invoke, payload, c, requests) for c in levels]


def _invoke_load(
    name: str, invoke: Invoke | Sequence[Invoke], payload: bytes, concurrency: int, n: int
) -> Row:
    invokers = [invoke] * concurrency if callable(invoke) else list(invoke)[:concurrency]
    if len(invokers) < concurrency:
        raise ValueError(f"{len(invokers)} invoke functions for concurrency {concurrency}")
    latencies: list[float] = []
    lock = threading.Lock()
    remaining = [n]
    clock = Clock()
    # The clock starts once every client is warm, so warm-ups never count as load.
    all_warm = threading.Barrier(concurrency, action=clock.start)

    def client(call: Invoke) -> None:
        try:
            for _ in range(WARMUP):  # not counted
                call(payload)
        except BaseException:
            all_warm.abort()  # a failed client must not leave the others waiting forever
            raise
        all_warm.wait()
        while True:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            t0 = time.perf_counter()
            call(payload)
            latencies.append(time.perf_counter() - t0)

    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(client, call) for call in invokers]
    errors = [e for e in (f.exception() for f in futures) if e is not None]
    if errors:  # the cause, not the broken barrier it left behind
        raise next(
            (e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0]
        )
    return summarise(name, concurrency, latencies, clock)


# --- the model server process ----------------------------------------------------------------


class ServerProcess:
    """`python -m services.model_server` on a free port for the length of a `with` block.

    `python`: its interpreter (default: the one sagemaker-local starts model servers with).
    """

    def __init__(
        self, model_dir: Path, server_args: Sequence[str], python: str | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_dir = tempfile.TemporaryDirectory()
        self.log_path = Path(self._log_dir.name) / "model_server.log"
        args = ["--model-dir", str(model_dir), "--port", str(self.port), *server_args]
        # The interpreter sagemaker-local starts model servers with (the serving venv's).
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [python or serving_python(), "-m", "services.model_server", *args],
                cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def __enter__(self) -> ServerProcess:
        try:
            wait_for_health(f"{self.url}/ping", self.process, self.log_path, timeout_s=120)
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        stop_process_group(self.process, timeout=30)
        self._log_dir.cleanup()

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


# --- through InvokeEndpoint (boto3 -> sagemaker-local -> model server) ------------------------

# sagemaker-local runs the project's model server whatever the image; the name is for parity.
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/scones-model-server:latest"
ROLE = "arn:aws:iam::123456789012:role/bench-serving"
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
INVOKE_ENDPOINT = "InvokeEndpoint"
INVOKE_CAPTURE = "InvokeEndpoint + 100% capture"
# The same hop as InvokeEndpoint without boto3 (sagemaker-local does not check signatures): what
# sagemaker-local costs, apart from the client's serialising, signing and parsing.
SAGEMAKER_LOCAL_HTTP = "sagemaker-local, HTTP (no boto3)"
# boto3's own InvokeEndpoint request (its SigV4 headers, user agent, ...), captured once and
# replayed over plain HTTP: the server side of InvokeEndpoint alone, without the client's CPU.
SAGEMAKER_LOCAL_SIGNED = "sagemaker-local, boto3's signed request replayed (no boto3)"


def container_environment(
    workers: int, threads: int, max_batch_size: int, max_batch_delay_ms: float
) -> dict[str, str]:
    """The Model's container Environment giving the endpoint the direct server's settings."""
    return {
        "SAGEMAKER_MODEL_SERVER_WORKERS": str(workers),
        "SAGEMAKER_TS_BATCH_SIZE": str(max_batch_size),
        "SAGEMAKER_TS_MAX_BATCH_DELAY": f"{max_batch_delay_ms:g}",
        "MODEL_SERVER_THREADS_PER_WORKER": str(threads),
    }


@dataclass(eq=False)
class EndpointStack:
    """The embedded stack (local_aws + sagemaker-local) serving a model dir behind endpoints.

    Inside the `with` block the stack's AWS profile is selected in os.environ, so plain boto3
    clients reach it; the endpoints are InService and `clients` runtime clients are ready.
    """

    state_dir: Path
    model_dir: Path
    environment: dict[str, str]
    capture: bool
    clients: int
    endpoints: dict[str, str] = field(default_factory=dict, init=False)  # row name -> endpoint
    runtimes: list[Any] = field(default_factory=list, init=False)
    bucket: str = field(
        init=False, default_factory=lambda: f"bench-serving-{uuid.uuid4().hex[:12]}"
    )
    seconds_to_in_service: float = field(default=0.0, init=False)
    sagemaker_url: str = field(default="", init=False)
    aws_pid: int = field(default=0, init=False)  # the emulator's and sagemaker-local's processes
    sagemaker_pid: int = field(default=0, init=False)
    _exits: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, init=False)

    def __enter__(self) -> EndpointStack:
        from scones.testing import selected_profile, start_local_stack

        stack = start_local_stack(self.state_dir)
        self.sagemaker_url = stack.sagemaker_url
        self.aws_pid, self.sagemaker_pid = stack.aws.process.pid, stack.sagemaker.pid
        with contextlib.ExitStack() as exits:  # undone in reverse, now on failure or at __exit__
            exits.callback(stop_process_group, stack.aws.process)
            exits.callback(stop_process_group, stack.sagemaker, timeout=60)  # and model servers
            # Nothing else may steer boto3 away from the profile (the parity rule: no endpoint_url).
            exits.enter_context(selected_profile(stack.env, hide=CREDENTIAL_VARIABLES))
            exits.callback(self.runtimes.clear)
            self._deploy()
            self._exits = exits.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._exits.close()

    def _deploy(self) -> None:
        import boto3
        from botocore.config import Config

        from scones.archives import pack_model

        started = time.monotonic()
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=self.bucket)
        archive = pack_model(self.model_dir, self.state_dir / "model.tar.gz")
        s3.upload_file(str(archive), self.bucket, "models/bench-serving/model.tar.gz")
        sagemaker = boto3.client("sagemaker")
        sagemaker.create_model(
            ModelName="bench-serving",
            PrimaryContainer={
                "Image": IMAGE,
                "ModelDataUrl": f"s3://{self.bucket}/models/bench-serving/model.tar.gz",
                "Environment": self.environment,
            },
            ExecutionRoleArn=ROLE,
        )
        variants = [
            {
                "VariantName": "AllTraffic",
                "ModelName": "bench-serving",
                "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.large",
            }
        ]
        configs: dict[str, dict[str, Any]] = {INVOKE_ENDPOINT: {}}
        if self.capture:
            configs[INVOKE_CAPTURE] = {
                "DataCaptureConfig": {
                    "EnableCapture": True,
                    "InitialSamplingPercentage": 100,
                    "DestinationS3Uri": f"s3://{self.bucket}/capture",
                    "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                    "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
                }
            }
        for row_name, extra in configs.items():
            name = "bench-serving-capture" if extra else "bench-serving"
            sagemaker.create_endpoint_config(
                EndpointConfigName=name, ProductionVariants=variants, **extra
            )
            sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name)
            self.endpoints[row_name] = name
        waiter = sagemaker.get_waiter("endpoint_in_service")
        for name in self.endpoints.values():
            waiter.wait(EndpointName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 180})
        self.seconds_to_in_service = time.monotonic() - started
        # One client per thread: no thread waits on another's connection pool. No retries, so a
        # failed call fails the run instead of hiding in the latencies.
        config = Config(max_pool_connections=2, retries={"total_max_attempts": 1}, read_timeout=120)
        self.runtimes = [
            boto3.client("sagemaker-runtime", config=config) for _ in range(self.clients)
        ]

    def check(self, payload: bytes) -> None:
        """One call per endpoint, its answer checked: the benchmark measures real predictions."""
        for name in self.endpoints.values():
            answer = self.runtimes[0].invoke_endpoint(
                EndpointName=name, ContentType="image/png", Accept="application/json", Body=payload
            )
            body = json.loads(answer["Body"].read())
            if "probabilities" not in body:
                raise RuntimeError(f"{name} answered {str(body)[:200]}")

    def rows(self, payload: bytes, levels: Sequence[int], requests: int) -> list[Row]:
        """sagemaker-local over plain HTTP, then InvokeEndpoint for every endpoint, at each C."""
        path = f"/endpoints/{self.endpoints[INVOKE_ENDPOINT]}/invocations"
        url = self.sagemaker_url
        rows = http_rows(SAGEMAKER_LOCAL_HTTP, url, payload, levels, requests, path=path)
        signed = boto3_request_headers(self.runtimes[0], self.endpoints[INVOKE_ENDPOINT], payload)
        rows += http_rows(
            SAGEMAKER_LOCAL_SIGNED, url, payload, levels, requests, path=path, headers=signed
        )
        for row_name, endpoint in self.endpoints.items():
            calls = [_endpoint_call(runtime, endpoint) for runtime in self.runtimes]
            rows += invoke_rows(row_name, calls, payload, levels, requests)
        return rows

    def captured_objects(self) -> int:
        """How many capture files the capture endpoint has written to S3 so far."""
        import boto3

        pages = boto3.client("s3").get_paginator("list_objects_v2")
        return sum(
            page.get("KeyCount", 0)
            for page in pages.paginate(Bucket=self.bucket, Prefix="capture/")
        )


def boto3_request_headers(runtime: Any, endpoint: str, payload: bytes) -> dict[str, str]:
    """The headers boto3 sends for one InvokeEndpoint of `payload` (signed), from a real call."""
    captured: dict[str, str] = {}

    def keep(request: Any, **_: Any) -> None:
        for key, value in request.headers.items():
            captured[key] = value.decode() if isinstance(value, bytes) else str(value)

    event = "before-send.sagemaker-runtime.InvokeEndpoint"
    runtime.meta.events.register_first(event, keep, unique_id="bench-serving-capture")
    try:
        _endpoint_call(runtime, endpoint)(payload)
    finally:
        runtime.meta.events.unregister(event, unique_id="bench-serving-capture")
    return captured


def _endpoint_call(runtime: Any, endpoint: str) -> Invoke:
    def call(body: bytes) -> bytes:
        answer = runtime.invoke_endpoint(
            EndpointName=endpoint, ContentType="image/png", Accept="application/json", Body=body
        )
        return bytes(answer["Body"].read())

    return call


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
        inference, management, metrics = free_port(), free_port(), free_port()
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
        "| path | concurrency | requests | req/s | p50 ms | p99 ms | mean batch "
        "| bench CPU ms/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.name} | {r.concurrency} | {r.requests} | {r.req_per_s:,.0f} | {r.p50_ms:.2f} "
        f"| {r.p99_ms:.2f} | {'' if r.mean_batch is None else f'{r.mean_batch:.1f}'} "
        f"| {'' if r.bench_cpu_ms is None else f'{r.bench_cpu_ms:.2f}'} |"
        for r in rows
    ]
    return "\n".join(lines)


def goals(raw: list[Row], served: list[Row], path: str) -> list[str]:
    """The two goals, checked for one served path."""
    floor, batched = raw[0], raw[1]
    c1 = min(served, key=lambda r: r.concurrency)
    c32 = next((r for r in served if r.concurrency == 32), max(served, key=lambda r: r.concurrency))
    gap = c1.p50_ms - floor.p50_ms
    share = c32.req_per_s / batched.req_per_s
    return [
        f"{path}: p50 at C={c1.concurrency} is {gap:+.2f} ms from the raw floor "
        f"(goal: within 2 ms): {'met' if gap <= 2 else 'NOT met'}",
        f"{path}: C={c32.concurrency} throughput is {share:.0%} of raw batched "
        f"(goal: >= 70%): {'met' if share >= 0.7 else 'NOT met'}",
    ]


def overhead(direct: list[Row], through: list[Row]) -> list[str]:
    """What a path adds over the direct server, concurrency by concurrency."""
    by_level = {r.concurrency: r for r in direct}
    return [
        f"{r.name} over direct at C={r.concurrency}: p50 {r.p50_ms - d.p50_ms:+.2f} ms, "
        f"p99 {r.p99_ms - d.p99_ms:+.2f} ms, throughput {r.req_per_s / d.req_per_s:.0%} of direct"
        for r in through
        if (d := by_level.get(r.concurrency))
    ]


def main(argv: list[str] | None = None, extra_rows: Sequence[ExtraRows] = ()) -> int:
    """Run the benchmark and print the table; extra_rows add more paths."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-dir", type=Path, help="default: the small CNN, random weights, in a temp dir"
    )
    parser.add_argument("--requests", type=int, default=600, help="per row and round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best of each row counts")
    parser.add_argument("--concurrency", default=",".join(map(str, LEVELS)))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads-per-worker", type=int, default=1, help="also raw's threads")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-batch-delay-ms", type=float, default=0.0)
    parser.add_argument(
        "--no-invoke-endpoint",
        dest="invoke_endpoint",
        action="store_false",
        help="skip the InvokeEndpoint rows (boto3 -> sagemaker-local -> model server)",
    )
    parser.add_argument(
        "--no-capture",
        dest="capture",
        action="store_false",
        help="skip the InvokeEndpoint row whose endpoint captures 100%% of the traffic",
    )
    parser.add_argument(
        "--torchserve",
        action="store_true",
        help="add TorchServe rows (needs `torchserve` and `torch-model-archiver` on PATH)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]

    load_before = os.getloadavg()[0]
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as services:
        model_dir = args.model_dir or write_small_cnn(Path(scratch))
        payload = png_32x32()
        raw_runner = RawRunner(model_dir, payload, args.max_batch_size, args.threads_per_worker)
        server_args = [
            "--workers", str(args.workers),
            "--threads-per-worker", str(args.threads_per_worker),
            "--max-batch-size", str(args.max_batch_size),
            "--max-batch-delay-ms", str(args.max_batch_delay_ms),
        ]  # fmt: skip
        server = services.enter_context(ServerProcess(model_dir, server_args))
        endpoints = None
        if args.invoke_endpoint:
            environment = container_environment(
                args.workers, args.threads_per_worker, args.max_batch_size, args.max_batch_delay_ms
            )
            endpoints = services.enter_context(
                EndpointStack(
                    Path(scratch) / "stack", model_dir, environment, args.capture, max(levels)
                )
            )
            endpoints.check(payload)
        rounds: list[list[Row]] = []
        # Interleaved rounds, best of each row: shared CPUs make single runs noisy.
        for _ in range(args.repeat):
            rounds.append(
                [raw_runner.bs1(args.requests), raw_runner.batched(args.requests)]
                + [server_row(server, payload, c, args.requests) for c in levels]
                + (endpoints.rows(payload, levels, args.requests) if endpoints else [])
            )
        measured = [best(measurements) for measurements in zip(*rounds, strict=True)]
        raw, served = measured[:2], measured[2 : 2 + len(levels)]
        invoked = measured[2 + len(levels) :]
        captured = endpoints.captured_objects() if endpoints and args.capture else None
        in_service_s = endpoints.seconds_to_in_service if endpoints else None
        extra = [row for rows in extra_rows for row in rows(payload, levels, args.requests)]
        if args.torchserve:
            extra += torchserve_rows(model_dir, payload, levels, args.requests,
                                     args.max_batch_size, args.max_batch_delay_ms,
                                     args.repeat)  # fmt: skip

    rows = raw + served + invoked + extra
    model_name = model_dir if args.model_dir else "small_cnn (model/, random weights)"
    print(f"model: {model_name}; payload: {len(payload)}-byte 32x32 PNG; server: "
          f"{' '.join(server_args)}; cpus: {len(os.sched_getaffinity(0))}; "
          f"load average before: {load_before:.1f}")  # fmt: skip
    if in_service_s is not None:
        print(f"endpoints InService {in_service_s:.1f} s after the stack was up "
              f"(bucket, pack, upload, create, wait)")  # fmt: skip
    print(table(rows))
    print(f"best of {args.repeat} interleaved rounds, {WARMUP} warm-up requests per client "
          f"(not timed); {time.monotonic() - started:.0f} s in all; load average after: "
          f"{os.getloadavg()[0]:.1f} (other processes slow every figure)")  # fmt: skip
    for line in goals(raw, served, "model server, HTTP"):
        print(line)
    for path in dict.fromkeys(r.name for r in invoked):
        path_rows = [r for r in invoked if r.name == path]
        for line in goals(raw, path_rows, path) + overhead(served, path_rows):
            print(line)
    if captured is not None:
        print(f"capture: {captured} files in S3 from the capture endpoint")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
