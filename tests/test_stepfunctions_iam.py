"""State machines call Lambda with their execution role, and IAM decides, on the real emulator.

Every test on the shared emulator runs twice: with the Step Functions speedups (cached clients,
Lambda in-process) and with moto's own client path (`LOCAL_AWS_SFN_SPEEDUPS=0`, a new client and
a loopback HTTP request per task), since both must sign with the role.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
import requests
from botocore.exceptions import ClientError

from scones.deploy.iam import trust
from scones.testing_functions import create_function
from services.local_aws import stepfunctions_roles
from services.local_aws import stepfunctions_speedups as speedups
from services.local_aws import stepfunctions_time as sfn_time
from tests.conftest import LocalAws, start_local_aws, stop_process

HANDLER = """
def handler(event, context):
    return {"seen": event}
"""
DENIED = "Lambda.AWSLambdaException"
FORMS = ("lambda:invoke", "function ARN")


def task(form: str, function_arn: str, **fields: Any) -> dict[str, Any]:
    """A Task state calling the function in one of the two Resource forms."""
    if form == "lambda:invoke":
        return {
            "Type": "Task",
            "Resource": "arn:aws:states:::lambda:invoke",
            "Parameters": {"FunctionName": function_arn, "Payload.$": "$"},
            "OutputPath": "$.Payload",
            **fields,
        }
    return {"Type": "Task", "Resource": function_arn, **fields}


def one_task(form: str, function_arn: str) -> dict[str, Any]:
    """A machine of one Task that invokes the function."""
    return {"StartAt": "Invoke", "States": {"Invoke": task(form, function_arn, End=True)}}


class Stack:
    """Clients on one emulator, selected by its own profile (administrator credentials)."""

    def __init__(self, emulator: LocalAws, speedups_on: bool) -> None:
        self.emulator = emulator
        self.speedups_on = speedups_on
        core = botocore.session.Session()
        core.set_config_variable("config_file", emulator.env["AWS_CONFIG_FILE"])
        core.set_config_variable("credentials_file", emulator.env["AWS_SHARED_CREDENTIALS_FILE"])
        core.set_config_variable("profile", emulator.env["AWS_PROFILE"])
        session = boto3.session.Session(botocore_session=core)
        self.sfn = session.client("stepfunctions")
        self.lam = session.client("lambda")
        self.iam = session.client("iam")
        lambda_role = self.role("fn", "lambda.amazonaws.com")
        name = f"echo-{uuid.uuid4().hex[:6]}"
        self.function_arn: str = create_function(self.lam, name, HANDLER, lambda_role, Timeout=10)[
            "FunctionArn"
        ]

    def role(self, prefix: str, *services: str) -> str:
        arn: str = self.iam.create_role(
            RoleName=f"{prefix}-{uuid.uuid4().hex[:8]}",
            AssumeRolePolicyDocument=trust(*services),
        )["Role"]["Arn"]
        return arn

    def allow(self, role_arn: str, *statements: dict[str, Any]) -> None:
        self.iam.put_role_policy(
            RoleName=role_arn.rsplit("/", 1)[1],
            PolicyName="permissions",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": list(statements)}),
        )

    def machine(self, asl: dict[str, Any], role_arn: str) -> str:
        arn: str = self.sfn.create_state_machine(
            name=f"m-{uuid.uuid4().hex[:10]}", definition=json.dumps(asl), roleArn=role_arn
        )["stateMachineArn"]
        return arn

    def run(self, machine_arn: str, execution_input: Any) -> dict[str, Any]:
        arn = self.sfn.start_execution(
            stateMachineArn=machine_arn, input=json.dumps(execution_input)
        )["executionArn"]
        deadline = time.monotonic() + 60
        while (described := self.sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
            assert time.monotonic() < deadline, "execution did not finish"
            time.sleep(0.02)
        described["events"] = self.sfn.get_execution_history(executionArn=arn)["events"]
        return described

    def health(self) -> dict[str, Any]:
        answer: dict[str, Any] = requests.get(
            f"{self.emulator.endpoint_url}/_local_aws/health", timeout=10
        ).json()
        return answer


@pytest.fixture(scope="module", params=["speedups", "moto client"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    speedups_on = request.param == "speedups"
    with pytest.MonkeyPatch.context() as env:
        env.setenv(sfn_time.ENV_TIME_SCALE, "0.01")
        env.setenv(speedups.ENV_SWITCH, "1" if speedups_on else "0")
        env.setenv("LOCAL_AWS_IAM_ENFORCE", "1")
        emulator = start_local_aws(tmp_path_factory.mktemp("sfn_iam"))
    try:
        built = Stack(emulator, speedups_on)
        assert (built.health()["stepfunctions_speedups"] is not None) == speedups_on
        yield built
    finally:
        stop_process(emulator.process)


def denial_of(stack: Stack, role_arn: str) -> re.Pattern[str]:
    """AWS's cause for a role that may not invoke the function."""
    role_name = role_arn.rsplit("/", 1)[1]
    return re.compile(
        rf"^User: arn:aws:sts::\d{{12}}:assumed-role/{role_name}/[A-Za-z]{{32}} is not "
        rf"authorized to perform: lambda:InvokeFunction on resource: {stack.function_arn} "
        r"because no identity-based policy allows the lambda:InvokeFunction action "
        r"\(Service: AWSLambda; Status Code: 403; Error Code: AccessDeniedException; "
        r"Request ID: [^;]+; Proxy: null\)$"
    )


# --- execution role ---------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_a_role_without_invoke_permission_is_denied_then_allowed_once_granted(
    stack: Stack, form: str
) -> None:
    role = stack.role("states", "states.amazonaws.com")
    stack.allow(role, {"Effect": "Allow", "Action": "logs:CreateLogDelivery", "Resource": "*"})
    machine = stack.machine(
        one_task(form, stack.function_arn),
        role,
    )

    denied = stack.run(machine, {"n": 1})
    assert denied["status"] == "FAILED"
    assert denied["error"] == DENIED, denied
    assert denial_of(stack, role).match(denied["cause"]), denied["cause"]
    failed = [e for e in denied["events"] if e["type"] in ("TaskFailed", "LambdaFunctionFailed")]
    assert [e["type"] for e in failed] == [
        "TaskFailed" if form == "lambda:invoke" else "LambdaFunctionFailed"
    ]

    stack.allow(
        role, {"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": stack.function_arn}
    )
    allowed = stack.run(machine, {"n": 2})
    assert allowed["status"] == "SUCCEEDED", allowed.get("cause")
    assert json.loads(allowed["output"]) == {"seen": {"n": 2}}


@pytest.mark.parametrize("form", FORMS)
def test_retry_and_catch_apply_to_the_denial(stack: Stack, form: str) -> None:
    role = stack.role("states", "states.amazonaws.com")
    retry = [{"ErrorEquals": [DENIED], "IntervalSeconds": 1, "MaxAttempts": 2}]
    catch = [{"ErrorEquals": [DENIED], "ResultPath": "$.denied", "Next": "Denied"}]
    machine = stack.machine(
        {
            "StartAt": "Invoke",
            "States": {
                "Invoke": task(form, stack.function_arn, Retry=retry, Catch=catch, End=True),
                "Denied": {"Type": "Pass", "End": True},
            },
        },
        role,
    )
    caught = stack.run(machine, {"n": 3})
    assert caught["status"] == "SUCCEEDED", caught.get("cause")
    output = json.loads(caught["output"])
    assert output["n"] == 3 and output["denied"]["Error"] == DENIED
    assert denial_of(stack, role).match(output["denied"]["Cause"])
    scheduled = [e for e in caught["events"] if e["type"].endswith("Scheduled")]
    assert len(scheduled) == 3, "one attempt and two retries"


def test_an_explicit_deny_wins_over_a_wildcard_allow(stack: Stack) -> None:
    role = stack.role("states", "states.amazonaws.com")
    stack.allow(
        role,
        {"Effect": "Allow", "Action": "lambda:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "lambda:Invoke*", "Resource": stack.function_arn},
    )
    machine = stack.machine(
        {
            "StartAt": "Invoke",
            "States": {"Invoke": task("lambda:invoke", stack.function_arn, End=True)},
        },
        role,
    )
    denied = stack.run(machine, {})
    assert denied["status"] == "FAILED" and denied["error"] == DENIED
    assert "with an explicit deny in a identity-based policy" in denied["cause"]


def test_credentials_are_assumed_once_per_role_and_reused(stack: Stack) -> None:
    if not stack.speedups_on:
        pytest.skip("the counter is in the speedups' health stats")
    role = stack.role("states", "states.amazonaws.com")
    stack.allow(role, {"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": "*"})
    machine = stack.machine(
        {
            "StartAt": "Invoke",
            "States": {"Invoke": task("function ARN", stack.function_arn, End=True)},
        },
        role,
    )
    before = stack.health()["stepfunctions_speedups"]["role_sessions_assumed"]
    for n in range(3):
        assert stack.run(machine, {"n": n})["status"] == "SUCCEEDED"
    assert stack.health()["stepfunctions_speedups"]["role_sessions_assumed"] == before + 1


def test_with_enforcement_off_the_role_is_not_checked(tmp_path: Path) -> None:
    emulator = start_local_aws(tmp_path / "off", ["--no-iam-enforcement"])
    try:
        stack = Stack(emulator, speedups_on=True)
        assert stack.health()["iam_enforcement"] is False
        role = stack.role("states", "states.amazonaws.com")  # no permission at all
        machine = stack.machine(one_task("lambda:invoke", stack.function_arn), role)
        ran = stack.run(machine, {"n": 4})
        assert ran["status"] == "SUCCEEDED", ran.get("cause")
        with pytest.raises(ClientError, match="Neither the global service principal"):
            stack.machine(
                one_task("lambda:invoke", stack.function_arn), stack.role("x", "ec2.amazonaws.com")
            )
    finally:
        stop_process(emulator.process)


# --- trust policy at create -------------------------------------------------------------------


def test_a_role_states_may_not_assume_fails_create_and_update_as_on_aws(stack: Stack) -> None:
    asl = {"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}}
    lambda_only = stack.role("lambda-only", "lambda.amazonaws.com")
    account = lambda_only.split(":")[4]
    for role in (lambda_only, f"arn:aws:iam::{account}:role/no-such-role-{uuid.uuid4().hex[:6]}"):
        with pytest.raises(ClientError) as refused:
            stack.machine(asl, role)
        error = refused.value.response["Error"]
        assert error["Code"] == "AccessDeniedException"
        assert error["Message"] == stepfunctions_roles.TRUST_ERROR
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400

    regional = stack.role("regional", f"states.{stack.sfn.meta.region_name}.amazonaws.com")
    machine = stack.machine(asl, regional)
    with pytest.raises(ClientError, match="Neither the global service principal"):
        stack.sfn.update_state_machine(stateMachineArn=machine, roleArn=lambda_only)
    assert stack.sfn.describe_state_machine(stateMachineArn=machine)["roleArn"] == regional
    with pytest.raises(stack.sfn.exceptions.InvalidArn):
        stack.machine(asl, "not-an-arn")


# --- pure parts -------------------------------------------------------------------------------


def test_role_sessions_are_reused_until_shortly_before_they_expire() -> None:
    now = [1000.0]
    sessions = stepfunctions_roles.RoleSessions(clock=lambda: now[0], session_s=3600)
    arn = "arn:aws:iam::123456789012:role/states"
    first = sessions.credentials(arn)
    assert first is not None and first.session_token and first.access_key_id.startswith("ASIA")
    now[0] += 3600 - stepfunctions_roles.REFRESH_MARGIN_S - 1
    assert sessions.credentials(arn) is first
    now[0] += 2
    second = sessions.credentials(arn)
    assert second is not None and second.access_key_id != first.access_key_id
    assert sessions.assumed == 2
    assert sessions.credentials("arn:aws:lambda:us-east-1:123456789012:function:f") is None
    assert stepfunctions_roles.client_arguments(None) == {
        "aws_access_key_id": "ak",
        "aws_secret_access_key": "sk",
    }


def test_trust_policy_reading() -> None:
    from moto.iam.models import iam_backends

    backend = iam_backends["123456789012"]["global"]

    def role(document: Any) -> str:
        text = document if isinstance(document, str) else json.dumps(document)
        created = backend.create_role(
            role_name=f"t-{uuid.uuid4().hex[:8]}", assume_role_policy_document=text, path="/",
            permissions_boundary=None, description="", tags=[], max_session_duration=None,
        )  # fmt: skip
        return str(created.arn)

    def statement(effect: str, service: Any, action: Any = "sts:AssumeRole") -> dict[str, Any]:
        return {"Effect": effect, "Principal": {"Service": service}, "Action": action}

    def may(*statements: dict[str, Any]) -> bool:
        arn = role({"Version": "2012-10-17", "Statement": list(statements)})
        return stepfunctions_roles.service_may_assume(arn, "eu-west-1")

    assert may(statement("Allow", "states.amazonaws.com"))
    assert may(statement("Allow", ["lambda.amazonaws.com", "states.eu-west-1.amazonaws.com"]))
    assert may(statement("Allow", "states.amazonaws.com", ["sts:TagSession", "sts:*"]))
    assert not may(statement("Allow", "states.us-east-1.amazonaws.com"))
    assert not may(statement("Allow", "lambda.amazonaws.com"))
    assert not may(statement("Allow", "states.amazonaws.com", "sts:TagSession"))
    assert not may(
        statement("Allow", "states.amazonaws.com"), statement("Deny", "states.amazonaws.com")
    )
    assert not stepfunctions_roles.service_may_assume(role("not json"), "eu-west-1")
    assert not stepfunctions_roles.service_may_assume(
        "arn:aws:iam::123456789012:role/x", "eu-west-1"
    )
