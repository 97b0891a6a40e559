"""The whole embedded stack killed with SIGKILL and started again: the redeploy changes nothing.

One real deploy (ETL, training through sagemaker-local, endpoint, Lambdas, state machine), one
execution, then kill -9 of the emulator and of sagemaker-local (and their children), a restart
of both on the same state folders, a second deploy that must find everything in place, and an
execution that must succeed with the restored functions, state machine and endpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from scones.deploy import Deployer, DeployOptions, DeployResult
from scones.settings import Settings
from tests.conftest import LocalStack, selected_profile, start_local_stack

pytestmark = pytest.mark.slow

OPTIONS = DeployOptions(rows_train=10_000, rows_test=2_000, waiter_delay_s=1)


def _kill9(stack: LocalStack) -> None:
    for process in (stack.sagemaker, stack.aws.process):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _execute(result: DeployResult, key: str) -> dict[str, Any]:
    sfn = boto3.client("stepfunctions")
    arn = sfn.start_execution(
        stateMachineArn=result.state_machine_arn,
        name=f"restart-{uuid.uuid4().hex[:12]}",
        input=json.dumps({"s3_bucket": result.bucket, "s3_key": key}),
    )["executionArn"]
    deadline = time.monotonic() + 180
    while (described := sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
        assert time.monotonic() < deadline, f"execution {arn} still running"
        time.sleep(0.1)
    return dict(described)


def _first_test_key(result: DeployResult) -> str:
    manifest = boto3.client("s3").get_object(
        Bucket=result.bucket, Key=f"{result.data_prefix}/test/manifest.jsonl"
    )["Body"]
    entry = json.loads(manifest.read().decode().splitlines()[0])
    return f"{result.data_prefix}/test/{entry['key']}"


def _histories(result: DeployResult) -> dict[str, list[Any]]:
    sfn = boto3.client("stepfunctions")
    executions = sfn.list_executions(stateMachineArn=result.state_machine_arn)["executions"]
    return {
        e["name"]: sfn.get_execution_history(executionArn=e["executionArn"])["events"]
        for e in executions
    }


def test_kill_9_of_every_service_then_up_changes_nothing(tmp_path: Path) -> None:
    stack_dir = tmp_path / "stack"
    settings = Settings(state_dir=tmp_path / "state", threshold=0.5, min_val_accuracy=0.7)
    lines: list[str] = []
    stack = start_local_stack(stack_dir)
    try:
        with selected_profile(stack.env):
            first = Deployer(settings, OPTIONS, echo=lines.append).deploy()
            key = _first_test_key(first)
            assert _execute(first, key)["status"] == "SUCCEEDED"
            before = _histories(first)
        _kill9(stack)

        stack = start_local_stack(stack_dir)
        with selected_profile(stack.env):
            assert _histories(first) == before
            lines.clear()
            again = Deployer(settings, OPTIONS, echo=lines.append).deploy()
            assert not again.changed, "\n".join(lines)
            assert again.state_machine_arn == first.state_machine_arn
            assert again.endpoint_config == first.endpoint_config
            assert again.training_job == first.training_job
            assert _execute(again, key)["status"] == "SUCCEEDED"
    finally:
        stack.stop()
