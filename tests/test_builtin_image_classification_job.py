"""The built-in image-classification algorithm through real sagemaker-local and boto3 only:
the image URI chooses it, .lst and RecordIO channels train, its metrics reach
FinalMetricDataList and CloudWatch Logs, and a model with the same image serves a JSON list.
"""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from typing import Any

import boto3
import pytest
from botocore.exceptions import WaiterError

from scones.testing_models import coloured_png
from services.sagemaker_local.algorithms.image_classification import recordio
from services.sagemaker_local.training import docker_unavailable
from tests.sagemaker_local_harness import ROLE, WAIT, SageMakerLocal, runtime, sm

pytest_plugins = ["tests.sagemaker_local_harness"]

IC_IMAGE = "811284229777.dkr.ecr.us-east-1.amazonaws.com/image-classification:1"
PER_CLASS = 8
COURSE_HPS = {
    "image_shape": "3,16,16",
    "num_classes": "2",
    "num_training_samples": str(2 * PER_CLASS),
    "epochs": "2",
    "learning_rate": "0.01",
    "mini_batch_size": "8",
}


@pytest.fixture(scope="module")
def ic_data(bucket: str) -> str:
    """Images + .lst (course layout) and the same images as RecordIO, under s3://bucket/ic/."""
    s3 = boto3.client("s3")
    for split, offset in (("train", 0), ("validation", 500)):
        lines = []
        buffer = io.BytesIO()
        records = []
        for i in range(2 * PER_CLASS):
            label = i % 2
            body = coloured_png(label, offset + i)
            s3.put_object(Bucket=bucket, Key=f"ic/{split}/{label}_{i}.png", Body=body)
            lines.append(f"{i}\t{label}\t{label}_{i}.png")
            records.append(recordio.ImageRecord((float(label),), i, body))
        s3.put_object(
            Bucket=bucket, Key=f"ic/{split}_lst/{split}.lst", Body="\n".join(lines).encode()
        )
        recordio.write_image_records(buffer, records)
        s3.put_object(Bucket=bucket, Key=f"ic/rec/{split}/{split}.rec", Body=buffer.getvalue())
    return f"s3://{bucket}/ic"


def channel(name: str, uri: str, content_type: str) -> dict[str, Any]:
    """An S3Prefix File-mode channel, as SDK v2's TrainingInput builds it."""
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": uri,
                "S3DataDistributionType": "FullyReplicated",
            }
        },
        "ContentType": content_type,
        "InputMode": "File",
    }


def image_channels(data: str) -> list[dict[str, Any]]:
    """train / validation / train_lst / validation_lst, application/x-image."""
    return [
        channel(name, f"{data}/{name}/", "application/x-image")
        for name in ("train", "validation", "train_lst", "validation_lst")
    ]


def create_job(
    name: str, bucket: str, channels: list[dict[str, Any]], image: str = IC_IMAGE, **hps: str
) -> None:
    """CreateTrainingJob as SDK v2's Estimator sends it for the built-in algorithm."""
    sm().create_training_job(
        TrainingJobName=name,
        AlgorithmSpecification={"TrainingImage": image, "TrainingInputMode": "File"},
        RoleArn=ROLE,
        HyperParameters={**COURSE_HPS, **hps},
        InputDataConfig=channels,
        OutputDataConfig={"S3OutputPath": f"s3://{bucket}/ic-output"},
        ResourceConfig={"InstanceType": "ml.p3.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 5},
        StoppingCondition={"MaxRuntimeInSeconds": 600},
    )


def wait_job(name: str) -> dict[str, Any]:
    """The job's description once it has ended."""
    client = sm()
    with contextlib.suppress(WaiterError):  # the waiter raises on Failed; the caller checks
        client.get_waiter("training_job_completed_or_stopped").wait(
            TrainingJobName=name, WaiterConfig=WAIT
        )
    job = dict(client.describe_training_job(TrainingJobName=name))
    assert job["TrainingJobStatus"] in ("Completed", "Failed", "Stopped"), job
    return job


def test_course_style_job_trains_reports_metrics_and_serves(
    sagemaker_local: SageMakerLocal, bucket: str, ic_data: str
) -> None:
    name = f"ic-course-{uuid.uuid4().hex[:8]}"
    create_job(name, bucket, image_channels(ic_data))
    job = wait_job(name)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    metrics = {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]}
    assert set(metrics) == {"train:accuracy", "validation:accuracy"}
    assert 0.0 <= metrics["validation:accuracy"] <= 1.0
    artefact = job["ModelArtifacts"]["S3ModelArtifacts"]
    assert artefact == f"s3://{bucket}/ic-output/{name}/output/model.tar.gz"
    events = boto3.client("logs").filter_log_events(
        logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix=name
    )["events"]
    lines = [e["message"] for e in events]
    assert any("Epoch[1] Validation-accuracy=" in line for line in lines), lines[-10:]
    assert any("Epoch[0] Train-accuracy=" in line for line in lines)

    client = sm()
    client.create_model(
        ModelName=name,
        PrimaryContainer={"Image": IC_IMAGE, "ModelDataUrl": artefact},
        ExecutionRoleArn=ROLE,
    )
    client.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": name,
                "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.large",
            }
        ],
    )
    client.create_endpoint(EndpointName=name, EndpointConfigName=name)
    try:
        client.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)

        def ask(content_type: str, accept: str, body: bytes) -> tuple[str, Any]:
            answer = runtime().invoke_endpoint(
                EndpointName=name, ContentType=content_type, Accept=accept, Body=body
            )
            return answer["ContentType"], json.loads(answer["Body"].read())

        answered_type, probabilities = ask("image/png", "*/*", coloured_png(1, 4242))
        assert answered_type == "application/json"
        assert isinstance(probabilities, list) and len(probabilities) == 2
        assert all(isinstance(p, float) for p in probabilities)
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        _, record = ask("application/x-image", "application/jsonlines", coloured_png(0, 4243))
        assert set(record) == {"prediction"} and len(record["prediction"]) == 2
        verbose = "application/jsonlines; verbose=true"
        _, detail = ask("image/png", verbose, coloured_png(1, 4242))
        assert detail["prediction"] == pytest.approx(probabilities)
        assert detail["labels"] == [0, 1]
        assert detail["predicted_label"] == probabilities.index(max(probabilities))
    finally:
        client.delete_endpoint(EndpointName=name)


def test_recordio_job_completes(sagemaker_local: SageMakerLocal, bucket: str, ic_data: str) -> None:
    name = f"ic-rec-{uuid.uuid4().hex[:8]}"
    channels = [
        channel(split, f"{ic_data}/rec/{split}/", "application/x-recordio")
        for split in ("train", "validation")
    ]
    create_job(name, bucket, channels, epochs="1")
    job = wait_job(name)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert {m["MetricName"] for m in job["FinalMetricDataList"]} == {
        "train:accuracy",
        "validation:accuracy",
    }


def test_bad_jobs_fail_with_aws_reasons(
    sagemaker_local: SageMakerLocal, bucket: str, ic_data: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    cases = {
        f"ic-unknown-hp-{tag}": (image_channels(ic_data), {"learning-rate": "0.1"}),
        f"ic-bad-value-{tag}": (image_channels(ic_data), {"mini_batch_size": "0"}),
        f"ic-no-validation-{tag}": (
            [c for c in image_channels(ic_data) if not c["ChannelName"].startswith("validation")],
            {},
        ),
        f"ic-label-{tag}": (image_channels(ic_data), {"num_classes": "1"}),
    }
    for name, (channels, hps) in cases.items():
        create_job(name, bucket, channels, **hps)
    reasons = {name.split(f"-{tag}")[0]: wait_job(name) for name in cases}
    for job in reasons.values():
        assert job["TrainingJobStatus"] == "Failed"
    prefix = "ClientError: Unable to initialize the algorithm. Failed to validate input "
    assert reasons["ic-unknown-hp"]["FailureReason"].startswith(prefix + "hyperparameters.")
    assert "('learning-rate' was unexpected)" in reasons["ic-unknown-hp"]["FailureReason"]
    assert "['mini_batch_size']" in reasons["ic-bad-value"]["FailureReason"]
    assert reasons["ic-no-validation"]["FailureReason"].startswith(prefix + "data configuration.")
    assert "'validation' is a required property" in reasons["ic-no-validation"]["FailureReason"]
    assert "label 1 is out of range" in reasons["ic-label"]["FailureReason"]


@pytest.mark.skipif(docker_unavailable() is None, reason="a Docker engine would run the image")
def test_other_images_fail_at_once_naming_the_image(
    sagemaker_local: SageMakerLocal, bucket: str, ic_data: str
) -> None:
    name = f"ic-other-{uuid.uuid4().hex[:8]}"
    other = "123456789012.dkr.ecr.us-east-1.amazonaws.com/my-own-algorithm:3"
    create_job(name, bucket, image_channels(ic_data), image=other)
    job = wait_job(name)
    assert job["TrainingJobStatus"] == "Failed"
    reason = job["FailureReason"]
    assert reason.startswith(f"ClientError: Cannot run training image '{other}'")
    assert f"needs a Docker engine, and {docker_unavailable()}" in reason
    assert job["SecondaryStatusTransitions"][-1]["Status"] == "Failed"
    assert "Downloading" not in {t["Status"] for t in job["SecondaryStatusTransitions"]}
