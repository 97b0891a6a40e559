"""Capture through a real endpoint (router, capture, capture_spool): on disk before the
answer, shipped after a SIGKILL.
"""

from __future__ import annotations

import json
import signal
import uuid
from typing import Any

import boto3
import pytest

from tests.sagemaker_local_harness import (
    WAIT,
    SageMakerLocal,
    endpoint_in_service,
    input_capture,
    no_retry_runtime,
    png_bytes,
    process_env,
    sm,
    wait_for,
)

# The harness's fixtures (a sagemaker-local process, a bucket, tiny models), by name.
pytest_plugins = ["tests.sagemaker_local_harness"]


@pytest.fixture(scope="module")
def service(profile: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A sagemaker-local with a short stop grace and a lazy capture flush, for the module."""
    state = tmp_path_factory.mktemp("sm_resilience")
    env = process_env(SAGEMAKER_LOCAL_STOP_GRACE_S="2", SAGEMAKER_LOCAL_CAPTURE_FLUSH_SECONDS="300")
    with SageMakerLocal(state, profile["port"], env) as instance:
        yield instance


def test_a_captured_record_is_on_disk_before_the_answer_and_survives_sigkill(
    profile: dict[str, Any],
    service: SageMakerLocal,
    bucket: str,
    tiny_model: dict[str, Any],
) -> None:
    name = f"ep-cap-{uuid.uuid4().hex[:6]}"
    prefix = f"capture-{name}"
    endpoint_in_service(name, tiny_model["uri"], capture=input_capture(bucket, prefix))
    client = sm()
    rt = no_retry_runtime()
    ids = [f"id-{i}-{uuid.uuid4().hex[:4]}" for i in range(5)]
    for inference_id in ids:
        rt.invoke_endpoint(
            EndpointName=name, Body=png_bytes(1), ContentType="image/png", InferenceId=inference_id
        )
        spooled = "".join(
            p.read_text() for p in (service.state_dir / "capture-spool").rglob("*.open")
        )
        assert inference_id in spooled, "the record must be on disk when the answer arrives"
    service.stop(signal.SIGKILL)
    try:
        service.start()
        s3 = boto3.client("s3")

        def shipped() -> list[str]:
            found = []
            for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
                text = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().decode()
                found += [json.loads(x)["eventMetadata"]["inferenceId"] for x in text.splitlines()]
            return sorted(found)

        wait_for(lambda: shipped() == sorted(ids), "the spool shipped after the SIGKILL")
        client.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
    finally:
        client.delete_endpoint(EndpointName=name)
