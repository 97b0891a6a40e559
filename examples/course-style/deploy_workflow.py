"""Deploy the course-style workflow: three Lambdas and the exported state machine.

Written the way a course user would: plain boto3 on the current profile (AWS, or the local stack
through `AWS_PROFILE=local`), each function zipped from its `lambda_function.py`, the exported
ASL created as it is (its function ARNs name another account, with `:$LATEST`, as exported).
Idempotent: a second run updates the code and the definition.

    python examples/course-style/deploy_workflow.py --endpoint ENDPOINT_NAME
"""

from __future__ import annotations

import argparse
import io
import json
import zipfile
from pathlib import Path

import boto3
from botocore.exceptions import ClientError

HERE = Path(__file__).resolve().parent
FUNCTIONS = ("serializeImageData", "classifyImage", "filterInferences")
STATE_MACHINE = "scones-course-workflow"
LAMBDA_ROLE = "scones-course-lambda-role"
STATES_ROLE = "scones-course-states-role"
# What each role may do (inline policies: the same on AWS and on the local stack).
LAMBDA_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "*"},
        {"Effect": "Allow", "Action": ["sagemaker:InvokeEndpoint"], "Resource": "*"},
        {
            "Effect": "Allow",
            "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": "*",
        },
    ],
}
STATES_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["lambda:InvokeFunction"], "Resource": "*"}],
}


def trust(service: str) -> str:
    """A trust policy that lets `service` assume the role."""
    statement = {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


def role_arn(iam, name: str, service: str, policy: dict) -> str:
    """The role's ARN, created when missing, with its inline policy (re)written."""
    try:
        arn = iam.get_role(RoleName=name)["Role"]["Arn"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "NoSuchEntity":
            raise
        arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust(service))["Role"]["Arn"]
    iam.put_role_policy(
        RoleName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy)
    )
    return arn


def zipped(function: str) -> bytes:
    """The function's deployment package: its lambda_function.py at the root."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        source = HERE / "lambdas" / function / "lambda_function.py"
        archive.write(source, "lambda_function.py")
    return buffer.getvalue()


def deploy_function(lam, function: str, role: str, environment: dict[str, str]) -> str:
    """Create or update one function; return its ARN once it is Active."""
    try:
        lam.get_function(FunctionName=function)
        lam.update_function_code(FunctionName=function, ZipFile=zipped(function))
        lam.get_waiter("function_updated_v2").wait(FunctionName=function)
        lam.update_function_configuration(
            FunctionName=function, Environment={"Variables": environment}
        )
        lam.get_waiter("function_updated_v2").wait(FunctionName=function)
    except lam.exceptions.ResourceNotFoundException:
        lam.create_function(
            FunctionName=function,
            Runtime="python3.11",
            Role=role,
            Handler="lambda_function.lambda_handler",
            Code={"ZipFile": zipped(function)},
            Timeout=30,
            Environment={"Variables": environment},
        )
        lam.get_waiter("function_active_v2").wait(FunctionName=function)
    return lam.get_function(FunctionName=function)["Configuration"]["FunctionArn"]


def deploy(endpoint: str) -> str:
    """Deploy everything; return the state machine's ARN."""
    iam, lam, sfn = boto3.client("iam"), boto3.client("lambda"), boto3.client("stepfunctions")
    lambda_role = role_arn(iam, LAMBDA_ROLE, "lambda.amazonaws.com", LAMBDA_POLICY)
    for function in FUNCTIONS:
        environment = {"ENDPOINT": endpoint} if function == "classifyImage" else {}
        print("function", deploy_function(lam, function, lambda_role, environment))
    definition = (HERE / "statemachine.asl.json").read_text()
    states_role = role_arn(iam, STATES_ROLE, "states.amazonaws.com", STATES_POLICY)
    for machine in sfn.list_state_machines()["stateMachines"]:
        if machine["name"] == STATE_MACHINE:
            sfn.update_state_machine(
                stateMachineArn=machine["stateMachineArn"],
                definition=definition,
                roleArn=states_role,
            )
            return str(machine["stateMachineArn"])
    created = sfn.create_state_machine(
        name=STATE_MACHINE, definition=definition, roleArn=states_role
    )
    return str(created["stateMachineArn"])


def main() -> None:
    """Deploy against the endpoint named on the command line."""
    parser = argparse.ArgumentParser(description="Deploy the course-style workflow.")
    parser.add_argument("--endpoint", required=True, help="the image-classification endpoint")
    args = parser.parse_args()
    print("state machine", deploy(args.endpoint))


if __name__ == "__main__":
    main()
