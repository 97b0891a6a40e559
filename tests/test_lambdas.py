"""The three Lambda handlers, called in-process against the emulator's S3 (the `local` profile).

The endpoint is `SageMakerRuntimeStandIn`: a small HTTP server speaking InvokeEndpoint's wire
format (rest-json, AWS error headers), so botocore's own parsing and error classes are exercised;
the real model server behind sagemaker-local is tested end to end by the deploy's tests.
"""

from __future__ import annotations

import base64
import io
import json
import math
import sys
import uuid
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError
from PIL import Image

from scones.testing import service_role
from scones.testing_functions import create_function, load_app
from scones.testing_sagemaker import MODEL_ANSWER, SageMakerRuntimeStandIn
from tests.conftest import LocalAws

STATE_PAYLOAD_LIMIT = 262_144


def image_bytes(fmt: str, size: tuple[int, int] = (32, 32)) -> bytes:
    """A small real image in the given PIL format."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (180, 40, 20)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def endpoint() -> Iterator[SageMakerRuntimeStandIn]:
    with SageMakerRuntimeStandIn() as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def apps(local_aws: LocalAws, endpoint: SageMakerRuntimeStandIn) -> Iterator[dict[str, ModuleType]]:
    """The three handlers' modules, imported with clients that follow the `local` profile."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", endpoint.url)
        env.setenv("AWS_MAX_ATTEMPTS", "1")  # error mapping, not botocore's own retries
        modules = {
            f: load_app(f) for f in ("serialize_image_data", "classify_image", "filter_inferences")
        }
        yield modules
    for function in modules:
        sys.modules.pop(f"{function}_app", None)


@pytest.fixture(scope="module")
def bucket(local_aws: LocalAws) -> str:
    name = f"scones-lambdas-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def put(bucket: str, data: bytes, suffix: str = ".png") -> str:
    key = f"test/{uuid.uuid4().hex}{suffix}"
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data)
    return key


# --- serialize_image_data -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
def test_serialize_returns_exact_base64_of_the_object(
    apps: dict[str, ModuleType], bucket: str, fmt: str
) -> None:
    data = image_bytes(fmt)
    key = put(bucket, data, f".{fmt.lower()}")
    result = apps["serialize_image_data"].handler({"s3_bucket": bucket, "s3_key": key}, None)
    assert result == {
        "statusCode": 200,
        "body": {
            "s3_bucket": bucket,
            "s3_key": key,
            "image_data": base64.b64encode(data).decode(),
            "inferences": [],
        },
    }
    assert base64.b64decode(result["body"]["image_data"]) == data


def test_serialize_accepts_the_body_wrapper_of_the_original_project(
    apps: dict[str, ModuleType], bucket: str
) -> None:
    key = put(bucket, image_bytes("PNG"))
    raw = apps["serialize_image_data"].handler({"s3_bucket": bucket, "s3_key": key}, None)
    wrapped = apps["serialize_image_data"].handler(
        {"body": {"image_data": "", "s3_bucket": bucket, "s3_key": key}}, None
    )
    assert wrapped == raw


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"s3_bucket": "b"},
        {"s3_key": "k.png"},
        {"s3_bucket": "", "s3_key": "k.png"},
        {"s3_bucket": 7, "s3_key": "k.png"},
        {"s3_bucket": "scones-x", "s3_key": ["k.png"]},
        {"s3_bucket": "scones-x", "s3_key": "k" * 1025},
        {"body": "s3://scones-x/k.png"},
        ["s3_bucket", "s3_key"],
    ],
)
def test_serialize_refuses_invalid_events(apps: dict[str, ModuleType], event: Any) -> None:
    app = apps["serialize_image_data"]
    with pytest.raises(app.InvalidEvent):
        app.handler(event, None)


def test_serialize_names_a_missing_object_and_a_missing_bucket(
    apps: dict[str, ModuleType], bucket: str
) -> None:
    app = apps["serialize_image_data"]
    with pytest.raises(app.ImageNotFound, match="NoSuchKey"):
        app.handler({"s3_bucket": bucket, "s3_key": "test/absent.png"}, None)
    with pytest.raises(app.ImageNotFound, match="NoSuchBucket"):
        app.handler({"s3_bucket": f"absent-{uuid.uuid4().hex[:8]}", "s3_key": "a.png"}, None)


@pytest.mark.parametrize(
    "data", [b"", b"just some text", b"%PDF-1.7\n", b"\x89PNX\r\n\x1a\n", b"RIFF\0\0\0\0WAVE"]
)
def test_serialize_refuses_objects_that_are_not_images(
    apps: dict[str, ModuleType], bucket: str, data: bytes
) -> None:
    app = apps["serialize_image_data"]
    with pytest.raises(app.NotAnImage):
        app.handler({"s3_bucket": bucket, "s3_key": put(bucket, data, ".bin")}, None)


def test_serialize_size_limit_keeps_the_state_payload_under_256_kib(
    apps: dict[str, ModuleType], bucket: str
) -> None:
    app = apps["serialize_image_data"]
    assert app.MAX_IMAGE_BYTES == 184_320  # 4/3 of it is 256 KiB less 16 KiB for other fields
    png_header = image_bytes("PNG")[:16]
    largest = png_header + bytes(app.MAX_IMAGE_BYTES - len(png_header))
    key = put(bucket, largest)
    result = app.handler({"s3_bucket": bucket, "s3_key": key}, None)
    assert base64.b64decode(result["body"]["image_data"]) == largest
    # Even with 100 class probabilities and a label added, the event fits the state payload.
    classified = {**result["body"], "inferences": [1 / 3] * 100, "label": "x" * 64}
    assert len(json.dumps({"statusCode": 200, "body": classified})) < STATE_PAYLOAD_LIMIT - 8192

    with pytest.raises(app.ImageTooLarge, match="184321 bytes"):
        app.handler({"s3_bucket": bucket, "s3_key": put(bucket, largest + b"\0")}, None)


@pytest.fixture(scope="module")
def deployed_serializer(local_aws: LocalAws) -> Callable[[str], str]:
    """serialize_image_data's real zip as a function in the emulator, per ApplicationLogLevel."""
    from lambdas import package

    lam = boto3.client("lambda")
    # Its least privilege: IAM is enforced on the function's role credentials, as on AWS.
    read = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::*/*"}
    role = service_role(boto3.client("iam"), "serializer", [read], ("lambda.amazonaws.com",))
    zip_bytes, _ = package.build_zip("serialize_image_data")

    def deploy(level: str) -> str:
        name = f"serialize-{level.lower()}-{uuid.uuid4().hex[:6]}"
        create_function(
            lam,
            name,
            zip_bytes,
            role,
            Timeout=30,
            LoggingConfig={"LogFormat": "JSON", "ApplicationLogLevel": level},
        )
        return name

    return deploy


@pytest.mark.parametrize(("level", "logged"), [("INFO", True), ("WARN", False)])
def test_serialize_logs_one_json_record_without_the_image(
    deployed_serializer: Callable[[str], str], bucket: str, level: str, logged: bool
) -> None:
    key = put(bucket, image_bytes("PNG"))
    response = boto3.client("lambda").invoke(
        FunctionName=deployed_serializer(level),
        Payload=json.dumps({"s3_bucket": bucket, "s3_key": key}).encode(),
        LogType="Tail",
    )
    assert "FunctionError" not in response, response["Payload"].read()
    lines = base64.b64decode(response["LogResult"]).decode().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    # botocore's own INFO line ("Found credentials in environment variables.") shows, as on AWS.
    application = [r for r in records if r.get("logger") == "serialize_image_data"]
    if not logged:  # filtered by the runtime at ApplicationLogLevel WARN
        assert application == []
        return
    assert len(application) == 1, lines
    record = application[0]
    assert (record["message"], record["level"]) == ("image serialized", "INFO")
    start = next(r for r in records if r.get("type") == "platform.start")
    assert record["requestId"] == start["record"]["requestId"]
    assert (record["s3_key"], record["format"]) == (key, "png")
    assert "image_data" not in record


# --- classify_image ---------------------------------------------------------------------------


def classify_event(data: bytes, **extra: Any) -> dict[str, Any]:
    body = {"s3_bucket": "scones-x", "s3_key": "test/a.png", "inferences": [], **extra}
    return {"statusCode": 200, "body": {**body, "image_data": base64.b64encode(data).decode()}}


@pytest.fixture
def endpoint_name(endpoint: SageMakerRuntimeStandIn, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"scones-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("ENDPOINT_NAME", name)
    return name


def test_classify_adds_inferences_and_label_and_keeps_the_body(
    apps: dict[str, ModuleType], endpoint: SageMakerRuntimeStandIn, endpoint_name: str
) -> None:
    endpoint.answer_json(endpoint_name, MODEL_ANSWER)
    data = image_bytes("PNG")
    event = classify_event(data, request_note="kept")
    result = apps["classify_image"].handler(event, None)
    assert result == {
        "statusCode": 200,
        "body": {**event["body"], "inferences": [0.0125, 0.9875], "label": "motorcycle"},
    }
    assert all(type(p) is float for p in result["body"]["inferences"])
    assert endpoint.requests[-1] == (endpoint_name, "image/png", "application/json", data)


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "application/x-image")],
)
def test_classify_sends_the_content_type_of_the_image(
    apps: dict[str, ModuleType],
    endpoint: SageMakerRuntimeStandIn,
    endpoint_name: str,
    fmt: str,
    content_type: str,
) -> None:
    endpoint.answer_json(endpoint_name, [0.4, 0.6])
    data = image_bytes(fmt)
    result = apps["classify_image"].handler({"body": classify_event(data)["body"]}, None)
    assert result["body"]["inferences"] == [0.4, 0.6]
    assert result["body"]["label"] == "1"
    assert endpoint.requests[-1][1:] == (content_type, "application/json", data)


@pytest.mark.parametrize(
    ("answer", "inferences", "label"),
    [
        (MODEL_ANSWER, [0.0125, 0.9875], "motorcycle"),
        ({"probabilities": [1, 0], "label": 0}, [1.0, 0.0], "0"),
        ({"probabilities": [0.2, 0.7, 0.1]}, [0.2, 0.7, 0.1], "1"),
        ([0.91, 0.09], [0.91, 0.09], "0"),
        ([[0.3, 0.7]], [0.3, 0.7], "1"),
    ],
)
def test_parse_inference_shapes_real_answers(
    apps: dict[str, ModuleType], answer: Any, inferences: list[float], label: str
) -> None:
    parsed = apps["classify_image"].parse_inference(json.dumps(answer).encode())
    assert parsed == (inferences, label)
    assert all(type(p) is float for p in parsed[0])


@pytest.mark.parametrize(
    "body",
    [
        b"<html>502</html>",
        b'"[0.1, 0.9]"',
        b'{"probabilities": "[0.1, 0.9]"}',
        b'{"probabilities": []}',
        b'{"probabilities": [0.5, null]}',
        b'{"probabilities": [0.5, true]}',
        b'{"probabilities": [0.5, NaN]}',
        b'{"probabilities": [0.5, 0.5], "label": ["a"]}',
        b"[[0.1, 0.9], [0.2, 0.8]]",
        b"\xff\xfe",
    ],
)
def test_parse_inference_refuses_malformed_answers(
    apps: dict[str, ModuleType], body: bytes
) -> None:
    app = apps["classify_image"]
    with pytest.raises(app.EndpointError):
        app.parse_inference(body)


@pytest.mark.parametrize("value", [None, "", "has space", "under_score", "-lead", "x" * 64])
def test_classify_refuses_a_missing_or_invalid_endpoint_name(
    apps: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("ENDPOINT_NAME", raising=False)
    else:
        monkeypatch.setenv("ENDPOINT_NAME", value)
    app = apps["classify_image"]
    with pytest.raises(app.ConfigurationError, match="ENDPOINT_NAME"):
        app.handler(classify_event(image_bytes("PNG")), None)


@pytest.mark.parametrize(
    "body",
    [
        {"s3_key": "a.png"},
        {"image_data": ""},
        {"image_data": b"bytes".hex()[:3]},
        {"image_data": "not base64!"},
        {"image_data": 42},
    ],
)
def test_classify_refuses_events_without_valid_image_data(
    apps: dict[str, ModuleType], endpoint_name: str, body: dict[str, Any]
) -> None:
    app = apps["classify_image"]
    with pytest.raises(app.InvalidEvent):
        app.handler({"body": body}, None)


def test_classify_refuses_image_data_that_is_not_an_image(
    apps: dict[str, ModuleType], endpoint: SageMakerRuntimeStandIn, endpoint_name: str
) -> None:
    app = apps["classify_image"]
    before = len(endpoint.requests)
    with pytest.raises(app.NotAnImage):
        app.handler(classify_event(b"plain text, not pixels"), None)
    assert len(endpoint.requests) == before  # refused before calling the endpoint


def test_classify_maps_a_model_error_with_the_original_message(
    apps: dict[str, ModuleType], endpoint: SageMakerRuntimeStandIn, endpoint_name: str
) -> None:
    endpoint.answer_error(
        endpoint_name,
        424,
        "ModelError",
        "Received server error (500) from primary",
        OriginalStatusCode=500,
        OriginalMessage="predict_fn failed: bad tensor shape",
    )
    app = apps["classify_image"]
    with pytest.raises(app.EndpointError) as raised:
        app.handler(classify_event(image_bytes("PNG")), None)
    message = str(raised.value)
    assert "ModelError" in message and "OriginalStatusCode=500" in message
    assert "predict_fn failed: bad tensor shape" in message
    assert type(raised.value).__name__ == "EndpointError"


def test_classify_maps_an_unknown_endpoint_to_endpoint_error(
    apps: dict[str, ModuleType], endpoint_name: str
) -> None:
    app = apps["classify_image"]
    with pytest.raises(app.EndpointError, match=rf"ValidationError: Endpoint {endpoint_name} of"):
        app.handler(classify_event(image_bytes("PNG")), None)


@pytest.mark.parametrize(
    ("status", "code", "fields"),
    [
        (503, "ServiceUnavailable", {}),
        (500, "InternalFailure", {}),
        (429, "ModelNotReadyException", {}),
        (424, "ModelError", {"OriginalStatusCode": 503, "OriginalMessage": "queue full"}),
    ],
)
def test_classify_maps_busy_endpoints_to_endpoint_unavailable(
    apps: dict[str, ModuleType],
    endpoint: SageMakerRuntimeStandIn,
    endpoint_name: str,
    status: int,
    code: str,
    fields: dict[str, Any],
) -> None:
    endpoint.answer_error(endpoint_name, status, code, "try again later", **fields)
    app = apps["classify_image"]
    with pytest.raises(app.EndpointUnavailable, match=code):
        app.handler(classify_event(image_bytes("PNG")), None)


def test_endpoint_failure_unit_maps_connection_errors_to_unavailable(
    apps: dict[str, ModuleType],
) -> None:
    app = apps["classify_image"]
    for error in (
        EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:9"),
    ):
        assert isinstance(app.endpoint_failure("scones", error), app.EndpointUnavailable)


# --- filter_inferences -----------------------------------------------------------------------


def filter_event(inferences: Any) -> dict[str, Any]:
    body = {"s3_bucket": "scones-x", "s3_key": "test/a.png", "image_data": "iVBORw0KGgo="}
    return {"statusCode": 200, "body": {**body, "inferences": inferences, "label": "bicycle"}}


@pytest.mark.parametrize("threshold", [None, "0.93"])
def test_filter_passes_at_the_threshold_and_raises_just_below(
    apps: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch, threshold: str | None
) -> None:
    if threshold is None:
        monkeypatch.delenv("THRESHOLD", raising=False)  # the default is 0.93
    else:
        monkeypatch.setenv("THRESHOLD", threshold)
    app = apps["filter_inferences"]
    passing = filter_event([0.07, 0.93])
    assert app.handler(passing, None) == passing
    assert app.handler(passing["body"], None) == passing  # the raw body works as well
    below = math.nextafter(0.93, 0.0)
    with pytest.raises(app.ThresholdConfidenceNotMet, match=r"below the threshold 0\.93"):
        app.handler(filter_event([1 - below, below]), None)
    # Step Functions catches by the class name, which is what errorType carries.
    assert app.ThresholdConfidenceNotMet.__name__ == "ThresholdConfidenceNotMet"


@pytest.mark.parametrize(("raw", "value"), [("0", 0.0), ("1", 1.0), (" 0.5 ", 0.5), ("", 0.93)])
def test_filter_reads_valid_thresholds(
    apps: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch, raw: str, value: float
) -> None:
    monkeypatch.setenv("THRESHOLD", raw)
    assert apps["filter_inferences"].threshold_from_env() == value


@pytest.mark.parametrize("raw", ["abc", "-0.01", "1.01", "nan", "inf", "93%"])
def test_filter_refuses_invalid_thresholds(
    apps: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("THRESHOLD", raw)
    app = apps["filter_inferences"]
    with pytest.raises(app.ConfigurationError, match="THRESHOLD"):
        app.handler(filter_event([0.01, 0.99]), None)


def test_filter_threshold_one_rejects_everything_but_certainty(
    apps: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THRESHOLD", "1.0")
    app = apps["filter_inferences"]
    assert app.handler(filter_event([0.0, 1.0]), None)["body"]["inferences"] == [0.0, 1.0]
    with pytest.raises(app.ThresholdConfidenceNotMet):
        app.handler(filter_event([0.0001, 0.9999]), None)


@pytest.mark.parametrize(
    "inferences", [None, [], "[0.1, 0.9]", [True, False], [0.5, None], ["0.9"], [math.inf, 0.1]]
)
def test_filter_refuses_invalid_inferences(
    apps: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch, inferences: Any
) -> None:
    monkeypatch.delenv("THRESHOLD", raising=False)
    app = apps["filter_inferences"]
    with pytest.raises(app.InvalidEvent, match="inferences"):
        app.handler(filter_event(inferences), None)
