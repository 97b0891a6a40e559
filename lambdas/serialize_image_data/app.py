"""Serialize an S3 image into the workflow event: its bytes as base64 `image_data`.

Event: `{"s3_bucket", "s3_key"}` (or the same inside `{"body": {...}}`).
Returns: `{"statusCode": 200, "body": {"s3_bucket", "s3_key", "image_data", "inferences": []}}`.
Standard library and boto3 only: this file is the whole deployable zip.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import boto3
from botocore.exceptions import ClientError

# Step Functions refuses a state payload above 256 KiB; the image's base64 has to leave room for
# the other fields that ride along (inferences of up to 100 classes, label, keys, an error Cause).
STATE_PAYLOAD_LIMIT = 262_144
RESERVED_PAYLOAD_BYTES = 16_384
MAX_IMAGE_DATA_CHARS = STATE_PAYLOAD_LIMIT - RESERVED_PAYLOAD_BYTES
MAX_IMAGE_BYTES = MAX_IMAGE_DATA_CHARS // 4 * 3
MAX_KEY_LENGTH = 1024

# On AWS a missing key reads as AccessDenied when the role may not list the bucket.
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404", "AccessDenied", "403"})
INVALID_LOCATION_CODES = frozenset({"InvalidBucketName", "KeyTooLongError", "InvalidArgument"})


class InvalidEvent(ValueError):
    """The event lacks `s3_bucket`/`s3_key` or holds them with the wrong type."""


class ImageNotFound(LookupError):
    """The object (or its bucket) does not exist, or may not be read."""


class NotAnImage(ValueError):
    """The object's bytes are not a PNG, JPEG, GIF, BMP or WebP image."""


class ImageTooLarge(ValueError):
    """The image's base64 would push the state payload above the 256 KiB limit."""


# Plain logging: the Lambda runtime formats each record (with LogFormat JSON, as the deploy
# sets: one JSON object with level, message, requestId and the `extra` fields) and filters
# it by the function's ApplicationLogLevel, the same locally and on AWS.
logger = logging.getLogger("serialize_image_data")
s3 = boto3.client("s3")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Read the image at `s3_bucket`/`s3_key` and return it base64-encoded in the event body."""
    bucket, key = image_location(event)
    image = read_image(bucket, key)
    image_format = image_format_of(image)
    if image_format is None:
        raise NotAnImage(f"s3://{bucket}/{key} is not a PNG, JPEG, GIF, BMP or WebP image")
    logger.info(
        "image serialized",
        extra={
            "s3_bucket": bucket,
            "s3_key": key,
            "bytes": len(image),
            "format": image_format,
        },
    )
    return {
        "statusCode": 200,
        "body": {
            "s3_bucket": bucket,
            "s3_key": key,
            "image_data": base64.b64encode(image).decode("ascii"),
            "inferences": [],
        },
    }


def event_body(event: Any) -> dict[str, Any]:
    """The event's fields, from the raw event or its `{"body": {...}}` wrapper."""
    if not isinstance(event, dict):
        raise InvalidEvent(f"the event must be a JSON object, not {type(event).__name__}")
    body = event.get("body", event)
    if not isinstance(body, dict):
        raise InvalidEvent(f"the event's body must be a JSON object, not {type(body).__name__}")
    return body


def image_location(event: Any) -> tuple[str, str]:
    """The validated `(s3_bucket, s3_key)` of the image the event names."""
    body = event_body(event)
    bucket, key = required_string(body, "s3_bucket"), required_string(body, "s3_key")
    if len(key.encode("utf-8")) > MAX_KEY_LENGTH:
        raise InvalidEvent(f"'s3_key' is longer than {MAX_KEY_LENGTH} bytes")
    return bucket, key


def required_string(body: dict[str, Any], field_name: str) -> str:
    """The body's non-empty string field `field_name`."""
    value = body.get(field_name)
    if not isinstance(value, str) or not value:
        raise InvalidEvent(f"'{field_name}' must be a non-empty string, got {value!r}")
    return value


def read_image(bucket: str, key: str) -> bytes:
    """The object's bytes, refusing objects too large to travel in the state payload."""
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in NOT_FOUND_CODES:
            raise ImageNotFound(f"s3://{bucket}/{key} not found ({code})") from error
        if code in INVALID_LOCATION_CODES:
            raise InvalidEvent(f"s3://{bucket}/{key} is not a valid location ({code})") from error
        raise
    with response["Body"] as stream:
        if response.get("ContentLength", 0) > MAX_IMAGE_BYTES:
            raise_too_large(bucket, key, response["ContentLength"])
        image: bytes = stream.read(MAX_IMAGE_BYTES + 1)
    if len(image) > MAX_IMAGE_BYTES:
        raise_too_large(bucket, key, len(image))
    return image


def raise_too_large(bucket: str, key: str, size: int) -> None:
    """Raise `ImageTooLarge` for an object of `size` bytes."""
    raise ImageTooLarge(
        f"s3://{bucket}/{key} has {size} bytes; its base64 would exceed "
        f"{MAX_IMAGE_DATA_CHARS} characters of the {STATE_PAYLOAD_LIMIT}-byte state payload "
        f"(at most {MAX_IMAGE_BYTES} bytes)"
    )


def image_format_of(data: bytes) -> str | None:
    """The image format named by the data's magic bytes, or None when it is not an image."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data.startswith(b"BM") and len(data) >= 26:
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None
