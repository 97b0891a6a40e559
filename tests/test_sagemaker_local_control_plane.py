"""The wire of the control plane (responses, shapes): AWS-shaped errors, validation before
anything is stored, and browser safety before anything acts.
"""

from __future__ import annotations

import http.client
import json
import uuid

import pytest
from botocore.exceptions import ClientError

from scones.testing import BROWSER_REQUESTS
from tests.sagemaker_local_harness import (
    ACCOUNT,
    IMAGE,
    ROLE,
    SageMakerLocal,
    control,
    sm,
)

# The harness's fixtures (a sagemaker-local process, a bucket, tiny models), by name.
pytest_plugins = ["tests.sagemaker_local_harness"]


def test_control_plane_errors_are_shaped_as_aws(
    sagemaker_local: SageMakerLocal, tiny_model: dict
) -> None:
    client = sm()
    with pytest.raises(ClientError) as err:
        client.describe_endpoint(EndpointName="no-such-endpoint")
    assert err.value.response["Error"]["Code"] == "ValidationException"
    endpoint_arn = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:endpoint/no-such-endpoint"
    assert err.value.response["Error"]["Message"] == f'Could not find endpoint "{endpoint_arn}".'
    with pytest.raises(ClientError) as err:
        client.describe_training_job(TrainingJobName="no-such-job")
    assert err.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as err:
        client.create_model(
            ModelName="bad_name!", PrimaryContainer={"Image": IMAGE}, ExecutionRoleArn=ROLE
        )
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert "at 'modelName' failed to satisfy constraint" in err.value.response["Error"]["Message"]

    arn = client.create_model(
        ModelName="Dup-Model", PrimaryContainer={"Image": IMAGE, "ModelDataUrl": tiny_model["uri"]}
    )["ModelArn"]
    assert arn == f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:model/dup-model"
    with pytest.raises(ClientError) as err:
        client.create_model(ModelName="Dup-Model", PrimaryContainer={"Image": IMAGE})
    assert (
        err.value.response["Error"]["Message"] == f'Cannot create already existing model "{arn}".'
    )
    with pytest.raises(ClientError) as err:
        client.create_endpoint_config(
            EndpointConfigName="cfg-missing-model",
            ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": "nope"}],
        )
    assert "Could not find model" in err.value.response["Error"]["Message"]
    assert client.describe_model(ModelName="Dup-Model")["PrimaryContainer"]["Image"] == IMAGE
    assert "Dup-Model" in [m["ModelName"] for m in client.list_models()["Models"]]
    client.delete_model(ModelName="Dup-Model")
    with pytest.raises(ClientError):
        client.describe_model(ModelName="Dup-Model")


@pytest.mark.parametrize(
    ("target", "body", "needle"),
    [
        ("ListTrainingJobs", b'{"MaxResults": NaN}', "NaN"),
        ("ListTrainingJobs", b'{"CreationTimeAfter": "yesterday"}', "timestamp"),
        ("ListModels", b'{"CreationTimeBefore": Infinity}', "Infinity"),
        ("ListModels", b'{"MaxResults": 2.5}', "integer"),
        ("DescribeModel", b'{"ModelName": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested"),
        ("DescribeModel", b'{"ModelName": "m", "x": ' + b"[" * 40 + b"]" * 40 + b"}", "nested"),
    ],
)
def test_malformed_requests_are_400_validation_errors(
    sagemaker_local: SageMakerLocal, target: str, body: bytes, needle: str
) -> None:
    status, answer = control(sagemaker_local.port, target, body)
    assert status == 400, answer
    assert answer["__type"] == "ValidationException"
    assert needle in answer["message"]


@pytest.mark.parametrize(("headers", "expected"), BROWSER_REQUESTS)
def test_browser_requests_are_refused_before_anything_acts(
    sagemaker_local: SageMakerLocal, headers: dict[str, str], expected: int
) -> None:
    name = f"guard-{uuid.uuid4().hex[:6]}"
    body = json.dumps(
        {
            "ModelName": name,
            "PrimaryContainer": {"Image": "img", "ModelDataUrl": "s3://b/m.tar.gz"},
            "ExecutionRoleArn": "arn:aws:iam::123456789012:role/r",
        }
    ).encode()
    status, answer = control(sagemaker_local.port, "CreateModel", body, headers)
    assert status == expected, answer
    names = [m["ModelName"] for m in sm().list_models(MaxResults=100)["Models"]]
    assert (name in names) == (expected == 200), "a refused request must not act"
    if expected == 403:
        assert answer["__type"] == "AccessDeniedException"
        connection = http.client.HTTPConnection("127.0.0.1", sagemaker_local.port, timeout=10)
        connection.request("POST", "/endpoints/x/invocations", body=b"x", headers=headers)
        assert connection.getresponse().status == 403
        connection.close()
