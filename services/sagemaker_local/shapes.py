"""Request validation and response shaping from botocore's own service models.

AWS validates every request against the service model (lengths, patterns, enums, ranges) and
answers `1 validation error detected: Value 'x' at 'endpointName' failed to satisfy constraint:
...`; responses carry only the members the model defines. Reading both from the model that
botocore ships keeps sagemaker-local's wire format the one the SDK expects.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import botocore.session
from botocore.model import OperationModel, ServiceModel, Shape

from .exceptions import SerializationException, ValidationException

MAX_REPORTED_ERRORS = 10


@lru_cache(maxsize=4)
def service_model(service_name: str) -> ServiceModel:
    """botocore's model of a service (`sagemaker`, `sagemaker-runtime`)."""
    return botocore.session.get_session().get_service_model(service_name)


@lru_cache(maxsize=2048)
def _compiled(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None  # a Java-only construct (\p{...}): AWS checks it, we cannot


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def _render(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"'{value}'"
    return str(value)


class _Walker:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def fail(self, value: Any, path: str, constraint: str) -> None:
        self.errors.append(
            f"Value {_render(value)} at '{path}' failed to satisfy constraint: {constraint}"
        )

    def walk(self, shape: Shape, value: Any, path: str) -> None:
        kind = shape.type_name
        meta = shape.metadata
        if kind == "structure":
            if not isinstance(value, dict):
                raise SerializationException(f"Expected an object at '{path or '$'}'.")
            for name in shape.required_members:
                if value.get(name) is None:
                    self.fail(None, self._join(path, name), "Member must not be null")
            for name, member in shape.members.items():
                if value.get(name) is not None:
                    self.walk(member, value[name], self._join(path, name))
        elif kind == "list":
            if not isinstance(value, list):
                raise SerializationException(f"Expected a list at '{path}'.")
            self._length(value, len(value), meta, path)
            for i, item in enumerate(value, start=1):
                self.walk(shape.member, item, f"{path}.{i}.member")
        elif kind == "map":
            if not isinstance(value, dict):
                raise SerializationException(f"Expected an object at '{path}'.")
            self._length(value, len(value), meta, path)
            for key, item in value.items():
                self.walk(shape.key, key, f"{path}.key")
                self.walk(shape.value, item, f"{path}.{key}")
        elif kind == "string":
            if not isinstance(value, str):
                raise SerializationException(f"Expected a string at '{path}'.")
            self._length(value, len(value), meta, path)
            if shape.enum and value not in shape.enum:
                self.fail(
                    value, path, f"Member must satisfy enum value set: [{', '.join(shape.enum)}]"
                )
            pattern = meta.get("pattern")
            compiled = _compiled(pattern) if pattern else None
            if compiled is not None and compiled.fullmatch(value) is None:
                self.fail(value, path, f"Member must satisfy regular expression pattern: {pattern}")
        elif kind in ("integer", "long", "float", "double"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SerializationException(f"Expected a number at '{path}'.")
            if not math.isfinite(value):
                self.fail(value, path, "Member must be a finite number")
                return
            if kind in ("integer", "long") and not float(value).is_integer():
                self.fail(value, path, "Member must be an integer")
            if "min" in meta and value < meta["min"]:
                self.fail(
                    value, path, f"Member must have value greater than or equal to {meta['min']}"
                )
            if "max" in meta and value > meta["max"]:
                self.fail(
                    value, path, f"Member must have value less than or equal to {meta['max']}"
                )
        elif kind == "timestamp":
            if epoch_seconds(value) is None:
                self.fail(value, path, "Member must be a timestamp (epoch seconds or ISO 8601)")
        elif kind == "boolean" and not isinstance(value, bool):
            raise SerializationException(f"Expected a boolean at '{path}'.")

    def _length(self, value: Any, length: int, meta: dict[str, Any], path: str) -> None:
        if "min" in meta and length < meta["min"]:
            self.fail(
                value, path, f"Member must have length greater than or equal to {meta['min']}"
            )
        if "max" in meta and length > meta["max"]:
            self.fail(value, path, f"Member must have length less than or equal to {meta['max']}")

    @staticmethod
    def _join(path: str, name: str) -> str:
        return f"{path}.{_camel(name)}" if path else _camel(name)


def epoch_seconds(value: Any) -> float | None:
    """A timestamp member as epoch seconds (JSON 1.1 sends numbers; ISO 8601 is accepted too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            return float(value) if math.isfinite(float(value)) else None
        except ValueError:
            pass
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    return None


def operation(service_name: str, name: str) -> OperationModel:
    """The operation model, or an error if the service has no such operation."""
    return service_model(service_name).operation_model(name)


def validate_input(op: OperationModel, params: Any) -> None:
    """Raise `ValidationException` with AWS's message if params break the input shape."""
    if op.input_shape is None:
        return
    walker = _Walker()
    walker.walk(op.input_shape, params, "")
    if walker.errors:
        count = len(walker.errors)
        noun = "error" if count == 1 else "errors"
        shown = "; ".join(walker.errors[:MAX_REPORTED_ERRORS])
        raise ValidationException(f"{count} validation {noun} detected: {shown}")


def shape_output(shape: Shape | None, value: Any) -> Any:
    """Keep only what the output shape defines, dropping empty values as AWS does."""
    if shape is None:
        return {}
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        shaped = {}
        for name, member in shape.members.items():
            item = value.get(name)
            if item is None:
                continue
            shaped[name] = shape_output(member, item)
        return shaped
    if kind == "list" and isinstance(value, list):
        return [shape_output(shape.member, item) for item in value]
    if kind == "map" and isinstance(value, dict):
        return {k: shape_output(shape.value, v) for k, v in value.items()}
    return value
