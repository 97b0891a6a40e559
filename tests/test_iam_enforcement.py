"""IAM enforcement for role credentials: the evaluator's rules, then real calls on the emulator."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from scones.testing import LocalAws, role_session, running_local_aws
from scones.testing_functions import create_function
from services.local_aws import iam_enforcement as iam

ACCOUNT = "123456789012"
SESSION = iam.Session(ACCOUNT, "reader", f"arn:aws:iam::{ACCOUNT}:role/reader", "s1", "", False)


def _policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def test_allow_needs_a_matching_action_and_resource() -> None:
    policy = _policy(
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/in/*"}
    )
    assert iam.evaluate([policy], "s3:GetObject", "arn:aws:s3:::b/in/x.png", {}) == iam.ALLOW
    assert iam.evaluate([policy], "s3:getobject", "arn:aws:s3:::b/in/x.png", {}) == iam.ALLOW
    assert iam.evaluate([policy], "s3:GetObject", "arn:aws:s3:::b/out/x", {}) == iam.NEUTRAL
    assert iam.evaluate([policy], "s3:PutObject", "arn:aws:s3:::b/in/x", {}) == iam.NEUTRAL
    # Resource ARNs are case-sensitive; `?` is one character.
    assert iam.evaluate([policy], "s3:GetObject", "arn:aws:s3:::B/in/x", {}) == iam.NEUTRAL
    single = _policy({"Effect": "Allow", "Action": "s3:Get?bject", "Resource": "*"})
    assert iam.evaluate([single], "s3:GetObject", "x", {}) == iam.ALLOW
    assert iam.evaluate([single], "s3:GetXXbject", "x", {}) == iam.NEUTRAL


def test_an_explicit_deny_wins_over_any_allow() -> None:
    allow = _policy({"Effect": "Allow", "Action": "s3:*", "Resource": "*"})
    deny = _policy({"Effect": "Deny", "Action": "s3:Delete*", "Resource": "*"})
    assert iam.evaluate([allow, deny], "s3:DeleteObject", "arn:aws:s3:::b/k", {}) == iam.DENY
    assert iam.evaluate([allow, deny], "s3:GetObject", "arn:aws:s3:::b/k", {}) == iam.ALLOW


def test_not_action_and_not_resource() -> None:
    policy = _policy(
        {"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:*", "NotResource": "arn:aws:s3:::public/*"},
    )
    assert iam.evaluate([policy], "iam:CreateRole", "*", {}) == iam.NEUTRAL
    assert iam.evaluate([policy], "logs:PutLogEvents", "*", {}) == iam.ALLOW
    assert iam.evaluate([policy], "s3:GetObject", "arn:aws:s3:::public/a", {}) == iam.ALLOW
    assert iam.evaluate([policy], "s3:GetObject", "arn:aws:s3:::private/a", {}) == iam.DENY


def test_conditions() -> None:
    policy = _policy(
        {
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": "arn:aws:s3:::b",
            "Condition": {"StringLike": {"s3:prefix": ["train/*", "test/*"]}},
        },
        {
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": {"StringNotEqualsIfExists": {"aws:RequestedRegion": "us-east-1"}},
        },
    )
    region = {"aws:RequestedRegion": ["us-east-1"]}
    listing = "arn:aws:s3:::b"
    assert iam.evaluate(
        [policy], "s3:ListBucket", listing, {**region, "s3:prefix": ["train/a"]}
    ) == (iam.ALLOW)
    assert iam.evaluate([policy], "s3:ListBucket", listing, {**region, "s3:prefix": ["x/"]}) == (
        iam.NEUTRAL
    )
    assert iam.evaluate([policy], "s3:ListBucket", listing, region) == iam.NEUTRAL  # no prefix
    other = {"aws:RequestedRegion": ["eu-west-1"], "s3:prefix": ["train/a"]}
    assert iam.evaluate([policy], "s3:ListBucket", listing, other) == iam.DENY
    null = _policy(
        {"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"Null": {"k": "true"}}}
    )
    assert iam.evaluate([null], "s3:GetObject", "*", {}) == iam.ALLOW
    assert iam.evaluate([null], "s3:GetObject", "*", {"k": ["v"]}) == iam.NEUTRAL
    unknown = _policy(
        {"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"Weird": {"k": "v"}}}
    )
    assert iam.evaluate([unknown], "s3:GetObject", "*", {"k": ["v"]}) == iam.NEUTRAL


@pytest.mark.parametrize(
    ("method", "path", "query", "action", "resource"),
    [
        ("GET", "/b/k/x.png", "", "s3:GetObject", "arn:aws:s3:::b/k/x.png"),
        ("HEAD", "/b/k", "", "s3:GetObject", "arn:aws:s3:::b/k"),
        ("GET", "/b/k", "versionId=v", "s3:GetObjectVersion", "arn:aws:s3:::b/k"),
        ("PUT", "/b/k", "x-id=PutObject", "s3:PutObject", "arn:aws:s3:::b/k"),
        ("DELETE", "/b/k", "", "s3:DeleteObject", "arn:aws:s3:::b/k"),
        ("GET", "/b", "list-type=2", "s3:ListBucket", "arn:aws:s3:::b"),
        ("PUT", "/b", "", "s3:CreateBucket", "arn:aws:s3:::b"),
        ("GET", "/b", "policy", "s3:GetBucketPolicy", "arn:aws:s3:::b"),
        ("POST", "/b", "delete", "s3:DeleteObject", "arn:aws:s3:::b/*"),
        ("GET", "/", "", "s3:ListAllMyBuckets", "*"),
    ],
)
def test_s3_requests_map_to_iam_actions(
    method: str, path: str, query: str, action: str, resource: str
) -> None:
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query}
    request = iam.describe(environ, b"", SESSION, "us-east-1", "s3")
    assert request is not None
    assert (request.action, request.resource) == (action, resource)


def test_lambda_step_functions_and_logs_requests_map_to_iam_actions() -> None:
    invoke = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/2015-03-31/functions/classify/invocations",
        "QUERY_STRING": "Qualifier=live",
    }
    request = iam.describe(invoke, b"{}", SESSION, "us-east-1", "lambda")
    assert request is not None
    assert request.action == "lambda:InvokeFunction"
    assert request.resource == f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:classify:live"
    arn = f"arn:aws:states:us-east-1:{ACCOUNT}:stateMachine:m"
    start = {"REQUEST_METHOD": "POST", "HTTP_X_AMZ_TARGET": "AWSStepFunctions.StartExecution"}
    body = json.dumps({"stateMachineArn": arn}).encode()
    request = iam.describe(start, body, SESSION, "us-east-1", "states")
    assert request is not None and (request.action, request.resource) == (
        "states:StartExecution",
        arn,
    )
    put = {"REQUEST_METHOD": "POST", "HTTP_X_AMZ_TARGET": "Logs_20140328.PutLogEvents"}
    body = json.dumps({"logGroupName": "/aws/lambda/f", "logStreamName": "s"}).encode()
    request = iam.describe(put, body, SESSION, "us-east-1", "logs")
    assert request is not None
    assert (
        request.resource == f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:/aws/lambda/f:log-stream:s"
    )


def test_the_denial_reads_as_aws_writes_it() -> None:
    request = iam.Request("s3", "s3:GetObject", "arn:aws:s3:::b/k", "us-east-1")
    text = iam.message(SESSION, request, iam.NEUTRAL, "identity-based policy")
    assert text == (
        f"User: arn:aws:sts::{ACCOUNT}:assumed-role/reader/s1 is not authorized to perform: "
        's3:GetObject on resource: "arn:aws:s3:::b/k" because no identity-based policy allows '
        "the s3:GetObject action"
    )


# --------------------------------------------------------------------------------------------
# On the emulator

TRUST = _policy(
    {
        "Effect": "Allow",
        "Principal": {"Service": "lambda.amazonaws.com", "AWS": f"arn:aws:iam::{ACCOUNT}:root"},
        "Action": "sts:AssumeRole",
    }
)
LOGS_ONLY = _policy(
    {
        "Effect": "Allow",
        "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
        "Resource": "arn:aws:logs:*:*:*",
    }
)
READER = """
import boto3, botocore

def handler(event, context):
    s3 = boto3.client("s3")
    try:
        body = s3.get_object(Bucket=event["bucket"], Key=event["key"])["Body"].read()
        return {"read": body.decode()}
    except botocore.exceptions.ClientError as error:
        error = error.response["Error"]
        return {"error": error["Code"], "message": error["Message"]}
"""


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAws]:
    with running_local_aws(tmp_path_factory.mktemp("iam")) as aws:
        yield aws


def _role(name: str, policy: dict[str, Any]) -> str:
    iam_client = boto3.client("iam")
    arn = iam_client.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST))["Role"][
        "Arn"
    ]
    iam_client.put_role_policy(RoleName=name, PolicyName="base", PolicyDocument=json.dumps(policy))
    return str(arn)


def _session_s3(role_arn: str) -> Any:
    return role_session(role_arn).client("s3")


@pytest.fixture
def bucket(emulator: LocalAws) -> str:
    name = f"iam-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=name)
    boto3.client("s3").put_object(Bucket=name, Key="in/scone.txt", Body=b"butter")
    return name


def test_a_lambda_whose_role_allows_only_logs_gets_access_denied_reading_s3(
    emulator: LocalAws, bucket: str
) -> None:
    role_name = f"logs-only-{uuid.uuid4().hex[:6]}"
    role_arn = _role(role_name, LOGS_ONLY)
    lam = boto3.client("lambda")
    name = f"reader-{uuid.uuid4().hex[:6]}"
    create_function(lam, name, READER, role_arn, runtime="python3.12")
    event = json.dumps({"bucket": bucket, "key": "in/scone.txt"}).encode()

    denied = json.loads(lam.invoke(FunctionName=name, Payload=event)["Payload"].read())
    assert denied["error"] == "AccessDenied"
    assert denied["message"].startswith(
        f"User: arn:aws:sts::{ACCOUNT}:assumed-role/{role_name}/{name} is not authorized to "
        f'perform: s3:GetObject on resource: "arn:aws:s3:::{bucket}/in/scone.txt"'
    )

    boto3.client("iam").put_role_policy(
        RoleName=role_name,
        PolicyName="read",
        PolicyDocument=json.dumps(
            _policy(
                {
                    "Effect": "Allow",
                    "Action": "s3:GetObject",
                    "Resource": f"arn:aws:s3:::{bucket}/*",
                }
            )
        ),
    )
    allowed = json.loads(lam.invoke(FunctionName=name, Payload=event)["Payload"].read())
    assert allowed == {"read": "butter"}


def test_role_credentials_are_checked_against_bucket_policies(
    emulator: LocalAws, bucket: str
) -> None:
    role_arn = _role(f"bp-{uuid.uuid4().hex[:6]}", LOGS_ONLY)
    s3 = _session_s3(role_arn)
    with pytest.raises(ClientError) as error:
        s3.get_object(Bucket=bucket, Key="in/scone.txt")
    assert error.value.response["Error"]["Code"] == "AccessDenied"
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError):
        s3.put_object(Bucket=bucket, Key="in/new.txt", Body=b"x")

    admin = boto3.client("s3")  # the `local` profile: the account's administrator
    admin.put_bucket_policy(
        Bucket=bucket,
        Policy=json.dumps(
            _policy(
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": role_arn},
                    "Action": "s3:GetObject",
                    "Resource": f"arn:aws:s3:::{bucket}/in/*",
                }
            )
        ),
    )
    assert s3.get_object(Bucket=bucket, Key="in/scone.txt")["Body"].read() == b"butter"
    with pytest.raises(ClientError):
        s3.put_object(Bucket=bucket, Key="in/new.txt", Body=b"x")

    admin.put_bucket_policy(
        Bucket=bucket,
        Policy=json.dumps(
            _policy(
                {
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": f"arn:aws:s3:::{bucket}/*",
                }
            )
        ),
    )
    full = _role(
        f"full-{uuid.uuid4().hex[:6]}",
        _policy({"Effect": "Allow", "Action": "s3:*", "Resource": "*"}),
    )
    with pytest.raises(ClientError) as error:
        _session_s3(full).get_object(Bucket=bucket, Key="in/scone.txt")
    assert "explicit deny in a resource-based policy" in error.value.response["Error"]["Message"]
    # The administrator may still manage the bucket and, without the Deny, read again.
    admin.delete_bucket_policy(Bucket=bucket)
    assert admin.get_object(Bucket=bucket, Key="in/scone.txt")["Body"].read() == b"butter"


def test_other_services_answer_access_denied_in_their_shape(emulator: LocalAws) -> None:
    role_arn = _role(f"nolambda-{uuid.uuid4().hex[:6]}", LOGS_ONLY)
    session = role_session(role_arn)
    with pytest.raises(ClientError) as error:
        session.client("lambda").list_functions()
    assert error.value.response["Error"]["Code"] == "AccessDeniedException"
    with pytest.raises(ClientError) as error:
        session.client("stepfunctions").list_state_machines()
    assert error.value.response["Error"]["Code"] == "AccessDeniedException"
    with pytest.raises(ClientError) as error:
        session.client("iam").list_roles()
    assert error.value.response["Error"]["Code"] == "AccessDenied"
    # Allowed by the role's own policy.
    session.client("logs").create_log_group(logGroupName=f"/probe/{uuid.uuid4().hex[:6]}")
    assert session.client("sts").get_caller_identity()["Arn"].endswith("/probe")


def test_the_switch_turns_enforcement_off(tmp_path: Any) -> None:
    with running_local_aws(tmp_path / "off", ["--no-iam-enforcement", "--no-persist"]):
        boto3.client("s3").create_bucket(Bucket="open-door")
        boto3.client("s3").put_object(Bucket="open-door", Key="k", Body=b"v")
        s3 = _session_s3(_role("logs-only", LOGS_ONLY))
        assert s3.get_object(Bucket="open-door", Key="k")["Body"].read() == b"v"
