"""Let through only confident inferences: `max(inferences) >= THRESHOLD` (default 0.93).

Event: `{"statusCode", "body": {..., "inferences": [floats]}}` (or the body itself).
Returns the same body; below the threshold raises `ThresholdConfidenceNotMet`, which the state
machine catches by name. Standard library only: this file is the whole deployable zip.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

DEFAULT_THRESHOLD = 0.93


class InvalidEvent(ValueError):
    """The event lacks `inferences` as a non-empty list of numbers."""


class ConfigurationError(RuntimeError):
    """`THRESHOLD` in the environment is not a number between 0 and 1."""


class ThresholdConfidenceNotMet(Exception):
    """The inference's highest confidence is below `THRESHOLD`."""


# Plain logging: the Lambda runtime formats each record (with LogFormat JSON, as the deploy
# sets: one JSON object with level, message, requestId and the `extra` fields) and filters
# it by the function's ApplicationLogLevel, the same locally and on AWS.
logger = logging.getLogger("filter_inferences")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Pass the event on when its highest confidence meets `THRESHOLD`; raise otherwise."""
    threshold = threshold_from_env()
    body = event_body(event)
    confidence = max(inferences_of(body))
    log_fields = {
        "s3_key": body.get("s3_key"),
        "label": body.get("label"),
        "confidence": confidence,
        "threshold": threshold,
    }
    if confidence < threshold:
        logger.info("inference below threshold", extra=log_fields)
        raise ThresholdConfidenceNotMet(
            f"highest confidence {confidence:.6f} (label {body.get('label')!r}) is below "
            f"the threshold {threshold}"
        )
    logger.info("inference passed", extra=log_fields)
    return {"statusCode": 200, "body": body}


def threshold_from_env() -> float:
    """The validated `THRESHOLD` from the environment (default 0.93)."""
    raw = os.environ.get("THRESHOLD", "").strip()
    if not raw:
        return DEFAULT_THRESHOLD
    try:
        threshold = float(raw)
    except ValueError:
        threshold = math.nan
    if not 0.0 <= threshold <= 1.0:
        raise ConfigurationError(f"THRESHOLD must be a number between 0 and 1, got {raw!r}")
    return threshold


def event_body(event: Any) -> dict[str, Any]:
    """The event's fields, from the raw event or its `{"body": {...}}` wrapper."""
    if not isinstance(event, dict):
        raise InvalidEvent(f"the event must be a JSON object, not {type(event).__name__}")
    body = event.get("body", event)
    if not isinstance(body, dict):
        raise InvalidEvent(f"the event's body must be a JSON object, not {type(body).__name__}")
    return body


def inferences_of(body: dict[str, Any]) -> list[float]:
    """The body's `inferences` as a non-empty list of finite numbers."""
    inferences = body.get("inferences")
    is_numbers = isinstance(inferences, list) and all(
        isinstance(p, (int, float)) and not isinstance(p, bool) for p in inferences
    )
    if not is_numbers or not inferences or not all(math.isfinite(p) for p in inferences):
        raise InvalidEvent(
            f"'inferences' must be a non-empty list of numbers, got {json.dumps(inferences)[:200]}"
        )
    return [float(p) for p in inferences]
