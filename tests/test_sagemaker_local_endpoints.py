"""Endpoints and the runtime (backend, endpoint_deployment, router): invocations, capture,
bad model archives.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError, WaiterError

from scones.deploy.hosting import capture_config
from scones.testing_processes import alive as pid_alive
from scones.testing_sagemaker import aws_capture_record
from tests.sagemaker_local_harness import (
    ACCOUNT,
    IMAGE,
    MAX_PAYLOAD,
    WAIT,
    SageMakerLocal,
    capture_records,
    create_endpoint,
    png_bytes,
    runtime,
    sm,
    tar_gz,
    wait_for,
)

# The harness's fixtures (a sagemaker-local process, a bucket, tiny models), by name.
pytest_plugins = ["tests.sagemaker_local_harness"]


def test_endpoint_invocations_and_data_capture(
    sagemaker_local: SageMakerLocal, bucket: str, tiny_model: dict[str, Any]
) -> None:
    client, rt = sm(), runtime()
    name = f"ep-{uuid.uuid4().hex[:8]}"
    prefix = f"capture-{name}"
    started = time.monotonic()
    create_endpoint(
        name,
        tiny_model["uri"],
        capture=capture_config(f"s3://{bucket}/{prefix}"),
    )
    assert client.describe_endpoint(EndpointName=name)["EndpointStatus"] == "Creating"
    client.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
    print(f"endpoint InService after {time.monotonic() - started:.2f} s")
    described = client.describe_endpoint(EndpointName=name)
    assert described["EndpointStatus"] == "InService"
    assert described["ProductionVariants"][0]["VariantName"] == "AllTraffic"
    assert described["ProductionVariants"][0]["DeployedImages"][0]["SpecifiedImage"] == IMAGE
    assert described["DataCaptureConfig"] == {
        "EnableCapture": True,
        "CaptureStatus": "Started",
        "CurrentSamplingPercentage": 100,
        "DestinationS3Uri": f"s3://{bucket}/{prefix}",
        "KmsKeyId": "",
    }

    image = png_bytes(1)
    before = datetime.now(UTC).replace(microsecond=0)
    answer = rt.invoke_endpoint(
        EndpointName=name,
        Body=image,
        ContentType="image/png",
        Accept="application/json",
        InferenceId="first-inference",
        CustomAttributes="trace=1",
    )
    assert answer["ContentType"] == "application/json"
    assert answer["InvokedProductionVariant"] == "AllTraffic"
    output = answer["Body"].read()
    probabilities = json.loads(output)
    module = tiny_model["module"]
    model = module.model_fn(str(tiny_model["dir"]))
    expected = module.predict_fn(module.input_fn(image, "image/png"), model).tolist()
    assert np.allclose(probabilities, expected, atol=1e-6)
    assert sum(probabilities[0]) == pytest.approx(1.0, abs=1e-5)

    records = wait_for(lambda: capture_records(bucket, prefix), "the first capture record")
    assert len(records) == 1
    key, record = records[0]
    inference_time = record["eventMetadata"]["inferenceTime"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", inference_time)
    when = datetime.strptime(inference_time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before <= when <= datetime.now(UTC)
    assert re.fullmatch(
        rf"{prefix}/{name}/AllTraffic/{when:%Y/%m/%d/%H}/\d\d-\d\d-\d{{3}}-[0-9a-f-]{{36}}\.jsonl",
        key,
    ), key
    assert uuid.UUID(record["eventMetadata"]["eventId"])
    assert record == aws_capture_record(
        image,
        {"data": output.decode(), "encoding": "JSON"},
        record["eventMetadata"]["eventId"],
        "first-inference",
        inference_time,
    )

    # 200 concurrent invocations: exactly 200 more records, one per inference id.
    ids = [f"burst-{i}" for i in range(200)]

    def invoke(inference_id: str) -> str:
        response = rt.invoke_endpoint(
            EndpointName=name, Body=png_bytes(hash(inference_id) % 1000), ContentType="image/png",
            Accept="application/json", InferenceId=inference_id,
        )  # fmt: skip
        return str(response["InvokedProductionVariant"])

    with ThreadPoolExecutor(max_workers=32) as pool:
        assert set(pool.map(invoke, ids)) == {"AllTraffic"}
    records = wait_for(
        lambda: (r := capture_records(bucket, prefix)) and len(r) >= 201 and r,
        "201 capture records",
    )
    assert len(records) == 201
    assert {r["eventMetadata"]["inferenceId"] for _, r in records} == {"first-inference", *ids}
    assert len({r["eventMetadata"]["eventId"] for _, r in records}) == 201

    # Garbage bytes: the container's 400 comes back as a 424 ModelError.
    with pytest.raises(ClientError) as err:
        rt.invoke_endpoint(EndpointName=name, Body=b"\x00garbage", ContentType="image/png")
    response = err.value.response
    assert response["Error"]["Code"] == "ModelError"
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert response["OriginalStatusCode"] == 400
    assert "cannot decode the image" in response["OriginalMessage"]
    assert response["LogStreamArn"].endswith(f"log-group:/aws/sagemaker/Endpoints/{name}")
    assert "Received client error (400) from primary" in response["Error"]["Message"]

    # Above InvokeEndpoint's limit: AWS's front door answers a bare 413.
    with pytest.raises(ClientError) as err:
        rt.invoke_endpoint(
            EndpointName=name, Body=b"\x00" * (MAX_PAYLOAD + 1), ContentType="image/png"
        )
    assert err.value.response["Error"]["Code"] == "413"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert rt.invoke_endpoint(EndpointName=name, Body=image, ContentType="image/png")["Body"].read()

    with pytest.raises(ClientError) as err:
        rt.invoke_endpoint(EndpointName="no-such-endpoint", Body=image, ContentType="image/png")
    assert err.value.response["Error"]["Code"] == "ValidationError"
    assert err.value.response["Error"]["Message"] == (
        f"Endpoint no-such-endpoint of account {ACCOUNT} not found."
    )
    # Neither failure was captured; the last success was.
    wait_for(lambda: len(capture_records(bucket, prefix)) == 202, "the 202nd record")

    # UpdateEndpoint: Updating, then the new config serves and the old server is gone.
    old_pid = sagemaker_local.server(name)["pid"]
    blue = {"VariantName": "Blue", "ModelName": name, "InstanceType": "ml.m5.large"}
    client.create_endpoint_config(EndpointConfigName=f"{name}-blue", ProductionVariants=[blue])
    client.update_endpoint(EndpointName=name, EndpointConfigName=f"{name}-blue")
    assert client.describe_endpoint(EndpointName=name)["EndpointStatus"] == "Updating"
    assert rt.invoke_endpoint(EndpointName=name, Body=image, ContentType="image/png")["Body"].read()
    client.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
    described = client.describe_endpoint(EndpointName=name)
    assert described["EndpointConfigName"] == f"{name}-blue"
    assert "DataCaptureConfig" not in described
    answer = rt.invoke_endpoint(EndpointName=name, Body=image, ContentType="image/png")
    assert answer["InvokedProductionVariant"] == "Blue"
    wait_for(lambda: not pid_alive(old_pid), "the old model server to stop")

    client.delete_endpoint(EndpointName=name)
    client.get_waiter("endpoint_deleted").wait(EndpointName=name, WaiterConfig=WAIT)
    assert name not in [e["EndpointName"] for e in client.list_endpoints()["Endpoints"]]
    assert len(capture_records(bucket, prefix)) == 203


def test_bad_model_archives_fail_the_endpoint(sagemaker_local: SageMakerLocal, bucket: str) -> None:
    client = sm()
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="models/corrupt/model.tar.gz", Body=os.urandom(4096))
    evil = tar_gz({"code/inference.py": b"", "../escaped.txt": b"owned"})
    s3.put_object(Bucket=bucket, Key="models/evil/model.tar.gz", Body=evil)
    cases = {
        f"corrupt-{uuid.uuid4().hex[:6]}": ("corrupt", "valid tar.gz archive"),
        f"evil-{uuid.uuid4().hex[:6]}": ("evil", "'..' component"),
    }
    for name, (folder, _) in cases.items():
        create_endpoint(name, f"s3://{bucket}/models/{folder}/model.tar.gz")
    for name, (_, reason) in cases.items():
        with pytest.raises(WaiterError, match="Failed"):
            client.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
        endpoint = client.describe_endpoint(EndpointName=name)
        assert endpoint["EndpointStatus"] == "Failed"
        assert reason in endpoint["FailureReason"]
        assert "Failed to extract model data archive" in endpoint["FailureReason"]
    state = sagemaker_local.state_dir
    assert not list(state.rglob("escaped.txt")) and not (state.parent / "escaped.txt").exists()
