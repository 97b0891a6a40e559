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
import sys
from datetime import UTC, datetime
from typing import Any

DEFAULT_THRESHOLD = 0.93


class InvalidEvent(ValueError):
    """The event lacks `inferences` as a non-empty list of numbers."""


class ConfigurationError(RuntimeError):
    """`THRESHOLD` in the environment is not a number between 0 and 1."""


class ThresholdConfidenceNotMet(Exception):
    """The inference's highest confidence is below `THRESHOLD`."""


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: level, message, function and the record's `extra` fields."""

    _RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "function": os.environ.get("AWS_LAMBDA_FUNCTION_NAME", record.name),
            "message": record.getMessage(),
        }
        entry.update((k, v) for k, v in vars(record).items() if k not in self._RECORD_FIELDS)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _StdoutHandler(logging.Handler):
    """Writes to the current `sys.stdout`, which Lambda ships to CloudWatch Logs."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stdout, flush=True)
        except Exception:
            self.handleError(record)


def _make_logger(name: str) -> logging.Logger:
    log = logging.getLogger(name)
    log.handlers[:] = [_StdoutHandler()]
    log.handlers[0].setFormatter(_JsonFormatter())
    log.propagate = False
    level = os.environ.get("AWS_LAMBDA_LOG_LEVEL") or os.environ.get("LOG_LEVEL") or "INFO"
    # An unknown level (AWS's TRACE, a typo) must not break the function's start.
    log.setLevel(logging.getLevelNamesMapping().get(level.strip().upper(), logging.INFO))
    return log


logger = _make_logger("filter_inferences")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Pass the event on when its highest confidence meets `THRESHOLD`; raise otherwise."""
    threshold = threshold_from_env()
    body = event_body(event)
    confidence = max(inferences_of(body))
    log_fields = {
        "request_id": getattr(context, "aws_request_id", None),
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
