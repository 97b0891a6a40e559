"""Classify the event's image on the SageMaker endpoint named by `ENDPOINT_NAME`.

Event: `{"statusCode", "body": {..., "image_data": <base64>}}` (or the body itself).
Returns the same body with `inferences` (a JSON list of floats) and the predicted `label`.
Standard library and boto3 only: this file is the whole deployable zip.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import os
import re
from typing import Any

import boto3
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

# SageMaker's own rule for endpoint names.
ENDPOINT_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
# Errors of a healthy request to a busy or starting endpoint: worth a retry.
TRANSIENT_ERROR_CODES = frozenset(
    {
        "InternalFailure",
        "InternalDependencyException",
        "ModelNotReadyException",
        "ServiceUnavailable",
        "ThrottlingException",
    }
)
TRANSIENT_STATUS_CODES = frozenset({429, 500, 502, 503, 504})
CONNECTION_ERRORS = (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)


class InvalidEvent(ValueError):
    """The event lacks a base64 `image_data` string."""


class NotAnImage(ValueError):
    """The decoded `image_data` is not a PNG, JPEG, GIF, BMP or WebP image."""


class ConfigurationError(RuntimeError):
    """The function's environment is missing or holds an invalid `ENDPOINT_NAME`."""


class EndpointError(RuntimeError):
    """The endpoint refused the request or the model failed on it (not worth a retry)."""


class EndpointUnavailable(RuntimeError):
    """The endpoint is busy, starting or unreachable (worth a retry)."""


# Plain logging: the Lambda runtime formats each record (with LogFormat JSON, as the deploy
# sets: one JSON object with level, message, requestId and the `extra` fields) and filters
# it by the function's ApplicationLogLevel, the same locally and on AWS.
logger = logging.getLogger("classify_image")
sagemaker_runtime = boto3.client("sagemaker-runtime")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Classify `image_data` on the endpoint; add `inferences` and `label` to the body."""
    endpoint_name = endpoint_name_from_env()
    body = event_body(event)
    image = decode_image_data(body)
    content_type = content_type_of(image)
    response_body = invoke_endpoint(endpoint_name, image, content_type)
    inferences, label = parse_inference(response_body)
    logger.info(
        "image classified",
        extra={
            "endpoint_name": endpoint_name,
            "s3_key": body.get("s3_key"),
            "label": label,
            "confidence": max(inferences),
        },
    )
    return {"statusCode": 200, "body": {**body, "inferences": inferences, "label": label}}


def endpoint_name_from_env() -> str:
    """The validated `ENDPOINT_NAME` from the environment."""
    name = os.environ.get("ENDPOINT_NAME", "").strip()
    if not ENDPOINT_NAME_PATTERN.fullmatch(name):
        raise ConfigurationError(
            f"ENDPOINT_NAME must be a SageMaker endpoint name (1-63 letters, digits and "
            f"hyphens), got {name!r}"
        )
    return name


def event_body(event: Any) -> dict[str, Any]:
    """The event's fields, from the raw event or its `{"body": {...}}` wrapper."""
    if not isinstance(event, dict):
        raise InvalidEvent(f"the event must be a JSON object, not {type(event).__name__}")
    body = event.get("body", event)
    if not isinstance(body, dict):
        raise InvalidEvent(f"the event's body must be a JSON object, not {type(body).__name__}")
    return body


def decode_image_data(body: dict[str, Any]) -> bytes:
    """The image bytes from the body's base64 `image_data`."""
    image_data = body.get("image_data")
    if not isinstance(image_data, str) or not image_data:
        raise InvalidEvent(
            f"'image_data' must be a non-empty base64 string, got {image_data!r:.80}"
        )
    try:
        return base64.b64decode(image_data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidEvent(f"'image_data' is not valid base64: {error}") from error


def content_type_of(image: bytes) -> str:
    """The request content type for the image, from its magic bytes."""
    if image.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if image.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    is_gif = image.startswith((b"GIF87a", b"GIF89a"))
    is_bmp = image.startswith(b"BM") and len(image) >= 26
    is_webp = image[:4] == b"RIFF" and image[8:12] == b"WEBP"
    if is_gif or is_bmp or is_webp:
        return "application/x-image"
    raise NotAnImage("'image_data' is not a PNG, JPEG, GIF, BMP or WebP image")


def invoke_endpoint(endpoint_name: str, image: bytes, content_type: str) -> bytes:
    """The endpoint's response body for the image, endpoint failures raised as named errors."""
    try:
        response = sagemaker_runtime.invoke_endpoint(
            EndpointName=endpoint_name,
            ContentType=content_type,
            Accept="application/json",
            Body=image,
        )
    except (ClientError, *CONNECTION_ERRORS) as error:
        raise endpoint_failure(endpoint_name, error) from error
    with response["Body"] as stream:
        payload: bytes = stream.read()
    return payload


def endpoint_failure(endpoint_name: str, error: Exception) -> EndpointError | EndpointUnavailable:
    """The named error for a failed `invoke_endpoint`: retryable or not, with AWS's message."""
    if not isinstance(error, ClientError):
        return EndpointUnavailable(f"endpoint {endpoint_name!r} unreachable: {error}")
    response: dict[str, Any] = error.response
    details = response.get("Error", {})
    code = str(details.get("Code", "Unknown"))
    message = f"endpoint {endpoint_name!r}: {code}: {details.get('Message', '')}"
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "ModelError":
        original_status = response.get("OriginalStatusCode")
        message += f" (OriginalStatusCode={original_status}, "
        message += f"OriginalMessage={response.get('OriginalMessage', '')!r})"
        # The model server itself said "busy": the same request may well succeed later.
        if original_status in (429, 503):
            return EndpointUnavailable(message)
        return EndpointError(message)
    if code in TRANSIENT_ERROR_CODES or status in TRANSIENT_STATUS_CODES:
        return EndpointUnavailable(message)
    return EndpointError(message)


def parse_inference(response_body: bytes) -> tuple[list[float], str]:
    """`(probabilities, label)` from the model server's JSON answer.

    Accepts `{"probabilities": [...], "label": str}`, a plain list of probabilities, or a
    batch of one (`[[...]]`); without a label the predicted class index is the label.
    """
    try:
        answer = json.loads(response_body)
    except (UnicodeDecodeError, ValueError) as error:
        raise EndpointError(
            f"the endpoint's answer is not JSON: {response_body[:200]!r}"
        ) from error
    label: Any = None
    if isinstance(answer, dict):
        label = answer.get("label")
        answer = answer.get("probabilities")
    if isinstance(answer, list) and len(answer) == 1 and isinstance(answer[0], list):
        answer = answer[0]
    probabilities = probabilities_of(answer)
    if label is None:
        label = max(range(len(probabilities)), key=probabilities.__getitem__)
    if not isinstance(label, (str, int)) or isinstance(label, bool):
        raise EndpointError(f"the endpoint's label must be a string, got {label!r}")
    return probabilities, str(label)


def probabilities_of(value: Any) -> list[float]:
    """The value as a non-empty list of finite floats."""
    is_numbers = isinstance(value, list) and all(
        isinstance(p, (int, float)) and not isinstance(p, bool) for p in value
    )
    if not is_numbers or not value or not all(math.isfinite(p) for p in value):
        raise EndpointError(
            f"the endpoint's probabilities must be a non-empty list of numbers, "
            f"got {json.dumps(value)[:200]}"
        )
    return [float(p) for p in value]
