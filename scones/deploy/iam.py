"""The five IAM roles (three functions, the state machine, SageMaker), each scoped to its resources.

`"*"` appears only for the actions AWS authorises on no narrower resource
(`STAR_ONLY_ACTIONS`); every other statement names the bucket prefixes, log groups, endpoint,
functions or image repositories the role really uses.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

from scones.deploy.context import DeployContext, DeployResult
from scones.workflow_functions import WORKFLOW_FUNCTIONS, Permission

# AWS documents no resource type for these actions: the policy must say "*".
STAR_ONLY_ACTIONS = frozenset({"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"})
ECR_IMAGE = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/([^:@]+)")
LOG_ACTIONS = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"]


def policy(statements: list[dict[str, Any]]) -> str:
    """A policy document as canonical JSON."""
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


def trust(*services: str) -> str:
    """The trust policy letting these AWS services (e.g. `lambda.amazonaws.com`) assume the role."""
    principal = services[0] if len(services) == 1 else list(services)
    return policy(
        [{"Effect": "Allow", "Principal": {"Service": principal}, "Action": "sts:AssumeRole"}]
    )


def same_policy(current: Any, wanted: str) -> bool:
    """Whether a policy as IAM returns it (dict or URL-encoded JSON) equals the wanted one."""
    if isinstance(current, str):
        current = json.loads(unquote(current))
    return json.dumps(current, sort_keys=True) == json.dumps(json.loads(wanted), sort_keys=True)


def repository_arn(image_uri: str) -> str | None:
    """The ECR repository ARN of an image URI, or None for an image outside ECR."""
    match = ECR_IMAGE.match(image_uri)
    if not match:
        return None
    account, region, repository = match.groups()
    return f"arn:aws:ecr:{region}:{account}:repository/{repository}"


def _log_groups(region: str, account: str, *groups: str) -> list[str]:
    arns = [f"arn:aws:logs:{region}:{account}:log-group:{group}" for group in groups]
    return [arn for group_arn in arns for arn in (group_arn, f"{group_arn}:*")]


def role_policies(ctx: DeployContext, result: DeployResult) -> dict[str, tuple[str, str]]:
    """Each role's (trust policy, permissions policy), least privilege."""
    p, a, r = ctx.prefix, result.account_id, result.region
    bucket_arn = f"arn:aws:s3:::{result.bucket}"
    resources = {
        "dataset-objects": f"{bucket_arn}/{result.data_prefix}/*",
        "endpoint": f"arn:aws:sagemaker:{r}:{a}:endpoint/{ctx.settings.endpoint_name.lower()}",
    }

    def statement(permission: Permission) -> dict[str, Any]:
        actions = list(permission.actions)
        return {
            "Effect": "Allow",
            "Action": actions[0] if len(actions) == 1 else actions,
            "Resource": resources[permission.resource],
        }

    roles: dict[str, tuple[str, str]] = {}
    for function in WORKFLOW_FUNCTIONS:
        name = function.name(p)
        logs = {
            "Effect": "Allow",
            "Action": LOG_ACTIONS,
            "Resource": _log_groups(r, a, f"/aws/lambda/{name}"),
        }
        statements = [statement(permission) for permission in function.permissions]
        roles[name] = (trust("lambda.amazonaws.com"), policy([*statements, logs]))

    function_arns = [f"arn:aws:lambda:{r}:{a}:function:{f.name(p)}" for f in WORKFLOW_FUNCTIONS]
    roles[f"{p}-states"] = (
        trust("states.amazonaws.com"),
        policy(
            [
                {
                    "Effect": "Allow",
                    "Action": "lambda:InvokeFunction",
                    "Resource": function_arns + [f"{arn}:*" for arn in function_arns],
                }
            ]
        ),
    )
    roles[f"{p}-sagemaker"] = (trust("sagemaker.amazonaws.com"), sagemaker_policy(ctx, result))
    return roles


def sagemaker_policy(ctx: DeployContext, result: DeployResult) -> str:
    """The training jobs' and endpoint's role: its prefixes, log groups and image repositories."""
    a, r = result.account_id, result.region
    bucket_arn = f"arn:aws:s3:::{result.bucket}"
    readable = [result.data_prefix, "code", "models", "checkpoints"]
    writable = ["models", "checkpoints", "data-capture"]
    repositories = sorted(
        {arn for arn in map(repository_arn, (result.training_image, result.serving_image)) if arn}
    )
    statements: list[dict[str, Any]] = [
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket_arn},
        {
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": [f"{bucket_arn}/{prefix}/*" for prefix in readable],
        },
        {
            "Effect": "Allow",
            "Action": "s3:PutObject",
            "Resource": [f"{bucket_arn}/{prefix}/*" for prefix in writable],
        },
        {
            "Effect": "Allow",
            "Action": [*LOG_ACTIONS, "logs:DescribeLogStreams"],
            "Resource": _log_groups(
                r,
                a,
                "/aws/sagemaker/TrainingJobs",
                f"/aws/sagemaker/Endpoints/{ctx.settings.endpoint_name}",
            ),
        },
        {
            "Effect": "Allow",
            "Action": "cloudwatch:PutMetricData",
            "Resource": "*",
            "Condition": {"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}},
        },
        {"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
    ]
    if repositories:
        statements.append(
            {
                "Effect": "Allow",
                "Action": [
                    "ecr:BatchCheckLayerAvailability",
                    "ecr:BatchGetImage",
                    "ecr:GetDownloadUrlForLayer",
                ],
                "Resource": repositories,
            }
        )
    return policy(statements)


def ensure_roles(ctx: DeployContext, result: DeployResult) -> None:
    """Create the roles or bring their policies up to date."""
    iam = ctx.client("iam")
    for name, (trust_policy, permissions) in role_policies(ctx, result).items():
        try:
            role = iam.get_role(RoleName=name)["Role"]
        except iam.exceptions.NoSuchEntityException:
            role = None
        arn = role["Arn"] if role else f"arn:aws:iam::{result.account_id}:role/{name}"
        result.roles[name] = arn
        changes: list[str] = []
        if role is None:
            if not ctx.options.plan:
                iam.create_role(
                    RoleName=name,
                    AssumeRolePolicyDocument=trust_policy,
                    Description="Scones Unlimited workflow (least privilege)",
                )
                ctx.wait("iam", "role_exists", f"iam role {name}", lambda: "", RoleName=name)
        elif not same_policy(role["AssumeRolePolicyDocument"], trust_policy):
            if not ctx.options.plan:
                iam.update_assume_role_policy(RoleName=name, PolicyDocument=trust_policy)
            changes.append("trust policy")
        current = None
        if role is not None:
            try:
                current = iam.get_role_policy(RoleName=name, PolicyName="permissions")[
                    "PolicyDocument"
                ]
            except iam.exceptions.NoSuchEntityException:
                current = None
        if current is None or not same_policy(current, permissions):
            if not ctx.options.plan:
                iam.put_role_policy(
                    RoleName=name, PolicyName="permissions", PolicyDocument=permissions
                )
            if role is not None:
                changes.append("permissions")
        if role is None:
            ctx.note(result, "iam role", name, "create")
        elif changes:
            ctx.note(result, "iam role", name, "update", ", ".join(changes))
        else:
            ctx.note(result, "iam role", name, "unchanged")
