"""Benchmark of the embedded emulator: readiness, Lambda cold start and warm invoke, memory.

Latencies are reported next to a baseline measured in the same run (a plain moto API call
through the same client stack), since these machines are noisy.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import boto3

from scones.deploy.iam import trust
from scones.stack import stop_process_group as stop_process
from scones.testing import start_local_aws
from scones.testing_functions import create_function
from scones.testing_processes import children, rss_mb

HANDLER = "def handler(event, context):\n    return {'echo': event.get('n')}\n"


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    """Run the benchmark and print a table."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        emulator = start_local_aws(Path(tmp) / "state")
        ready_s = time.perf_counter() - started
        try:
            os.environ.update(emulator.env)
            rss_rest = rss_mb(emulator.process.pid)
            iam, lam = boto3.client("iam"), boto3.client("lambda")
            role = iam.create_role(
                RoleName="bench", AssumeRolePolicyDocument=trust("lambda.amazonaws.com")
            )["Role"]["Arn"]
            cold: list[float] = []
            for _ in range(5):
                name = f"cold-{uuid.uuid4().hex[:8]}"
                # Pending for a moment after CreateFunction, as on AWS; the cold start follows.
                create_function(lam, name, HANDLER, role)
                t = time.perf_counter()
                lam.invoke(FunctionName=name, Payload=b'{"n": 0}')
                cold.append((time.perf_counter() - t) * 1000)
            warm: list[float] = []
            baseline: list[float] = []
            for i in range(300):
                t = time.perf_counter()
                response = lam.invoke(FunctionName=name, Payload=json.dumps({"n": i}).encode())
                response["Payload"].read()
                warm.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                lam.get_function_configuration(FunctionName=name)
                baseline.append((time.perf_counter() - t) * 1000)
            workers = children(emulator.process.pid)
            rss_after = rss_mb(emulator.process.pid)
            worker_rss = [rss_mb(pid) for pid in workers]
        finally:
            stop_process(emulator.process)
    rows = [
        ("emulator ready (spawn -> health 200)", f"{ready_s * 1000:.0f} ms"),
        ("cold start invoke, median of 5", f"{statistics.median(cold):.1f} ms"),
        (
            "warm invoke p50 / p99 (n=300)",
            f"{_percentile(warm, 0.5):.2f} / {_percentile(warm, 0.99):.2f} ms",
        ),
        (
            "baseline GetFunctionConfiguration p50 / p99",
            f"{_percentile(baseline, 0.5):.2f} / {_percentile(baseline, 0.99):.2f} ms",
        ),
        (
            "warm invoke overhead over baseline (p50)",
            f"{_percentile(warm, 0.5) - _percentile(baseline, 0.5):.2f} ms "
            f"(ratio {_percentile(warm, 0.5) / _percentile(baseline, 0.5):.2f})",
        ),
        ("emulator RSS at rest", f"{rss_rest:.0f} MB"),
        ("emulator RSS after 6 functions", f"{rss_after:.0f} MB"),
        ("warm worker RSS (each)", f"{statistics.mean(worker_rss):.0f} MB x {len(worker_rss)}"),
    ]
    width = max(len(k) for k, _ in rows)
    print("local_aws benchmark")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


if __name__ == "__main__":
    main()
