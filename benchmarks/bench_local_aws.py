"""Benchmark of the embedded emulator: readiness, Lambda cold start and warm invoke, memory.

Latencies are reported next to a baseline measured in the same run (a plain moto API call
through the same client stack), since these machines are noisy.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

import boto3

from scones.deploy.iam import trust
from scones.stack import stop_process_group as stop_process
from scones.testing import start_local_aws

HANDLER = "def handler(event, context):\n    return {'echo': event.get('n')}\n"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", HANDLER)
    return buffer.getvalue()


def main() -> None:
    """Run the benchmark and print a table."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        emulator = start_local_aws(Path(tmp) / "state")
        ready_s = time.perf_counter() - started
        try:
            os.environ.update(emulator.env)
            rss_rest = _rss_mb(emulator.process.pid)
            iam, lam = boto3.client("iam"), boto3.client("lambda")
            role = iam.create_role(
                RoleName="bench", AssumeRolePolicyDocument=trust("lambda.amazonaws.com")
            )["Role"]["Arn"]
            cold: list[float] = []
            for _ in range(5):
                name = f"cold-{uuid.uuid4().hex[:8]}"
                lam.create_function(
                    FunctionName=name,
                    Runtime="python3.11",
                    Role=role,
                    Handler="app.handler",
                    Code={"ZipFile": _zip()},
                )
                # Pending for a moment after CreateFunction, as on AWS; the cold start follows.
                lam.get_waiter("function_active_v2").wait(
                    FunctionName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
                )
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
            workers = _children(emulator.process.pid)
            rss_after = _rss_mb(emulator.process.pid)
            worker_rss = [_rss_mb(pid) for pid in workers]
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
