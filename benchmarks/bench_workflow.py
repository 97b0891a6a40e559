"""Benchmark of the whole workflow on the embedded stack: latency and throughput of executions.

The three real Lambda zips and the real ASL are deployed to a fresh emulator; every execution reads
a small PNG from S3, classifies it and filters it. Two emulators are measured in the same run:
`baseline` (moto's Step Functions interpreter as shipped, `LOCAL_AWS_SFN_SPEEDUPS=0`) and
`speedups` (services/local_aws/stepfunctions_speedups.py), so the figures compare on one machine
under the same load.

The endpoint that classify_image calls is, by default, the InvokeEndpoint stand-in of the tests
(`scones.testing.SageMakerRuntimeStandIn`, in its own process, answering a fixed JSON); with
`BENCH_SAGEMAKER_LOCAL=1` it is the real `services.sagemaker_local` serving a tiny CNN through the
real model server. The output says which.

    python -m benchmarks.bench_workflow [--sequential 100] [--total 200] [--in-flight 16]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from scones.archives import reproducible_tar_gz
from scones.deploy.hosting import capture_config
from scones.stack import free_port, start_service, wait_for_health
from scones.stack import stop_process_group as stop_process
from scones.testing import create_workflow, start_local_aws
from scones.testing_models import tiny_inference_py, write_tiny_model
from services.local_aws.profile import write_profile

ENDPOINT_NAME = "scones-bench"
ANSWER = {"probabilities": [0.0125, 0.9875], "label": "motorcycle"}
SPEEDUPS_ENV = "LOCAL_AWS_SFN_SPEEDUPS"
TERMINAL_TIMEOUT_S = 120.0


# --- the endpoint classify_image calls -------------------------------------------------------


def _serve_stand_in(conn: Any) -> None:
    """Child process: the tests' InvokeEndpoint stand-in answering ANSWER for ENDPOINT_NAME."""
    from scones.testing_sagemaker import SageMakerRuntimeStandIn

    stand_in = SageMakerRuntimeStandIn()
    stand_in.answer_json(ENDPOINT_NAME, ANSWER)
    stand_in.requests = _Discard()  # type: ignore[assignment]  # keep memory flat
    conn.send(stand_in.url)
    stand_in.server.serve_forever()


class _Discard(list[Any]):
    def append(self, item: Any) -> None:
        pass


@contextlib.contextmanager
def stand_in_endpoint() -> Iterator[str]:
    """The stand-in in a child process (not competing for this process's GIL); yields its URL."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve_stand_in, args=(child,), daemon=True)
    process.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("the InvokeEndpoint stand-in did not start")
        yield parent.recv()
    finally:
        process.terminate()
        process.join(10)


INFERENCE_PY = tiny_inference_py(
    """
    def model_fn(model_dir):
        torch.set_num_threads(1)
        return build_model(model_dir)


    def input_fn(body, content_type):
        return decode_image(body, size=(32, 32))


    def predict_fn(data, model):
        # Keeps the batch dimension: the model server batches concurrent requests and splits rows.
        with torch.no_grad():
            return torch.softmax(model(data), dim=1)


    def output_fn(prediction, accept):
        probabilities = [float(p) for p in prediction.reshape(-1, prediction.shape[-1])[0]]
        labels = ["bicycle", "motorcycle"]
        best = max(range(len(probabilities)), key=probabilities.__getitem__)
        answer = {"probabilities": probabilities, "label": labels[best]}
        return json.dumps(answer), "application/json"
    """
)


@contextlib.contextmanager
def sagemaker_local_endpoint(emulator_url: str, state_dir: Path, bucket: str) -> Iterator[str]:
    """The real sagemaker-local serving a tiny CNN as ENDPOINT_NAME; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = write_profile(state_dir / "sm-profile", emulator_url, sagemaker_endpoint=url)
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    boto3.setup_default_session()  # sagemaker now goes to sagemaker-local, not the emulator
    log_path = state_dir / "sagemaker-local.log"
    args = ["--port", str(port), "--state-dir", str(state_dir / "sagemaker")]
    process = start_service("services.sagemaker_local", args, log_path, dict(os.environ))
    try:
        wait_for_health(f"{url}/_health", process, log_path, timeout_s=120)
        model_dir = state_dir / "model"
        write_tiny_model(model_dir, INFERENCE_PY, channels=8, classes=2)
        boto3.client("s3").put_object(
            Bucket=bucket,
            Key="models/bench/model.tar.gz",
            Body=reproducible_tar_gz(model_dir, lambda p: "__pycache__" not in p.parts),
        )
        sm = boto3.client("sagemaker")
        sm.create_model(
            ModelName=ENDPOINT_NAME,
            PrimaryContainer={
                "Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/scones-model-server:latest",
                "ModelDataUrl": f"s3://{bucket}/models/bench/model.tar.gz",
            },
            ExecutionRoleArn="arn:aws:iam::123456789012:role/bench",
        )
        sm.create_endpoint_config(
            EndpointConfigName=ENDPOINT_NAME,
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": ENDPOINT_NAME,
                    "InitialInstanceCount": 1,
                    "InstanceType": "ml.m5.large",
                }
            ],
            # As the deploy configures it: every inference captured.
            DataCaptureConfig=capture_config(f"s3://{bucket}/capture"),
        )
        sm.create_endpoint(EndpointName=ENDPOINT_NAME, EndpointConfigName=ENDPOINT_NAME)
        sm.get_waiter("endpoint_in_service").wait(
            EndpointName=ENDPOINT_NAME, WaiterConfig={"Delay": 1, "MaxAttempts": 180}
        )
        yield url
    finally:
        stop_process(process, timeout=60)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        boto3.setup_default_session()


# --- the workflow ----------------------------------------------------------------------------


def png(seed: int = 0) -> bytes:
    """A 32x32 PNG, the size of a CIFAR-100 test image."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (seed % 256, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class Run:
    """One execution as the client and the service saw it."""

    status: str
    client_ms: float
    service_ms: float
    polls: int
    error: str | None = None


@dataclass
class Deployment:
    """The three functions and the state machine in one emulator."""

    machine_arn: str
    bucket: str
    key: str
    sfn: Any = field(repr=False)

    def run(self, poll: Poller) -> Run:
        """Start one execution and poll it to its terminal status."""
        started = time.perf_counter()
        arn = self.sfn.start_execution(
            stateMachineArn=self.machine_arn,
            name=f"bench-{uuid.uuid4().hex}",
            input=json.dumps({"s3_bucket": self.bucket, "s3_key": self.key}),
        )["executionArn"]
        done = poll.follow(self.sfn, arn, started)
        described = done.described
        error = described.get("error")
        if error:
            error = f"{error}: {described.get('cause', '')[:300]}"
        return Run(described["status"], done.client_ms, done.service_ms, done.polls, error)


@dataclass
class Followed:
    """An execution polled to its end: its description, the polls, client and service time."""

    described: dict[str, Any]
    polls: int
    client_ms: float
    service_ms: float


class Poller:
    """Polling delays: the first poll near the expected finish, then short steps (adaptive)."""

    def __init__(self, step_s: float = 0.004, max_step_s: float = 0.02) -> None:
        self.step_s = step_s
        self.max_step_s = max_step_s
        self._recent: list[float] = []
        self._lock = threading.Lock()

    def observe(self, service_ms: float) -> None:
        """Remember a completed execution's duration as the service measured it."""
        with self._lock:
            self._recent = [*self._recent[-49:], service_ms]

    def follow(
        self, sfn: Any, arn: str, started: float, timeout_s: float = TERMINAL_TIMEOUT_S
    ) -> Followed:
        """Poll the execution `arn`, started at perf_counter() `started`, to its end."""
        polls = 0
        deadline = started + timeout_s
        for delay in self.delays():
            time.sleep(delay)
            described = sfn.describe_execution(executionArn=arn)
            polls += 1
            if described["status"] != "RUNNING":
                break
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{arn} still RUNNING after {timeout_s}s")
        client_ms = (time.perf_counter() - started) * 1000
        service_ms = (described["stopDate"] - described["startDate"]).total_seconds() * 1000
        self.observe(service_ms)
        return Followed(dict(described), polls, client_ms, service_ms)

    def delays(self) -> Iterator[float]:
        """Seconds to sleep before each describe_execution."""
        with self._lock:
            recent = sorted(self._recent)
        # Start polling a little before the fastest recent execution would end (the service's
        # own durations: the client's include the polling and would feed back into it).
        yield (0.8 * recent[len(recent) // 10] / 1000) if recent else self.step_s
        step = self.step_s
        while True:
            yield step
            step = min(self.max_step_s, step * 1.5)


def deploy(endpoint_url: str, suffix: str) -> Deployment:
    """Create the bucket, the image, the three functions and the state machine."""
    sfn = boto3.client("stepfunctions", config=Config(max_pool_connections=64))
    bucket = f"scones-bench-{suffix}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    key = "test/bench.png"
    s3.put_object(Bucket=bucket, Key=key, Body=png())
    environments = {
        "classify_image": {
            "ENDPOINT_NAME": ENDPOINT_NAME,
            "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": endpoint_url,
        },
        # Every execution passes the filter (the untrained two-class CNN is ~0.6 sure): the
        # benchmark measures the whole successful path.
        "filter_inferences": {"THRESHOLD": "0.5"},
    }
    machine = create_workflow(suffix, bucket, environments).machine_arn
    return Deployment(machine, bucket, key, sfn)


# --- measuring -------------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of the samples."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


@dataclass
class Figures:
    """What one emulator measured."""

    mode: str
    sequential: list[Run]
    concurrent: list[Run]
    concurrent_wall_s: float
    emulator_cpu_s: float

    def row(self) -> dict[str, float]:
        """The summary numbers."""
        client = [r.client_ms for r in self.sequential]
        service = [r.service_ms for r in self.sequential]
        loaded = [r.client_ms for r in self.concurrent]
        return {
            "p50_service_ms": statistics.median(service),
            "p99_service_ms": percentile(service, 0.99),
            "p50_client_ms": statistics.median(client),
            "p99_client_ms": percentile(client, 0.99),
            "polls_per_exec": statistics.mean(r.polls for r in self.sequential),
            "exec_per_s": len(self.concurrent) / self.concurrent_wall_s,
            "p50_loaded_ms": statistics.median(loaded),
            "p99_loaded_ms": percentile(loaded, 0.99),
            "emulator_cpu_ms_per_exec": 1000
            * self.emulator_cpu_s
            / (len(self.sequential) + len(self.concurrent)),
        }


METRICS = {
    "p50_service_ms": "latency p50, service (start->stop) ms",
    "p99_service_ms": "latency p99, service ms",
    "p50_client_ms": "latency p50, client-observed ms",
    "p99_client_ms": "latency p99, client-observed ms",
    "polls_per_exec": "describe_execution calls per execution",
    "exec_per_s": "executions/s with --in-flight running",
    "p50_loaded_ms": "latency p50 under that load, client ms",
    "p99_loaded_ms": "latency p99 under that load, client ms",
    "emulator_cpu_ms_per_exec": "emulator CPU ms per execution",
}
# The goals of the workflow issue (warm, on the 2-core development machine).
GOALS = (
    ("p50_client_ms", "p50", "<= 150 ms", lambda value: value <= 150),
    ("exec_per_s", "throughput", ">= 20/s", lambda value: value >= 20),
)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    mode: str, args: argparse.Namespace, endpoint: Callable[[str, Path, str], Any]
) -> Figures:
    """Start an emulator in `mode`, deploy, warm up, then measure sequential and concurrent runs."""
    os.environ[SPEEDUPS_ENV] = "1" if mode == "speedups" else "0"
    with tempfile.TemporaryDirectory() as tmp:
        emulator = start_local_aws(Path(tmp) / "state")
        saved = {name: os.environ.get(name) for name in emulator.env}
        os.environ.update(emulator.env)
        # The default session read the previous emulator's profile; read this one's.
        boto3.setup_default_session()
        try:
            suffix = uuid.uuid4().hex[:8]
            bucket_for_models = f"scones-bench-models-{suffix}"
            boto3.client("s3").create_bucket(Bucket=bucket_for_models)
            with endpoint(emulator.endpoint_url, Path(tmp), bucket_for_models) as endpoint_url:
                deployment = deploy(endpoint_url, suffix)
                alone, loaded = Poller(), Poller()
                with ThreadPoolExecutor(args.in_flight) as pool:
                    # Warm: a worker per function for every execution in flight, caches filled.
                    warm = list(
                        pool.map(lambda _: deployment.run(loaded), range(2 * args.in_flight))
                    )
                    warm += [deployment.run(alone) for _ in range(5)]
                    failed = [r for r in warm if r.status != "SUCCEEDED"]
                    if failed:
                        raise RuntimeError(f"warm-up executions failed: {failed[:3]}")
                    cpu_before = _cpu_seconds(emulator.process.pid)
                    sequential = [deployment.run(alone) for _ in range(args.sequential)]
                    started = time.perf_counter()
                    concurrent = list(pool.map(lambda _: deployment.run(loaded), range(args.total)))
                    wall = time.perf_counter() - started
                    cpu = _cpu_seconds(emulator.process.pid) - cpu_before
                statuses = {r.status for r in sequential + concurrent}
                if statuses != {"SUCCEEDED"}:
                    raise RuntimeError(f"{mode}: executions ended {statuses}\n{emulator.log()}")
                return Figures(mode, sequential, concurrent, wall, cpu)
        finally:
            stop_process(emulator.process)
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _stand_in(emulator_url: str, state_dir: Path, bucket: str) -> Any:
    return stand_in_endpoint()


def main(argv: list[str] | None = None) -> None:
    """Measure each mode and print a before/after table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_workflow")
    parser.add_argument("--sequential", type=int, default=100, help="sequential executions")
    parser.add_argument("--total", type=int, default=200, help="executions in the load test")
    parser.add_argument("--in-flight", type=int, default=16, help="executions in flight")
    parser.add_argument(
        "--modes", default="baseline,speedups", help="comma-separated: baseline, speedups"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    real = os.environ.get("BENCH_SAGEMAKER_LOCAL") == "1"
    endpoint = sagemaker_local_endpoint if real else _stand_in
    label = (
        "sagemaker-local + model server (tiny CNN)"
        if real
        else "InvokeEndpoint STAND-IN (scones.testing, fixed answer; no model)"
    )
    print(f"endpoint: {label}")
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
        f"{args.sequential} sequential, {args.total} with {args.in_flight} in flight"
    )
    results = []
    for mode in args.modes.split(","):
        figures = measure(mode.strip(), args, endpoint)
        results.append(figures)
        print(f"  {mode}: done", flush=True)
    rows = {figures.mode: figures.row() for figures in results}
    print(f"\n{'':<40}" + "".join(f"{mode:>12}" for mode in rows))
    for metric, title in METRICS.items():
        print(f"{title:<40}" + "".join(f"{row[metric]:>12.1f}" for row in rows.values()))
    for mode, row in rows.items():
        verdicts = [
            f"{title} {row[metric]:.1f} {'meets' if ok(row[metric]) else 'MISSES'} {goal}"
            for metric, title, goal, ok in GOALS
        ]
        print(f"{mode}: " + "; ".join(verdicts))
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(
            json.dumps({"endpoint": label, "figures": {f.mode: f.row() for f in results}}, indent=2)
        )


if __name__ == "__main__":
    main()
