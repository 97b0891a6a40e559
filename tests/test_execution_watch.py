"""ExecutionWatch follows many executions with one ListExecutions per tick, on the real emulator."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest

from scones.deploy.iam import trust
from scones.execution_watch import ExecutionWatch, WatchClosed
from scones.testing import role_session
from tests.conftest import LocalAws

# Fails when asked to, else waits `wait` seconds and echoes its input.
MACHINE = {
    "StartAt": "Choose",
    "States": {
        "Choose": {
            "Type": "Choice",
            "Choices": [{"Variable": "$.fail", "BooleanEquals": True, "Next": "Refuse"}],
            "Default": "Wait",
        },
        "Wait": {"Type": "Wait", "SecondsPath": "$.wait", "End": True},
        "Refuse": {"Type": "Fail", "Error": "Refused", "Cause": "asked to"},
    },
}


@pytest.fixture(scope="module")
def machine(local_aws: LocalAws) -> str:
    iam = boto3.client("iam")
    role = iam.create_role(
        RoleName=f"watch-{uuid.uuid4().hex[:8]}",
        AssumeRolePolicyDocument=trust("states.amazonaws.com"),
    )["Role"]["Arn"]
    arn: str = boto3.client("stepfunctions").create_state_machine(
        name=f"watch-{uuid.uuid4().hex[:8]}", definition=json.dumps(MACHINE), roleArn=role
    )["stateMachineArn"]
    return arn


def start(sfn: Any, machine: str, wait: int = 0, fail: bool = False) -> str:
    arn: str = sfn.start_execution(
        stateMachineArn=machine, input=json.dumps({"wait": wait, "fail": fail})
    )["executionArn"]
    return arn


def test_every_execution_is_followed_to_its_end_with_one_describe_each(machine: str) -> None:
    sfn = boto3.client("stepfunctions")
    plan = [(0, False), (1, False), (0, True), (1, False), (0, False), (1, True)]
    arns = [start(sfn, machine, wait, fail) for wait, fail in plan]
    with ExecutionWatch(sfn, machine) as watch, ThreadPoolExecutor(len(arns)) as callers:
        ended = list(callers.map(lambda arn: watch.follow(arn, timeout_s=30), arns))
    assert [e["executionArn"] for e in ended] == arns
    assert [e["status"] for e in ended] == ["FAILED" if fail else "SUCCEEDED" for _, fail in plan]
    assert all(e["error"] == "Refused" for e, (_, fail) in zip(ended, plan, strict=True) if fail)
    # The list says which are still running: each execution was described once, when it ended
    # (its caller woke when it left the RUNNING list).
    assert watch.listing and watch.list_calls >= 1
    assert watch.describe_calls == len(arns)


def test_a_caller_without_list_executions_is_followed_by_describes(machine: str) -> None:
    iam = boto3.client("iam")
    name = f"no-list-{uuid.uuid4().hex[:8]}"
    account = boto3.client("sts").get_caller_identity()["Account"]
    trusted = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    role = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trusted))["Role"][
        "Arn"
    ]
    allowed = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["states:StartExecution", "states:DescribeExecution"],
                "Resource": "*",
            }
        ],
    }
    iam.put_role_policy(RoleName=name, PolicyName="run", PolicyDocument=json.dumps(allowed))
    sfn = role_session(role, "watch").client("stepfunctions")
    with pytest.raises(sfn.exceptions.ClientError, match="AccessDenied"):
        sfn.list_executions(stateMachineArn=machine)
    with ExecutionWatch(sfn, machine) as watch:
        ended = watch.follow(start(sfn, machine, wait=1), timeout_s=30)
    assert ended["status"] == "SUCCEEDED"
    assert not watch.listing and watch.describe_calls >= 1


def test_a_timeout_hands_back_the_running_answer(machine: str) -> None:
    sfn = boto3.client("stepfunctions")
    arn = start(sfn, machine, wait=30)
    try:
        with ExecutionWatch(sfn, machine) as watch:
            described = watch.follow(arn, timeout_s=0.1)
        assert described["status"] == "RUNNING" and described["executionArn"] == arn
    finally:
        sfn.stop_execution(executionArn=arn)


def test_closing_abandons_the_executions_still_followed(machine: str) -> None:
    sfn = boto3.client("stepfunctions")
    arn = start(sfn, machine, wait=30)
    try:
        watch = ExecutionWatch(sfn, machine)
        with ThreadPoolExecutor(1) as caller:
            following = caller.submit(watch.follow, arn)
            while not watch.list_calls:  # the caller is waiting once the watch has listed
                time.sleep(0.01)
            watch.close()
            with pytest.raises(WatchClosed):
                following.result(timeout=10)
        with pytest.raises(WatchClosed):
            watch.follow(arn)
    finally:
        sfn.stop_execution(executionArn=arn)
