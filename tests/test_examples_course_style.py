"""The course-style workflow (examples/course-style) on the embedded stack, code unchanged.

A built-in image-classification job trains on `.lst` channels of two synthetic CIFAR-100 classes,
its model is served by the same image, and `deploy_workflow.py` deploys the course's three
Lambdas and exported state machine against that endpoint. 16 executions run at once: each
`serializeImageData` writes its image to /tmp/image.png, so only a private /tmp per execution
environment gives every execution the probabilities of its own image, which must equal a direct
InvokeEndpoint on that image exactly. A low-confidence image fails with the course's exception.
"""

from __future__ import annotations

import json
import runpy
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from scones.etl.archive import read_archive
from scones.etl.synthetic import write_archive
from scones.etl.transform import png_bytes
from scones.testing import LocalStack

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "course-style"
IMAGE = "811284229777.dkr.ecr.us-east-1.amazonaws.com/image-classification:1"
ROLE = "arn:aws:iam::123456789012:role/AmazonSageMaker-ExecutionRole-course"
BUCKET = "course-style-data"
CLASSES = ("bicycle", "motorcycle")  # labels 0 and 1 of the course's .lst files
EXECUTIONS = 16
THRESHOLD = 0.93  # the course's filterInferences constant


def _stage(tmp: Path) -> dict[str, Any]:
    """PNGs under train/ and test/ and the course's train.lst / test.lst, in S3."""
    archive = tmp / "cifar-100-python.tar.gz"
    digest = write_archive(archive, 0, 25_000, 10_000, only_classes=CLASSES)
    dataset = read_archive(archive, digest)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    tests: list[tuple[str, bytes]] = []
    counts = {}
    for split in ("train", "test"):
        data = getattr(dataset, split)
        lines = []
        jobs = []
        for row, (image, label, name) in enumerate(
            zip(data.images, data.fine_labels, data.filenames, strict=True)
        ):
            body = png_bytes(image)
            key = f"{split}/{name}"
            jobs.append((key, body))
            lines.append(f"{row}\t{CLASSES.index(dataset.fine_label_names[label])}\t{name}\n")
            if split == "test":
                tests.append((key, body))
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda kb: s3.put_object(Bucket=BUCKET, Key=kb[0], Body=kb[1]), jobs))
        s3.put_object(Bucket=BUCKET, Key=f"{split}.lst", Body="".join(lines).encode())
        counts[split] = len(lines)
    return {"tests": tests, "counts": counts}


def _channel(name: str, uri: str) -> dict[str, Any]:
    return {
        "ChannelName": name,
        "ContentType": "application/x-image",
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri}},
    }


@pytest.fixture(scope="module")
def course_endpoint(
    local_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A built-in image-classification endpoint trained on the staged .lst dataset."""
    staged = _stage(tmp_path_factory.mktemp("course-data"))
    sagemaker = boto3.client("sagemaker")
    started = time.perf_counter()
    sagemaker.create_training_job(
        TrainingJobName="course-ic",
        AlgorithmSpecification={"TrainingImage": IMAGE, "TrainingInputMode": "File"},
        RoleArn=ROLE,
        HyperParameters={
            "image_shape": "3,32,32",
            "num_classes": "2",
            "num_training_samples": str(staged["counts"]["train"]),
            "epochs": "8",
            "mini_batch_size": "32",
        },
        InputDataConfig=[
            _channel("train", f"s3://{BUCKET}/train/"),
            _channel("validation", f"s3://{BUCKET}/test/"),
            _channel("train_lst", f"s3://{BUCKET}/train.lst"),
            _channel("validation_lst", f"s3://{BUCKET}/test.lst"),
        ],
        OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/models"},
        ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 5},
        StoppingCondition={"MaxRuntimeInSeconds": 600},
    )
    sagemaker.get_waiter("training_job_completed_or_stopped").wait(
        TrainingJobName="course-ic", WaiterConfig={"Delay": 2, "MaxAttempts": 300}
    )
    job = sagemaker.describe_training_job(TrainingJobName="course-ic")
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    trained = time.perf_counter()
    sagemaker.create_model(
        ModelName="course-ic",
        ExecutionRoleArn=ROLE,
        PrimaryContainer={
            "Image": IMAGE,
            "ModelDataUrl": job["ModelArtifacts"]["S3ModelArtifacts"],
        },
    )
    sagemaker.create_endpoint_config(
        EndpointConfigName="course-ic",
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": "course-ic",
                "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.xlarge",
            }
        ],
    )
    sagemaker.create_endpoint(EndpointName="course-ic", EndpointConfigName="course-ic")
    sagemaker.get_waiter("endpoint_in_service").wait(
        EndpointName="course-ic", WaiterConfig={"Delay": 1, "MaxAttempts": 300}
    )
    print(
        f"\ncourse-style built-in job: {trained - started:.1f} s to Completed, "
        f"{job['FinalMetricDataList']}; endpoint {time.perf_counter() - trained:.1f} s"
    )
    yield {"endpoint": "course-ic", **staged}
    sagemaker.delete_endpoint(EndpointName="course-ic")


def _direct(endpoint: str, body: bytes) -> list[float]:
    runtime = boto3.client("sagemaker-runtime")
    answer = runtime.invoke_endpoint(EndpointName=endpoint, ContentType="image/png", Body=body)
    assert answer["ContentType"] == "application/json"
    return json.loads(answer["Body"].read())


def _deploy_workflow(endpoint: str) -> str:
    """The example's own deploy script (a file, not a package: run it by path)."""
    return str(runpy.run_path(str(EXAMPLE / "deploy_workflow.py"))["deploy"](endpoint))


def _run(sfn: Any, machine: str, name: str, key: str) -> dict[str, Any]:
    arn = sfn.start_execution(
        stateMachineArn=machine,
        name=name,
        input=json.dumps({"s3_bucket": BUCKET, "s3_key": key}),
    )["executionArn"]
    deadline = time.monotonic() + 180
    while True:
        described = sfn.describe_execution(executionArn=arn)
        if described["status"] != "RUNNING" or time.monotonic() > deadline:
            return described
        time.sleep(0.2)


def _failure(sfn: Any, result: dict[str, Any]) -> str:
    """Why an execution did not succeed: its last failure events."""
    events = sfn.get_execution_history(executionArn=result["executionArn"])["events"]
    details = [
        {k: v for k, v in event.items() if k.endswith("EventDetails")}
        for event in events
        if event["type"].endswith("Failed")
    ]
    return f"{result['name']}: {result['status']} {details}"


def test_sixteen_concurrent_executions_each_get_their_own_images_probabilities(
    course_endpoint: dict[str, Any],
) -> None:
    endpoint = course_endpoint["endpoint"]
    direct = {key: _direct(endpoint, body) for key, body in course_endpoint["tests"]}
    for probabilities in direct.values():
        assert len(probabilities) == 2 and abs(sum(probabilities) - 1) < 1e-4
    confident = [key for key, p in direct.items() if max(p) >= THRESHOLD]
    # Images whose probabilities differ (by far more than the comparison's tolerance), so that
    # a swapped /tmp/image.png would show.
    chosen: list[str] = []
    for key in confident:
        if all(abs(direct[key][0] - direct[other][0]) > 1e-4 for other in chosen):
            chosen.append(key)
    assert len(chosen) >= EXECUTIONS, f"only {len(chosen)} confident, distinct test images"
    chosen = chosen[:EXECUTIONS]

    machine = _deploy_workflow(endpoint)
    assert _deploy_workflow(endpoint) == machine  # a second deploy updates in place
    sfn = boto3.client("stepfunctions", config=Config(max_pool_connections=EXECUTIONS * 2))
    started = time.perf_counter()
    with ThreadPoolExecutor(EXECUTIONS) as pool:
        results = list(
            pool.map(lambda ik: _run(sfn, machine, f"course-{ik[0]}", ik[1]), enumerate(chosen))
        )
    elapsed = time.perf_counter() - started
    print(f"\n{EXECUTIONS} concurrent course-style executions: {elapsed:.1f} s")
    for key, result in zip(chosen, results, strict=True):
        assert result["status"] == "SUCCEEDED", _failure(sfn, result)
        output = json.loads(result["output"])
        assert output["statusCode"] == 200
        body = output["body"]
        assert body["s3_key"] == key
        # Dynamic batching may put this image in a batch with others, which changes the order
        # of float sums in the network: equal to ~1e-8, not bit for bit.
        assert json.loads(body["inferences"]) == pytest.approx(direct[key], abs=1e-6), key


def test_a_low_confidence_image_fails_with_the_course_exception(
    course_endpoint: dict[str, Any],
) -> None:
    endpoint = course_endpoint["endpoint"]
    unsure = [
        key for key, body in course_endpoint["tests"] if max(_direct(endpoint, body)) < THRESHOLD
    ]
    if not unsure:
        pytest.skip("the model is confident on every test image: no low-confidence case")
    machine = _deploy_workflow(endpoint)
    result = _run(boto3.client("stepfunctions"), machine, "course-unsure", unsure[0])
    assert result["status"] == "FAILED"
    history = boto3.client("stepfunctions").get_execution_history(
        executionArn=result["executionArn"]
    )["events"]
    failed = next(e for e in history if e["type"] == "ExecutionFailed")[
        "executionFailedEventDetails"
    ]
    assert failed["error"] == "Exception"
    assert "THRESHOLD_CONFIDENCE_NOT_MET" in failed["cause"]
