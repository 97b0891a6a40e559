"""IAM on sagemaker-local: role credentials are checked by the emulator, as AWS checks them.

A real emulator and a real sagemaker-local (the harness's fixtures) with a tiny endpoint; the
callers are STS sessions of roles with and without SageMaker permissions, and a real Lambda.
"""

from __future__ import annotations

import base64
import io
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from scones.deploy.iam import policy, trust
from scones.testing_functions import create_function
from services.local_aws import iam_authorize
from services.sagemaker_local.authorization import endpoint_arn, resource_arn
from tests.sagemaker_local_harness import (
    ACCOUNT,
    SageMakerLocal,
    endpoint_in_service,
    png_bytes,
)

pytest_plugins = ["tests.sagemaker_local_harness"]

NO_RETRY = Config(retries={"max_attempts": 1})
HANDLER = """
import base64

import boto3
from botocore.exceptions import ClientError


def handler(event, context):
    client = boto3.client("sagemaker-runtime")
    try:
        answer = client.invoke_endpoint(
            EndpointName=event["endpoint"],
            ContentType="image/png",
            Body=base64.b64decode(event["image"]),
        )
    except ClientError as exc:
        error = exc.response["Error"]
        return {"code": error["Code"], "message": error["Message"]}
    return {"body": answer["Body"].read().decode()}
"""


# -- the pieces, without processes ------------------------------------------------------------
def test_resource_arns_as_iam_sees_them() -> None:
    arn = resource_arn("us-east-1", ACCOUNT, "DescribeEndpointConfig", {"EndpointConfigName": "A"})
    assert arn == f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:endpoint-config/a"
    assert resource_arn("eu-west-1", ACCOUNT, "CreateTrainingJob", {"TrainingJobName": "T-1"}) == (
        f"arn:aws:sagemaker:eu-west-1:{ACCOUNT}:training-job/t-1"
    )
    assert resource_arn("us-east-1", ACCOUNT, "ListEndpoints", {"NameContains": "x"}) == "*"
    assert resource_arn("us-east-1", ACCOUNT, "DescribeEndpoint", {}) == "*"
    assert endpoint_arn("us-east-1", ACCOUNT, "My-EP") == (
        f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:endpoint/my-ep"
    )


def _serve(body: Any, remote: str = "127.0.0.1", enforce: bool = True) -> tuple[str, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    environ = {
        "REMOTE_ADDR": remote,
        "REQUEST_METHOD": "POST",
        "CONTENT_LENGTH": str(len(raw)),
        "wsgi.input": io.BytesIO(raw),
    }
    statuses: list[str] = []
    answer = iam_authorize.serve(environ, lambda s, h: statuses.append(s), enforce)
    return statuses[0], json.loads(b"".join(answer))


def test_authorize_endpoint_refuses_remote_peers_and_bad_questions() -> None:
    question = {"access_key_id": "ASIAX", "action": "sagemaker:InvokeEndpoint", "resource": "*"}
    status, answer = _serve(question, remote="10.1.2.3")
    assert status.startswith("403") and "loopback" in answer["message"]
    assert _serve(b"[1]")[0].startswith("400")
    assert _serve(b"{not json")[0].startswith("400")
    status, answer = _serve({**question, "action": "InvokeEndpoint"})
    assert status.startswith("400") and "service:Operation" in answer["message"]
    # Not an STS session (the emulator is not running here): the administrator.
    status, answer = _serve(question, remote="::1")
    assert status.startswith("200") and answer["allowed"] is True
    assert _serve(question, enforce=False)[1]["allowed"] is True


# -- real emulator + sagemaker-local ----------------------------------------------------------
@pytest.fixture(scope="module")
def endpoint(sagemaker_local: SageMakerLocal, tiny_model: dict[str, Any]) -> str:
    name = f"IAM-{uuid.uuid4().hex[:8]}"  # mixed case: the ARN has it lower-cased
    endpoint_in_service(name, tiny_model["uri"])
    return name


def _role(statements: list[dict[str, Any]]) -> tuple[str, str]:
    iam = boto3.client("iam")
    name = f"iam-sm-{uuid.uuid4().hex[:8]}"
    arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust("lambda.amazonaws.com"))[
        "Role"
    ]["Arn"]
    logs = {"Effect": "Allow", "Action": "logs:*", "Resource": "*"}
    iam.put_role_policy(RoleName=name, PolicyName="base", PolicyDocument=policy([logs]))
    if statements:
        iam.put_role_policy(RoleName=name, PolicyName="sm", PolicyDocument=policy(statements))
    return name, arn


def _session_client(role_arn: str, service: str) -> Any:
    credentials = boto3.client("sts").assume_role(RoleArn=role_arn, RoleSessionName="tester")[
        "Credentials"
    ]
    return boto3.client(
        service,
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
        config=NO_RETRY,
    )


def _invoke(client: Any, endpoint: str) -> Any:
    return client.invoke_endpoint(EndpointName=endpoint, ContentType="image/png", Body=png_bytes(1))


def _eventually(attempt: Callable[[], Any], deadline_s: float = 10.0) -> Any:
    """Retry until it does not raise (a policy change reaches the 1 s decision cache)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return attempt()
        except ClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_role_without_invoke_endpoint_is_denied_as_on_aws(endpoint: str) -> None:
    role_name, role_arn = _role([])
    runtime = _session_client(role_arn, "sagemaker-runtime")
    with pytest.raises(ClientError) as denied:
        _invoke(runtime, endpoint)
    error = denied.value.response["Error"]
    assert error["Code"] == "AccessDeniedException"
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    resource = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:endpoint/{endpoint.lower()}"
    assert error["Message"] == (
        f"User: arn:aws:sts::{ACCOUNT}:assumed-role/{role_name}/tester is not authorized to "
        f"perform: sagemaker:InvokeEndpoint on resource: {resource} because no identity-based "
        "policy allows the sagemaker:InvokeEndpoint action"
    )
    # The control plane too: its operation name on the endpoint's ARN.
    control = _session_client(role_arn, "sagemaker")
    with pytest.raises(ClientError) as described:
        control.describe_endpoint(EndpointName=endpoint)
    assert described.value.response["Error"]["Code"] == "AccessDeniedException"
    assert f"sagemaker:DescribeEndpoint on resource: {resource}" in str(described.value)

    # Granted (on exactly that endpoint): the same session is answered.
    boto3.client("iam").put_role_policy(
        RoleName=role_name,
        PolicyName="sm",
        PolicyDocument=policy(
            [{"Effect": "Allow", "Action": "sagemaker:InvokeEndpoint", "Resource": resource}]
        ),
    )
    answer = _eventually(lambda: _invoke(runtime, endpoint))
    assert len(json.loads(answer["Body"].read())[0]) == 3
    with pytest.raises(ClientError):  # InvokeEndpoint only: Describe stays denied
        control.describe_endpoint(EndpointName=endpoint)


def test_explicit_deny_and_admin_are_unaffected_by_others(endpoint: str) -> None:
    allow = {"Effect": "Allow", "Action": "sagemaker:*", "Resource": "*"}
    deny = {"Effect": "Deny", "Action": "sagemaker:InvokeEndpoint", "Resource": "*"}
    _, role_arn = _role([allow, deny])
    runtime = _session_client(role_arn, "sagemaker-runtime")
    with pytest.raises(ClientError) as denied:
        _invoke(runtime, endpoint)
    assert "sagemaker:InvokeEndpoint" in str(denied.value)
    assert "with an explicit deny in" in str(denied.value)
    # Describe is allowed by sagemaker:*; the administrator (profile keys) may do anything.
    control = _session_client(role_arn, "sagemaker")
    assert control.describe_endpoint(EndpointName=endpoint)["EndpointStatus"] == "InService"
    admin = boto3.client("sagemaker-runtime", config=NO_RETRY)
    assert _invoke(admin, endpoint)["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_forged_session_token_is_refused(endpoint: str) -> None:
    _, role_arn = _role([{"Effect": "Allow", "Action": "sagemaker:*", "Resource": "*"}])
    credentials = boto3.client("sts").assume_role(RoleArn=role_arn, RoleSessionName="forger")[
        "Credentials"
    ]
    forged = boto3.client(
        "sagemaker-runtime",
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token="not-the-token",
        config=NO_RETRY,
    )
    with pytest.raises(ClientError) as refused:
        _invoke(forged, endpoint)
    assert refused.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_lambda_role_decides_what_its_code_may_invoke(
    endpoint: str, sagemaker_local: SageMakerLocal
) -> None:
    role_name, role_arn = _role([])
    lam = boto3.client("lambda")
    name = f"iam-sm-{uuid.uuid4().hex[:8]}"
    create_function(
        lam,
        name,
        HANDLER,
        role_arn,
        Timeout=30,
        Environment={"Variables": {"AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": sagemaker_local.url}},
    )
    event = json.dumps({"endpoint": endpoint, "image": base64.b64encode(png_bytes(2)).decode()})

    def call() -> dict[str, Any]:
        answer = lam.invoke(FunctionName=name, Payload=event)
        assert "FunctionError" not in answer, answer["Payload"].read()
        result: dict[str, Any] = json.loads(answer["Payload"].read())
        return result

    denied = call()
    assert denied["code"] == "AccessDeniedException"
    assert f"assumed-role/{role_name}/" in denied["message"]
    assert "sagemaker:InvokeEndpoint" in denied["message"]

    boto3.client("iam").put_role_policy(
        RoleName=role_name,
        PolicyName="sm",
        PolicyDocument=policy(
            [{"Effect": "Allow", "Action": "sagemaker:InvokeEndpoint", "Resource": "*"}]
        ),
    )
    deadline = time.monotonic() + 10
    while "body" not in (answered := call()):
        assert time.monotonic() < deadline, answered
        time.sleep(0.1)
    assert len(json.loads(answered["body"])[0]) == 3
