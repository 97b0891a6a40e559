"""Benchmark of emulator persistence: PUT latency against in-memory, start-up with many objects.

All figures come from one run, persistence on and off side by side (these machines are noisy):
PUT latency (1 KiB objects, one client, median and p95) with persistence off, on, and on with
`--objects` objects already stored; StartExecution latency off and on; then the time until the
emulator is ready again after kill -9 (snapshot + journal replay) and after a clean stop
(snapshot only), next to an empty in-memory start.

    .venv/bin/python -m benchmarks.bench_persistence [--objects 10000] [--puts 300]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.latency import latency_summary
from scones.deploy.iam import trust
from scones.stack import stop_process_group as stop_process
from scones.testing import LocalAws, start_local_aws


def _put_latencies(aws: LocalAws, bucket: str, count: int) -> list[float]:
    s3 = aws.client("s3")
    body = os.urandom(1024)
    samples = []
    for i in range(count):
        started = time.perf_counter()
        s3.put_object(Bucket=bucket, Key=f"latency/{i:06d}", Body=body)
        samples.append((time.perf_counter() - started) * 1000)
    return samples[10:]  # the first requests warm connections and code paths


def _start_latencies(aws: LocalAws, count: int) -> list[float]:
    """StartExecution of a two-Pass machine; executions accumulate (each start journals one)."""
    sfn = aws.client("stepfunctions")
    definition = {
        "StartAt": "A",
        "States": {"A": {"Type": "Pass", "Next": "B"}, "B": {"Type": "Pass", "End": True}},
    }
    # CreateStateMachine checks that Step Functions may assume the role, as AWS.
    role_arn = aws.client("iam").create_role(
        RoleName="bench",
        AssumeRolePolicyDocument=trust("states.amazonaws.com"),
    )["Role"]["Arn"]
    machine = sfn.create_state_machine(
        name="bench",
        roleArn=role_arn,
        definition=json.dumps(definition),
    )["stateMachineArn"]
    samples = []
    for i in range(count):
        started = time.perf_counter()
        sfn.start_execution(stateMachineArn=machine, name=f"e{i}", input="{}")
        samples.append((time.perf_counter() - started) * 1000)
    return samples[10:]


def _fill(aws: LocalAws, bucket: str, count: int) -> float:
    s3 = aws.client("s3")
    body = os.urandom(1024)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=bucket, Key=f"fill/{i:06d}", Body=body),
                      range(count)))  # fmt: skip
    return time.perf_counter() - started


def _timed_start(state_dir: Path, args: list[str]) -> tuple[LocalAws, float]:
    started = time.perf_counter()
    aws = start_local_aws(state_dir, args)
    return aws, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--puts", type=int, default=300)
    args = parser.parse_args()
    results: dict[str, Any] = {"objects": args.objects}
    with tempfile.TemporaryDirectory() as tmp:
        memory_dir, persist_dir = Path(tmp) / "memory", Path(tmp) / "persist"
        aws, results["start_empty_in_memory_s"] = _timed_start(memory_dir, ["--no-persist"])
        try:
            aws.client("s3").create_bucket(Bucket="bench")
            memory = _put_latencies(aws, "bench", args.puts)
            memory_starts = _start_latencies(aws, args.puts)
        finally:
            stop_process(aws.process)
        aws, results["start_empty_persisted_s"] = _timed_start(persist_dir, [])
        try:
            aws.client("s3").create_bucket(Bucket="bench")
            persisted = _put_latencies(aws, "bench", args.puts)
            persisted_starts = _start_latencies(aws, args.puts)
            results["fill_s"] = round(_fill(aws, "bench", args.objects), 1)
            full = _put_latencies(aws, "bench", args.puts)
            os.killpg(aws.process.pid, signal.SIGKILL)
            aws.process.wait()
        finally:
            stop_process(aws.process)
        results["put_in_memory"] = latency_summary(memory)
        results["put_persisted"] = latency_summary(persisted)
        results["put_persisted_with_objects"] = latency_summary(full)
        results["put_median_ratio"] = round(
            results["put_persisted"]["median_ms"] / results["put_in_memory"]["median_ms"], 2
        )
        results["start_execution_in_memory"] = latency_summary(memory_starts)
        results["start_execution_persisted"] = latency_summary(persisted_starts)
        results["start_execution_median_ratio"] = round(
            results["start_execution_persisted"]["median_ms"]
            / results["start_execution_in_memory"]["median_ms"],
            2,
        )
        journal = sum(p.stat().st_size for p in (persist_dir / "persist" / "s3").glob("journal.*"))
        results["journal_mb"] = round(journal / 2**20, 2)
        aws, results["start_after_kill9_s"] = _timed_start(persist_dir, [])
        try:
            keys = aws.client("s3").list_objects_v2(Bucket="bench", Prefix="fill/")["KeyCount"]
            results["restored_keys_first_page"] = keys
        finally:
            stop_process(aws.process)  # a clean stop writes a snapshot and empties the journal
        aws, results["start_after_clean_stop_s"] = _timed_start(persist_dir, [])
        try:
            health = aws.client("s3").meta.endpoint_url + "/_local_aws/health"
            import urllib.request

            with urllib.request.urlopen(health, timeout=10) as response:
                results["restored"] = json.loads(response.read())["restored"]
        finally:
            stop_process(aws.process)
        snapshot = persist_dir / "persist" / "s3" / "snapshot.pkl"
        results["snapshot_mb"] = round(snapshot.stat().st_size / 2**20, 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
