"""Executions found through the index answer as moto's walk did, even after in-place changes."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scones.testing import create_machine, running_local_aws, service_role
from services.local_aws import stepfunctions_index


@dataclass(eq=False)
class Machine:
    executions: list[Any] = field(default_factory=list)


@dataclass(eq=False)
class Run:
    name: str
    execution_arn: str


def test_appends_are_followed_and_the_first_match_wins() -> None:
    machine = Machine()
    first = Run("a", "arn:a")
    machine.executions.append(first)
    assert stepfunctions_index.by_name(machine, "a") is first
    later = [Run(f"n{i}", f"arn:n{i}") for i in range(50)]
    machine.executions.extend(later)
    assert stepfunctions_index.by_arn(machine, "arn:n49") is later[49]
    machine.executions.append(Run("a", "arn:a2"))  # a second "a": the walk finds the first
    assert stepfunctions_index.by_name(machine, "a") is first
    assert stepfunctions_index.by_name(machine, "missing") is None


@pytest.mark.parametrize("change", ["replace", "reorder", "shrink", "new list"])
def test_a_list_changed_in_place_is_indexed_again(change: str) -> None:
    machine = Machine([Run(f"n{i}", f"arn:n{i}") for i in range(5)])
    assert stepfunctions_index.by_name(machine, "n4") is machine.executions[4]
    if change == "replace":  # same length, other executions (a restore)
        machine.executions[:] = [Run(f"m{i}", f"arn:m{i}") for i in range(5)]
    elif change == "reorder":
        machine.executions.reverse()
    elif change == "shrink":
        del machine.executions[2:]
    else:
        machine.executions = [Run("n4", "arn:other")]
    for name in ("n0", "n1", "n2", "n3", "n4", "m0", "m4"):
        expected = next((e for e in machine.executions if e.name == name), None)
        assert stepfunctions_index.by_name(machine, name) is expected, (change, name)


def test_start_and_describe_keep_moto_semantics(tmp_path: Path) -> None:
    """Same name and input while running: the same execution; otherwise the AWS errors."""
    with running_local_aws(tmp_path / "aws") as aws:
        import boto3

        sfn = boto3.client("stepfunctions", endpoint_url=aws.endpoint_url)
        iam = boto3.client("iam", endpoint_url=aws.endpoint_url)
        role = service_role(
            iam, "states", [{"Effect": "Allow", "Action": "logs:*", "Resource": "*"}]
        )
        wait = {"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 30, "End": True}}}
        machine = create_machine(sfn, wait, role)
        name = f"run-{uuid.uuid4().hex[:8]}"
        first = sfn.start_execution(stateMachineArn=machine, name=name, input="{}")
        again = sfn.start_execution(stateMachineArn=machine, name=name, input="{}")
        assert again["executionArn"] == first["executionArn"]
        with pytest.raises(sfn.exceptions.ExecutionAlreadyExists):
            sfn.start_execution(stateMachineArn=machine, name=name, input=json.dumps({"x": 1}))
        for i in range(30):
            sfn.start_execution(stateMachineArn=machine, name=f"other-{i}", input="{}")
        described = sfn.describe_execution(executionArn=first["executionArn"])
        assert described["name"] == name and described["status"] == "RUNNING"
        missing = first["executionArn"].rsplit(":", 1)[0] + ":never-started"
        with pytest.raises(sfn.exceptions.ExecutionDoesNotExist):
            sfn.describe_execution(executionArn=missing)
        sfn.stop_execution(executionArn=first["executionArn"])
        with pytest.raises(sfn.exceptions.ExecutionAlreadyExists):
            sfn.start_execution(stateMachineArn=machine, name=name, input="{}")
