"""The deploy's IAM step (scones.deploy.iam) on a fake AWS: five roles, each scoped to the
resources it uses."""

from __future__ import annotations

import json
from typing import Any

import boto3

from scones.deploy import DeployResult
from scones.deploy.iam import STAR_ONLY_ACTIONS
from scones.workflow_functions import WORKFLOW_FUNCTIONS


def _statements(role: str) -> list[dict[str, Any]]:
    document = boto3.client("iam").get_role_policy(RoleName=role, PolicyName="permissions")[
        "PolicyDocument"
    ]
    parsed = document if isinstance(document, dict) else json.loads(document)
    return list(parsed["Statement"])


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_each_function_role_allows_the_one_resource_it_needs(aws_deployed: DeployResult) -> None:
    serialize = _statements("scones-serialize-image-data")
    assert serialize[0] == {
        "Effect": "Allow",
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{aws_deployed.bucket}/{aws_deployed.data_prefix}/*",
    }
    invoke = _statements("scones-classify-image")[0]
    assert invoke["Action"] == "sagemaker:InvokeEndpoint"
    assert invoke["Resource"].endswith(":endpoint/scones-image-classifier")
    states = _statements("scones-states")
    assert states[0]["Action"] == "lambda:InvokeFunction"
    # The state machine invokes each function's `live` alias: the function ARN and its qualifiers.
    assert sorted(r for r in states[0]["Resource"] if not r.endswith(":*")) == sorted(
        arn.removesuffix(":live") for arn in aws_deployed.functions.values()
    )
    for role in ("scones-serialize-image-data", "scones-classify-image", "scones-states"):
        for statement in _statements(role):
            assert statement["Resource"] != "*", f"{role} has an unscoped statement"


def test_all_five_roles_are_scoped_to_their_resources(aws_deployed: DeployResult) -> None:
    roles = sorted(aws_deployed.roles)
    assert roles == sorted(
        [*(f.name("scones") for f in WORKFLOW_FUNCTIONS), "scones-states", "scones-sagemaker"]
    )
    for role in roles:
        for statement in _statements(role):
            resources = _as_list(statement["Resource"])
            actions = _as_list(statement["Action"])
            if "*" in resources:
                assert set(actions) <= STAR_ONLY_ACTIONS, f"{role}: {actions} on *"
            for resource in resources:
                assert ":*:" not in resource, f"{role}: any account or region in {resource}"
    bucket_arn = f"arn:aws:s3:::{aws_deployed.bucket}"
    sagemaker = {
        action: statement["Resource"]
        for statement in _statements("scones-sagemaker")
        for action in _as_list(statement["Action"])
    }
    assert f"{bucket_arn}/*" not in sagemaker["s3:GetObject"], "reads the whole bucket"
    assert f"{bucket_arn}/{aws_deployed.data_prefix}/*" in sagemaker["s3:GetObject"]
    assert sorted(sagemaker["s3:PutObject"]) == sorted(
        f"{bucket_arn}/{p}/*" for p in ("models", "checkpoints", "data-capture")
    )
    assert sorted(sagemaker["ecr:BatchGetImage"]) == sorted(
        [
            "arn:aws:ecr:us-east-1:763104351884:repository/pytorch-training",
            f"arn:aws:ecr:us-east-1:{aws_deployed.account_id}:repository/scones-model-server",
        ]
    )
    for function in WORKFLOW_FUNCTIONS:
        group = f":log-group:/aws/lambda/{function.name('scones')}"
        assert all(group in r for r in _statements(function.name("scones"))[-1]["Resource"])
