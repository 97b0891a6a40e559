"""The AWS path of the deploy as a whole, against a fake AWS in this process (moto's own control
planes).

moto stands in for AWS's SageMaker, IAM, Lambda, Step Functions and ECR: the same deploy code
runs with `--push-image` (the AWS configuration), the image push replaced by a recorded call
that registers the image in the fake ECR, as a real push would. Each part's resources are
checked beside its tests (`test_deploy_iam.py`, `_training`, `_hosting`, `_state_machine`,
`_functions`); here: the images step and a second run that changes nothing.
"""

from __future__ import annotations

import boto3
import pytest

from scones.testing_deploy import aws_deploy
from tests.conftest import AwsDeployed

# The deploy ran on the fake AWS; its profile selected for these tests too.
pytestmark = pytest.mark.usefixtures("fake_aws")


def test_the_serving_image_is_built_and_pushed_once_to_the_accounts_ecr(
    aws_deploy_once: AwsDeployed,
) -> None:
    result, push = aws_deploy_once.result, aws_deploy_once.push
    assert result.changed
    assert [uri for uri, _ in push.calls] == [result.serving_image]
    assert result.serving_image.startswith(f"{result.account_id}.dkr.ecr.us-east-1.amazonaws.com/")
    assert boto3.client("ecr").describe_repositories(repositoryNames=["scones-model-server"])


def test_a_second_run_changes_nothing_and_pushes_nothing(aws_deploy_once: AwsDeployed) -> None:
    result, push = aws_deploy_once.result, aws_deploy_once.push
    # moto's training jobs write no model.tar.gz; SageMaker's would have. Without it the next
    # deploy would (rightly) heal by retraining.
    boto3.client("s3").put_object(
        Bucket=result.bucket, Key=result.model_artifact.split("/", 3)[3], Body=b"model"
    )
    again, lines = aws_deploy(aws_deploy_once.state_dir, push, result.bucket)
    assert not again.changed, "\n".join(lines)
    assert len(push.calls) == 1
