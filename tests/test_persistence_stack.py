"""The whole embedded stack killed with SIGKILL and started again: the redeploy changes nothing.

One real deploy (ETL, training through sagemaker-local, endpoint, Lambdas, state machine), one
execution, then kill -9 of the emulator and of sagemaker-local (and their children), a restart
of both on the same state folders, a second deploy that must find everything in place, and an
execution that must succeed with the restored functions, state machine and endpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import boto3
import pytest

from scones.deploy import DeployResult
from scones.settings import Settings
from scones.testing_deploy import deploy, execute, manifest_keys
from tests.conftest import LocalStack, selected_profile, start_local_stack

pytestmark = pytest.mark.slow


def _kill9(stack: LocalStack) -> None:
    for process in (stack.sagemaker, stack.aws.process):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


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
            first = deploy(settings, lines=lines)
            key = manifest_keys(first)[0]
            assert execute(first, key)["status"] == "SUCCEEDED"
            before = _histories(first)
        _kill9(stack)

        stack = start_local_stack(stack_dir)
        with selected_profile(stack.env):
            assert _histories(first) == before
            lines.clear()
            again = deploy(settings, lines=lines)
            assert not again.changed, "\n".join(lines)
            assert again.state_machine_arn == first.state_machine_arn
            assert again.endpoint_config == first.endpoint_config
            assert again.training_job == first.training_job
            assert execute(again, key)["status"] == "SUCCEEDED"
    finally:
        stack.stop()
