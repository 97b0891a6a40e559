"""The deploy's state machine step (scones.deploy.state_machine) on a fake AWS."""

from __future__ import annotations

import json

import boto3

from scones.deploy import DeployResult
from scones.workflow_functions import WORKFLOW_FUNCTIONS
from statemachine.definition import load_template


def test_the_state_machine_is_the_repository_asl_with_only_the_placeholders_replaced(
    aws_deployed: DeployResult,
) -> None:
    sfn = boto3.client("stepfunctions")
    deployed = sfn.describe_state_machine(stateMachineArn=aws_deployed.state_machine_arn)
    template = load_template()
    for function in WORKFLOW_FUNCTIONS:
        template = template.replace(
            "${" + function.placeholder + "}", aws_deployed.functions[function.suffix]
        )
    assert json.loads(deployed["definition"]) == json.loads(template)
    assert deployed["roleArn"] == aws_deployed.roles["scones-states"]
