"""The tail under a burst: executions started right after a deploy, on a freshly started stack.

Each mode starts its own stack (emulator + sagemaker-local), deploys the real workflow with the
deploy's own code (ETL of a small synthetic archive, a short real training job, the endpoint
with the real model server and data capture, the three Lambdas behind their `live` alias, the
state machine), and at once runs `--executions` executions with `--in-flight` of them running,
on the test images in turn. Modes differ only in `SCONES_PROVISIONED_CONCURRENCY`:

- `provisioned`: the deploy's default on the local stack (environments initialised ahead);
- `on-demand`: 0, every environment the burst needs is cold-started inside it;
- `wide`: 16 per function, as many as the emulator lets one function run at once.

The executions are followed as `scones.testcases` follows them (`scones.execution_watch`: one
ListExecutions per tick for all in flight, one DescribeExecution per execution once it has
left the RUNNING list): 1.4 status calls per execution where polling each one every 10-50 ms
made 12, and half the client's CPU per execution (8.5 -> 3.9 ms, measured side by side).

Reported per mode: client-observed latency p50/p99 (start -> terminal status seen) and p99/p50,
the service's own (startDate -> stopDate), executions/s, emulator CPU ms per execution
(/proc/PID/stat utime+stime over the burst), Lambda environments started during the burst, and
where the slowest 1 % spent their time (per state, from their execution histories).

    python -m benchmarks.bench_burst [--executions 600] [--in-flight 32] [--modes ...]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.bench_workflow import _cpu_seconds, percentile
from scones.deploy import Deployer, DeployOptions
from scones.deploy.functions import LOCAL_PROVISIONED
from scones.execution_watch import ExecutionWatch
from scones.settings import Settings
from scones.testing import reset_boto3, selected_profile, start_local_stack
from scones.testing_deploy import manifest_keys
from scones.testing_processes import descendants, pss_mb

TERMINAL_TIMEOUT_S = 300.0
# A short training run: the model's accuracy is not what is measured, its serving is.
OPTIONS = DeployOptions(rows_train=2_000, rows_test=10_000, epochs=1, waiter_delay_s=1)
# `wide`: the emulator's per-function cap (LOCAL_AWS_LAMBDA_CONCURRENCY), a burst's whole width.
MODES = {"provisioned": str(LOCAL_PROVISIONED), "on-demand": "0", "wide": "16"}
GOALS = (
    ("p99_over_p50", "p99/p50", "<= 3", lambda value: value <= 3),
    ("failed", "failures", "== 0", lambda value: value == 0),
)


@dataclass
class Run:
    """One execution as the client and the service saw it."""

    arn: str
    status: str
    client_ms: float
    service_ms: float
    started_at: float  # seconds after the burst began


@dataclass
class Burst:
    """One mode's burst."""

    mode: str
    runs: list[Run]
    wall_s: float
    emulator_cpu_s: float
    environments_started: int
    deploy_s: float
    # CPU seconds over the burst: emulator's Lambda environments, sagemaker-local and its model
    # server, this client (boto3 start/describe calls); PSS of the environments after it.
    lambda_cpu_s: float = 0.0
    sagemaker_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    environments_pss_mb: float = 0.0
    status_calls: int = 0  # ListExecutions + DescribeExecution calls of the watch
    slowest: dict[str, float] = field(default_factory=dict)
    retried_errors: list[str] = field(default_factory=list)

    def row(self) -> dict[str, float]:
        """The summary numbers."""
        client = [r.client_ms for r in self.runs]
        service = [r.service_ms for r in self.runs]
        p50, p99 = statistics.median(client), percentile(client, 0.99)
        return {
            "p50_ms": p50,
            "p99_ms": p99,
            "p99_over_p50": p99 / p50,
            "p50_service_ms": statistics.median(service),
            "p99_service_ms": percentile(service, 0.99),
            "exec_per_s": len(self.runs) / self.wall_s,
            "emulator_cpu_ms_per_exec": 1000 * self.emulator_cpu_s / len(self.runs),
            "environments_started": float(self.environments_started),
            "failed": float(sum(r.status != "SUCCEEDED" for r in self.runs)),
            "lambda_cpu_ms_per_exec": 1000 * self.lambda_cpu_s / len(self.runs),
            "sagemaker_cpu_ms_per_exec": 1000 * self.sagemaker_cpu_s / len(self.runs),
            "client_cpu_ms_per_exec": 1000 * self.client_cpu_s / len(self.runs),
            "environments_pss_mb": self.environments_pss_mb,
            "status_calls_per_exec": self.status_calls / len(self.runs),
            "deploy_s": self.deploy_s,
        }


METRICS = {
    "p50_ms": "latency p50, client ms",
    "p99_ms": "latency p99, client ms",
    "p99_over_p50": "p99 / p50",
    "p50_service_ms": "latency p50, service ms",
    "p99_service_ms": "latency p99, service ms",
    "exec_per_s": "executions/s",
    "emulator_cpu_ms_per_exec": "emulator CPU ms per execution",
    "environments_started": "Lambda environments started in the burst",
    "failed": "executions not SUCCEEDED",
    "lambda_cpu_ms_per_exec": "Lambda environments' CPU ms per execution",
    "sagemaker_cpu_ms_per_exec": "sagemaker-local + model server CPU ms per exec",
    "client_cpu_ms_per_exec": "this client's CPU ms per execution",
    "environments_pss_mb": "PSS of all Lambda environments after, MB",
    "status_calls_per_exec": "ListExecutions + DescribeExecution calls per execution",
    "deploy_s": "deploy (incl. training) s",
}


def _tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each process below `pid` (not `pid` itself)."""
    found = {}
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            found[child] = _cpu_seconds(child)
    return found


def _spent(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def _lambda_workers(endpoint_url: str) -> int:
    with urllib.request.urlopen(f"{endpoint_url}/_local_aws/health", timeout=10) as answer:
        return int(json.loads(answer.read())["lambda_workers"])


def _execute(sfn: Any, watch: ExecutionWatch, bucket: str, key: str, t0: float) -> Run:
    started = time.perf_counter()
    arn = sfn.start_execution(
        stateMachineArn=watch.state_machine_arn,
        name=f"burst-{uuid.uuid4().hex}",
        input=json.dumps({"s3_bucket": bucket, "s3_key": key}),
    )["executionArn"]
    described = watch.follow(arn, TERMINAL_TIMEOUT_S)
    client_ms = (time.perf_counter() - started) * 1000
    if described["status"] == "RUNNING":
        raise TimeoutError(f"{arn} still RUNNING after {TERMINAL_TIMEOUT_S}s")
    service_ms = (described["stopDate"] - described["startDate"]).total_seconds() * 1000
    return Run(arn, described["status"], client_ms, service_ms, started - t0)


def where_the_slowest_went(sfn: Any, runs: list[Run]) -> tuple[dict[str, float], list[str]]:
    """Median ms per state (entered -> exited) of the slowest 1 % of executions, and the errors
    their tasks failed with before a retry (if any)."""
    slowest = sorted(runs, key=lambda r: r.client_ms)[-max(1, len(runs) // 100) :]
    per_state: dict[str, list[float]] = {}
    errors: list[str] = []
    for run in slowest:
        events = sfn.get_execution_history(executionArn=run.arn, maxResults=1000)["events"]
        entered: dict[str, Any] = {}
        for event in events:
            details = event.get("taskFailedEventDetails") or event.get(
                "lambdaFunctionFailedEventDetails"
            )
            if details:
                errors.append(str(details.get("error")))
            if event["type"].endswith("StateEntered"):
                entered[event["stateEnteredEventDetails"]["name"]] = event["timestamp"]
            elif event["type"].endswith("StateExited"):
                name = event["stateExitedEventDetails"]["name"]
                if name in entered:
                    spent = (event["timestamp"] - entered.pop(name)).total_seconds() * 1000
                    per_state.setdefault(name, []).append(spent)
        per_state.setdefault("(burst second it started)", []).append(run.started_at * 1000)
    return {name: statistics.median(values) for name, values in per_state.items()}, errors


def _py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling the emulator (never pausing it) until SIGINT, raw stacks."""
    spy = str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        spy = shutil.which("py-spy") or "py-spy"
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--output",
            str(out),
            "--rate",
            "50",
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@dataclass
class Deployed:
    """A fresh stack with the workflow deployed on it."""

    stack: Any
    machine: str
    bucket: str
    keys: list[str]
    deploy_s: float


@contextlib.contextmanager
def deployed(mode: str) -> Iterator[Deployed]:
    """A fresh stack (emulator + sagemaker-local) and the deploy of `mode`, stopped after."""
    with tempfile.TemporaryDirectory() as tmp:
        stack = start_local_stack(Path(tmp) / "stack")
        try:
            with selected_profile(stack.env):
                reset_boto3()
                settings = Settings(
                    state_dir=Path(tmp) / "deploy",
                    threshold=0.5,  # every two-class inference passes: the whole path measured
                    min_val_accuracy=0.0,
                    provisioned_concurrency=MODES[mode],
                )
                lines: list[str] = []
                deploy_started = time.perf_counter()
                output = io.StringIO()  # the ETL's progress bars: shown only if it fails
                try:
                    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
                        result = Deployer(settings, OPTIONS, echo=lines.append).deploy()
                except Exception:
                    print("\n".join(lines), output.getvalue())
                    raise
                deploy_s = time.perf_counter() - deploy_started
                yield Deployed(
                    stack, result.state_machine_arn, result.bucket, manifest_keys(result), deploy_s
                )
        finally:
            stack.stop()
            reset_boto3()


def burst(mode: str, deployment: Deployed, args: argparse.Namespace) -> Burst:
    """`args.executions` executions, `args.in_flight` at a time, on the deployed workflow."""
    import boto3
    from botocore.config import Config

    stack = deployment.stack
    sfn = boto3.client("stepfunctions", config=Config(max_pool_connections=64))
    machine, bucket, keys = deployment.machine, deployment.bucket, deployment.keys
    pid = stack.aws.process.pid
    workers_before = _lambda_workers(stack.aws.endpoint_url)
    # One ListExecutions per tick for all in flight, one DescribeExecution per execution.
    watch = ExecutionWatch(sfn, machine)
    profiler = _py_spy(pid, args.profile) if args.profile else None
    cpu_before = _cpu_seconds(pid)
    lambdas_before, sagemaker_pid = _tree_cpu(pid), stack.sagemaker.pid
    sagemaker_before = {sagemaker_pid: _cpu_seconds(sagemaker_pid)}
    sagemaker_before.update(_tree_cpu(sagemaker_pid))
    client_before = sum(os.times()[:2])
    t0 = time.perf_counter()
    with watch, ThreadPoolExecutor(args.in_flight) as pool:
        runs = list(
            pool.map(
                lambda i: _execute(sfn, watch, bucket, keys[i % len(keys)], t0),
                range(args.executions),
            )
        )
    wall = time.perf_counter() - t0
    cpu = _cpu_seconds(pid) - cpu_before
    client_cpu = sum(os.times()[:2]) - client_before
    lambdas = _spent(lambdas_before, _tree_cpu(pid))
    sagemaker_after = {sagemaker_pid: _cpu_seconds(sagemaker_pid)}
    sagemaker_after.update(_tree_cpu(sagemaker_pid))
    sagemaker = _spent(sagemaker_before, sagemaker_after)
    environments_pss = sum(pss_mb(child) for child in descendants(pid))
    if profiler is not None:
        profiler.send_signal(2)  # py-spy writes its file on SIGINT
        profiler.wait(60)
    started = _lambda_workers(stack.aws.endpoint_url) - workers_before
    result = Burst(mode, runs, wall, cpu, started, deployment.deploy_s)
    result.lambda_cpu_s, result.sagemaker_cpu_s = lambdas, sagemaker
    result.client_cpu_s, result.environments_pss_mb = client_cpu, environments_pss
    result.status_calls = watch.list_calls + watch.describe_calls
    result.slowest, result.retried_errors = where_the_slowest_went(sfn, runs)
    return result


def measure(mode: str, args: argparse.Namespace) -> Burst:
    """A fresh stack, the deploy, then the burst."""
    with deployed(mode) as deployment:
        return burst(mode, deployment, args)


def summary_rows(executions: int, in_flight: int) -> dict[str, float]:
    """The provisioned mode's figures under bench_summary's keys (`make bench`'s table)."""
    args = argparse.Namespace(executions=executions, in_flight=in_flight, profile=None)
    row = measure("provisioned", args).row()
    return {
        "burst_p99_over_p50": row["p99_over_p50"],
        "burst_p99_ms": row["p99_ms"],
        "burst_exec_per_s": row["exec_per_s"],
        "burst_cpu_ms": row["emulator_cpu_ms_per_exec"],
        "burst_failed": row["failed"],
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Measure each mode; print one table, the goals and where the slowest executions went."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_burst")
    parser.add_argument("--executions", type=int, default=600)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--modes", default="provisioned,on-demand", help="comma-separated")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--profile", type=Path, help="py-spy the emulator in the burst (raw)")
    args = parser.parse_args(argv)
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
        f"{args.executions} executions, {args.in_flight} in flight, right after the deploy"
    )
    bursts = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        bursts.append(measure(mode, args))
        print(f"  {mode}: done (load average {os.getloadavg()[0]:.2f})", flush=True)
    rows = {burst.mode: burst.row() for burst in bursts}
    print(f"\n{'':<44}" + "".join(f"{mode:>13}" for mode in rows))
    for metric, title in METRICS.items():
        print(f"{title:<44}" + "".join(f"{row[metric]:>13.1f}" for row in rows.values()))
    for burst in bursts:
        row = rows[burst.mode]
        verdicts = [
            f"{title} {row[metric]:.2f} {'meets' if ok(row[metric]) else 'MISSES'} {goal}"
            for metric, title, goal, ok in GOALS
        ]
        print(f"{burst.mode}: " + "; ".join(verdicts))
        spent = ", ".join(f"{name} {ms:.0f}" for name, ms in burst.slowest.items())
        print(f"  slowest 1 %, median ms per state: {spent}")
        retried = ", ".join(sorted(set(burst.retried_errors))) or "none"
        print(f"  slowest 1 %: {len(burst.retried_errors)} failed task attempts ({retried})")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
