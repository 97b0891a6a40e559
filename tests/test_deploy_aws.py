"""The AWS path of the deploy, against a fake AWS in this process (moto's own control planes).

moto stands in for AWS's SageMaker, IAM, Lambda, Step Functions and ECR: the same deploy code
runs with `--push-image` (the AWS configuration), the image push replaced by a recorded call
that registers the image in the fake ECR, as a real push would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from scones.deploy import Deployer, DeployOptions, iam, images, storage, training
from scones.deploy.iam import STAR_ONLY_ACTIONS
from scones.settings import Settings
from scones.testing import reset_boto3
from scones.workflow_functions import WORKFLOW_FUNCTIONS
from services.local_aws.profile import write_profile
from statemachine.definition import load_template

TRAINING_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.5-cpu-py311"


@pytest.fixture
def fake_aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for name in list(os.environ):
        if name.startswith("AWS_ENDPOINT_URL"):
            monkeypatch.delenv(name)
    # No `services` section: SageMaker too goes to moto, i.e. to "AWS".
    for name, value in write_profile(tmp_path / "aws", endpoint, None, profile="fakeaws").items():
        monkeypatch.setenv(name, value)
    reset_boto3()
    try:
        yield endpoint
    finally:
        server.stop()
        monkeypatch.undo()
        reset_boto3()


class RecordedPush:
    """Stands in for docker build + push: records the call, registers the image in ECR."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Path]] = []

    def __call__(self, image_uri: str, context: Path) -> None:
        self.calls.append((image_uri, context))
        repository, tag = image_uri.split("/", 1)[1].rsplit(":", 1)
        media_type = "application/vnd.docker.distribution.manifest.v2+json"
        manifest = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": "sha256:" + "0" * 64,
                "size": 1,
            },
            "layers": [],
        }
        boto3.client("ecr").put_image(
            repositoryName=repository,
            imageManifest=json.dumps(manifest),
            imageManifestMediaType=media_type,
            imageTag=tag,
        )


def _deploy(tmp_path: Path, push: RecordedPush, bucket: str = "scones-aws-test") -> Any:
    # moto's state outlives one test: a test that must start afresh names its own bucket.
    settings = Settings(state_dir=tmp_path / "state", bucket=bucket)
    options = DeployOptions(
        push_image=True,
        rows_train=400,
        rows_test=100,
        training_image=TRAINING_IMAGE,
        waiter_delay_s=1,
    )
    lines: list[str] = []
    result = Deployer(settings, options, image_pusher=push, echo=lines.append).deploy()
    return result, lines


def test_aws_deploy_creates_every_resource_then_changes_nothing(
    fake_aws: str, tmp_path: Path
) -> None:
    push = RecordedPush()
    result, _ = _deploy(tmp_path, push)
    assert result.changed

    # The serving image was built and pushed once, to the account's ECR repository.
    assert [uri for uri, _ in push.calls] == [result.serving_image]
    assert result.serving_image.startswith(f"{result.account_id}.dkr.ecr.us-east-1.amazonaws.com/")
    assert boto3.client("ecr").describe_repositories(repositoryNames=["scones-model-server"])

    # Data staged, training job with the source uploaded as SageMaker expects.
    s3 = boto3.client("s3")
    assert s3.head_object(Bucket=result.bucket, Key=f"{result.data_prefix}/test/manifest.jsonl")
    sagemaker = boto3.client("sagemaker")
    job = sagemaker.describe_training_job(TrainingJobName=result.training_job)
    hyper = job["HyperParameters"]
    assert hyper["sagemaker_program"] == "train.py"
    source = hyper["sagemaker_submit_directory"]
    assert s3.head_object(Bucket=result.bucket, Key=source.split("/", 3)[3])
    assert job["RoleArn"] == result.roles["scones-sagemaker"]

    # Model on the pushed image; endpoint config capturing every request.
    model = sagemaker.describe_model(ModelName=result.model_name)
    assert model["PrimaryContainer"]["Image"] == result.serving_image
    config = sagemaker.describe_endpoint_config(EndpointConfigName=result.endpoint_config)
    capture = config["DataCaptureConfig"]
    assert capture["EnableCapture"] is True
    assert capture["InitialSamplingPercentage"] == 100
    assert capture["DestinationS3Uri"] == f"s3://{result.bucket}/data-capture"
    assert {o["CaptureMode"] for o in capture["CaptureOptions"]} == {"Input", "Output"}
    endpoint = sagemaker.describe_endpoint(EndpointName=result.endpoint)
    assert endpoint["EndpointConfigName"] == result.endpoint_config

    # Lambdas: environment from configuration; policies scoped to the one resource each needs.
    lam, iam = boto3.client("lambda"), boto3.client("iam")
    classify = lam.get_function_configuration(FunctionName="scones-classify-image")
    assert classify["Environment"]["Variables"] == {"ENDPOINT_NAME": "scones-image-classifier"}
    filter_fn = lam.get_function_configuration(FunctionName="scones-filter-inferences")
    assert filter_fn["Environment"]["Variables"] == {"THRESHOLD": "0.93"}

    def statements(role: str) -> list[dict[str, Any]]:
        document = iam.get_role_policy(RoleName=role, PolicyName="permissions")["PolicyDocument"]
        parsed = document if isinstance(document, dict) else json.loads(document)
        return list(parsed["Statement"])

    serialize = statements("scones-serialize-image-data")
    assert serialize[0] == {
        "Effect": "Allow",
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{result.bucket}/{result.data_prefix}/*",
    }
    invoke = statements("scones-classify-image")[0]
    assert invoke["Action"] == "sagemaker:InvokeEndpoint"
    assert invoke["Resource"].endswith(":endpoint/scones-image-classifier")
    states = statements("scones-states")
    assert states[0]["Action"] == "lambda:InvokeFunction"
    assert sorted(r for r in states[0]["Resource"] if not r.endswith(":*")) == sorted(
        result.functions.values()
    )
    for role in ("scones-serialize-image-data", "scones-classify-image", "scones-states"):
        for statement in statements(role):
            assert statement["Resource"] != "*", f"{role} has an unscoped statement"

    # The state machine is the repository's ASL with only the placeholders replaced.
    sfn = boto3.client("stepfunctions")
    deployed = sfn.describe_state_machine(stateMachineArn=result.state_machine_arn)
    template = load_template()
    for function in WORKFLOW_FUNCTIONS:
        template = template.replace(
            "${" + function.placeholder + "}", result.functions[function.suffix]
        )
    assert json.loads(deployed["definition"]) == json.loads(template)
    assert deployed["roleArn"] == result.roles["scones-states"]

    # moto's training jobs write no model.tar.gz; SageMaker's would have. Without it the next
    # deploy would (rightly) heal by retraining.
    boto3.client("s3").put_object(
        Bucket=result.bucket, Key=result.model_artifact.split("/", 3)[3], Body=b"model"
    )

    # A second run is a no-op, and pushes nothing.
    again, lines = _deploy(tmp_path, push)
    assert not again.changed, "\n".join(lines)
    assert len(push.calls) == 1


def _statements(role: str) -> list[dict[str, Any]]:
    document = boto3.client("iam").get_role_policy(RoleName=role, PolicyName="permissions")[
        "PolicyDocument"
    ]
    parsed = document if isinstance(document, dict) else json.loads(document)
    return list(parsed["Statement"])


def test_all_five_roles_are_scoped_to_their_resources(fake_aws: str, tmp_path: Path) -> None:
    result, _ = _deploy(tmp_path, RecordedPush())
    roles = sorted(result.roles)
    assert roles == sorted(
        [*(f.name("scones") for f in WORKFLOW_FUNCTIONS), "scones-states", "scones-sagemaker"]
    )
    for role in roles:
        for statement in _statements(role):
            resources = statement["Resource"]
            resources = resources if isinstance(resources, list) else [resources]
            actions = statement["Action"] if isinstance(statement["Action"], list) else [
                statement["Action"]
            ]  # fmt: skip
            if "*" in resources:
                assert set(actions) <= STAR_ONLY_ACTIONS, f"{role}: {actions} on *"
            for resource in resources:
                assert ":*:" not in resource, f"{role}: any account or region in {resource}"
    bucket_arn = f"arn:aws:s3:::{result.bucket}"
    sagemaker = {
        action: statement["Resource"]
        for statement in _statements("scones-sagemaker")
        for action in (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
    }
    assert f"{bucket_arn}/*" not in sagemaker["s3:GetObject"], "reads the whole bucket"
    assert f"{bucket_arn}/{result.data_prefix}/*" in sagemaker["s3:GetObject"]
    assert sorted(sagemaker["s3:PutObject"]) == sorted(
        f"{bucket_arn}/{p}/*" for p in ("models", "checkpoints", "data-capture")
    )
    assert sorted(sagemaker["ecr:BatchGetImage"]) == sorted(
        [
            "arn:aws:ecr:us-east-1:763104351884:repository/pytorch-training",
            f"arn:aws:ecr:us-east-1:{result.account_id}:repository/scones-model-server",
        ]
    )
    for function in WORKFLOW_FUNCTIONS:
        group = f":log-group:/aws/lambda/{function.name('scones')}"
        assert all(group in r for r in _statements(function.name("scones"))[-1]["Resource"])


def test_a_lost_model_artifact_is_healed_by_training_again(fake_aws: str, tmp_path: Path) -> None:
    # moto's state outlives one test: this one names its own bucket (so its own job names).
    settings = Settings(state_dir=tmp_path / "state", bucket="scones-aws-heal")
    options = DeployOptions(rows_train=400, rows_test=100, waiter_delay_s=1, push_image=True,
                            training_image=TRAINING_IMAGE)  # fmt: skip
    steps = (storage.ensure_bucket, images.ensure_images, iam.ensure_roles,
             storage.ensure_data, training.ensure_training)  # fmt: skip
    lines: list[str] = []
    first = Deployer(settings, options, RecordedPush(), lines.append).deploy(steps)
    # moto's job wrote no artefact, as if it had vanished from S3 since.
    healed = Deployer(settings, options, RecordedPush(), lines.append).deploy(steps)
    change = next(c for c in healed.changes if c.resource == "training job")
    assert (change.action, change.name) == ("heal", f"{first.training_job}-2"), lines
    assert first.model_artifact in change.detail and "missing" in change.detail
    job = boto3.client("sagemaker").describe_training_job(TrainingJobName=change.name)
    assert job["TrainingJobStatus"] == "Completed"
    assert healed.changed
    # Once the new generation's artefact is there, the next deploy keeps it.
    boto3.client("s3").put_object(
        Bucket=healed.bucket, Key=healed.model_artifact.split("/", 3)[3], Body=b"model"
    )
    again = Deployer(settings, options, RecordedPush(), lines.append).deploy(steps)
    change = next(c for c in again.changes if c.resource == "training job")
    assert (change.action, change.name) == ("unchanged", f"{first.training_job}-2")
    assert not again.changed, "\n".join(lines)
