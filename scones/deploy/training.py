"""The training job: one per (source, data, hyperparameters, image), retrained if its model is lost.

A job's name is a digest of what it depends on, so an unchanged deploy finds the job that ran
before. When that job's `model.tar.gz` has vanished from S3, the deploy heals: it starts the next
generation of the same job (`<name>-2`, `-3`, ...; AWS never reuses a job name) and says so.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from scones.archives import reproducible_tar_gz
from scones.deploy.context import (
    DeployContext,
    DeployError,
    DeployResult,
    digest,
    object_exists,
    split_s3_uri,
)
from scones.deploy.images import training_image
from scones.deploy.storage import data_fingerprint
from scones.settings import REPO_ROOT

METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": r"train_loss=([0-9.]+)"},
    {"Name": "validation:loss", "Regex": r"val_loss=([0-9.]+)"},
    {"Name": "validation:accuracy", "Regex": r"val_acc=([0-9.]+)"},
]
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
TERMINAL = ("Completed", "Failed", "Stopped")


def is_source(path: Path) -> bool:
    """The files of `model/` that the training job runs."""
    return "__pycache__" not in path.parts and path.suffix in (".py", ".txt", ".json")


def _describe(sagemaker: Any, name: str) -> dict[str, Any] | None:
    try:
        return dict(sagemaker.describe_training_job(TrainingJobName=name))
    except ClientError as error:
        if "ValidationException" not in str(error) and "ResourceNotFound" not in str(error):
            raise
        return None


def _ended_badly(name: str, job: dict[str, Any]) -> DeployError:
    return DeployError(
        f"training job {name} ended {job['TrainingJobStatus']}: "
        f"{job.get('FailureReason', 'no reason given')}"
    )


def ensure_training(ctx: DeployContext, result: DeployResult) -> None:
    """Run the training job for this source, data and hyperparameters, unless it already ran."""
    settings, sagemaker = ctx.settings, ctx.client("sagemaker")
    source = reproducible_tar_gz(REPO_ROOT / "model", is_source)
    source_key = f"code/sourcedir-{digest(source)[:16]}.tar.gz"
    hyperparameters = {
        "model": settings.architecture,
        "min-val-accuracy": str(settings.min_val_accuracy),
        "seed": str(settings.seed),
        "sagemaker_program": "train.py",
        "sagemaker_submit_directory": f"s3://{result.bucket}/{source_key}",
    }
    if settings.epochs:
        hyperparameters["epochs"] = str(settings.epochs)
    image = result.training_image or training_image(ctx, result.region)
    fingerprint = digest(
        source,
        data_fingerprint(ctx, result),
        json.dumps(hyperparameters, sort_keys=True),
        image,
    )
    base = f"{ctx.prefix}-train-{fingerprint[:12]}"
    lost: str | None = None  # the artefact of an earlier generation that vanished
    for generation in itertools.count(1):
        name = base if generation == 1 else f"{base}-{generation}"
        job = _describe(sagemaker, name)
        if job is None or job["TrainingJobStatus"] not in ("Completed", "Failed", "Stopped"):
            break
        if job["TrainingJobStatus"] != "Completed":
            raise _ended_badly(name, job)
        artifact = job["ModelArtifacts"]["S3ModelArtifacts"]
        if object_exists(ctx, *split_s3_uri(artifact)):
            result.training_job, result.model_artifact = name, artifact
            if lost:
                ctx.note(result, "training job", name, "unchanged", f"(replaces lost {lost})")
            else:
                ctx.note(result, "training job", name, "unchanged")
            return
        lost = artifact
    result.training_job = name
    output = f"s3://{result.bucket}/models"
    action, detail = ("heal", f"retrain: {lost} is missing") if lost else ("create", "")
    if ctx.options.plan:
        result.model_artifact = f"{output}/{name}/output/model.tar.gz"
        ctx.note(result, "training job", name, action, detail)
        return
    if job is None:
        if not object_exists(ctx, result.bucket, source_key):
            ctx.client("s3").put_object(Bucket=result.bucket, Key=source_key, Body=source)
        _create_job(ctx, result, name, image, hyperparameters, output)
        ctx.echo(f"    training job {name} started; waiting for it")
    started = time.monotonic()
    if ctx.options.stream_logs:
        job = follow_training_job(name, ctx.echo, settings.waiter_delay_s)
    else:
        ctx.wait(
            "sagemaker",
            "training_job_completed_or_stopped",
            f"training job {name}",
            lambda: "",
            max_attempts=3600,
            TrainingJobName=name,
        )
        job = dict(sagemaker.describe_training_job(TrainingJobName=name))
    if job["TrainingJobStatus"] != "Completed":
        raise _ended_badly(name, job)
    result.model_artifact = job["ModelArtifacts"]["S3ModelArtifacts"]
    metrics = {m["MetricName"]: m["Value"] for m in job.get("FinalMetricDataList", [])}
    took = f"{time.monotonic() - started:.0f}s"
    if "validation:accuracy" in metrics:
        took += f", validation accuracy {metrics['validation:accuracy']:.3f}"
    ctx.note(result, "training job", name, action, f"{detail}; {took}" if detail else took)


def _create_job(
    ctx: DeployContext,
    result: DeployResult,
    name: str,
    image: str,
    hyperparameters: dict[str, str],
    output: str,
) -> None:
    def channel(split: str) -> dict[str, Any]:
        return {
            "ChannelName": split,
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": f"s3://{result.bucket}/{result.data_prefix}/{split}/",
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
            "InputMode": "File",
        }

    ctx.client("sagemaker").create_training_job(
        TrainingJobName=name,
        AlgorithmSpecification={
            "TrainingImage": image,
            "TrainingInputMode": "File",
            "MetricDefinitions": METRIC_DEFINITIONS,
        },
        RoleArn=result.roles[f"{ctx.prefix}-sagemaker"],
        InputDataConfig=[channel("train"), channel("test")],
        OutputDataConfig={"S3OutputPath": output},
        ResourceConfig={
            "InstanceType": ctx.settings.training_instance,
            "InstanceCount": 1,
            "VolumeSizeInGB": 30,
        },
        StoppingCondition={"MaxRuntimeInSeconds": 3600},
        HyperParameters=hyperparameters,
        CheckpointConfig={"S3Uri": f"s3://{result.bucket}/checkpoints/{name}/"},
    )


def follow_training_job(
    name: str, echo: Callable[[str], None] = print, delay_s: float = 2.0
) -> dict[str, Any]:
    """Wait for a training job to end, echoing its CloudWatch log lines; return its description."""
    sagemaker, logs = boto3.client("sagemaker"), boto3.client("logs")
    tokens: dict[str, str] = {}

    def drain() -> None:
        try:
            streams = logs.describe_log_streams(
                logGroupName=TRAINING_LOG_GROUP, logStreamNamePrefix=f"{name}/"
            )["logStreams"]
        except ClientError:
            return  # no logs yet
        for stream in streams:
            stream_name = stream["logStreamName"]
            while True:
                kwargs: dict[str, Any] = {
                    "logGroupName": TRAINING_LOG_GROUP,
                    "logStreamName": stream_name,
                    "startFromHead": True,
                }
                if stream_name in tokens:
                    kwargs["nextToken"] = tokens[stream_name]
                page = logs.get_log_events(**kwargs)
                for event in page["events"]:
                    echo(f"    | {event['message']}")
                token = page.get("nextForwardToken")
                if not token or token == tokens.get(stream_name):
                    break
                tokens[stream_name] = token

    while True:
        job = sagemaker.describe_training_job(TrainingJobName=name)
        drain()
        if job["TrainingJobStatus"] in TERMINAL:
            return dict(job)
        time.sleep(delay_s)
