"""The deploy's data and training steps (scones.deploy.storage, scones.deploy.training) on a
fake AWS: the data staged, the training job as SageMaker expects it, a lost artefact healed."""

from __future__ import annotations

from pathlib import Path

import boto3

from scones.deploy import DeployResult, iam, images, storage, training
from scones.testing_deploy import RecordedPush, aws_deploy

TRAINING_STEPS = (
    storage.ensure_bucket,
    images.ensure_images,
    iam.ensure_roles,
    storage.ensure_data,
    training.ensure_training,
)


def test_the_data_is_staged_and_the_job_gets_the_source_as_sagemaker_expects(
    aws_deployed: DeployResult,
) -> None:
    s3 = boto3.client("s3")
    assert s3.head_object(
        Bucket=aws_deployed.bucket, Key=f"{aws_deployed.data_prefix}/test/manifest.jsonl"
    )
    job = boto3.client("sagemaker").describe_training_job(TrainingJobName=aws_deployed.training_job)
    hyper = job["HyperParameters"]
    assert hyper["sagemaker_program"] == "train.py"
    source = hyper["sagemaker_submit_directory"]
    assert s3.head_object(Bucket=aws_deployed.bucket, Key=source.split("/", 3)[3])
    assert job["RoleArn"] == aws_deployed.roles["scones-sagemaker"]


def test_a_lost_model_artifact_is_healed_by_training_again(
    fake_aws: dict[str, str], tmp_path: Path
) -> None:
    # moto's state outlives one test: this one names its own bucket (so its own job names).
    state_dir, bucket = tmp_path / "state", "scones-aws-heal"
    first, lines = aws_deploy(state_dir, RecordedPush(), bucket, TRAINING_STEPS)
    # moto's job wrote no artefact, as if it had vanished from S3 since.
    healed, more = aws_deploy(state_dir, RecordedPush(), bucket, TRAINING_STEPS)
    lines += more
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
    again, more = aws_deploy(state_dir, RecordedPush(), bucket, TRAINING_STEPS)
    lines += more
    change = next(c for c in again.changes if c.resource == "training job")
    assert (change.action, change.name) == ("unchanged", f"{first.training_job}-2")
    assert not again.changed, "\n".join(lines)
