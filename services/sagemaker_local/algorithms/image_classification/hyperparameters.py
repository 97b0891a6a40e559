"""The built-in image-classification algorithm's hyperparameters, as AWS documents them.

One table (`SPECS`): each name with its parser, default and what it does here. Values arrive as
strings (`hyperparameters.json`); the SDK v2 estimator writes `str(value)`, so `True`, `0.001`
and `3,32,32` are all accepted as AWS accepts them. A name that is not in the table, a missing
required one or a bad value fails the job with the message AWS's algorithm gives (its
hyperparameters are validated against a JSON schema):

    ClientError: Unable to initialize the algorithm. Failed to validate input hyperparameters.
    (caused by ValidationError)

    Caused by: Additional properties are not allowed ('foo' was unexpected)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

VALIDATION_PREFIX = (
    "ClientError: Unable to initialize the algorithm. Failed to validate input hyperparameters. "
    "(caused by ValidationError)\n\nCaused by: "
)
OPTIMIZERS = ("sgd", "adam", "rmsprop", "nag")
AUGMENTATIONS = ("crop", "crop_color", "crop_color_transform")
# ResNet depths the algorithm knows: ImageNet-style and CIFAR-style (6n+2).
NUM_LAYERS = (18, 34, 50, 101, 152, 200, 20, 32, 44, 56, 110)


class HyperparameterError(ValueError):
    """A hyperparameter set the algorithm refuses (the message is AWS's FailureReason)."""


class _BadValue(ValueError):
    """A value that does not parse or is out of range (turned into AWS's wording)."""


def _integer(low: int = 1, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise _BadValue(text) from None
        if value < low or (high is not None and value > high):
            raise _BadValue(text)
        return value

    return parse


def _real(low: float, high: float, low_open: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise _BadValue(text) from None
        if not (low < value if low_open else low <= value) or value > high or value != value:
            raise _BadValue(text)
        return value

    return parse


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise HyperparameterError(f"{VALIDATION_PREFIX}'{text}' is not one of {list(options)}")
        return text

    return parse


def _flag(text: str) -> bool:
    """0/1 flags and True/False flags (both spellings appear in AWS's table)."""
    lowered = text.strip().lower()
    if lowered in ("1", "true"):
        return True
    if lowered in ("0", "false"):
        return False
    raise _BadValue(text)


def _image_shape(text: str) -> tuple[int, int, int]:
    parts = text.replace(" ", "").split(",")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise _BadValue(text)
    channels, height, width = (int(p) for p in parts)
    if channels not in (1, 3) or not (8 <= height <= 4096 and 8 <= width <= 4096):
        raise _BadValue(text)
    return channels, height, width


def _epoch_list(text: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(p) for p in text.replace(" ", "").split(",") if p)
    except ValueError:
        raise _BadValue(text) from None
    if not steps or any(s < 1 for s in steps) or list(steps) != sorted(set(steps)):
        raise _BadValue(text)
    return steps


def _num_layers(text: str) -> int:
    value = _integer()(text)
    if value not in NUM_LAYERS:
        raise _BadValue(text)
    return value


@dataclass(frozen=True)
class Spec:
    """One hyperparameter: how to parse it, its AWS default, and its local effect."""

    parse: Callable[[str], Any]
    default: Any
    local_effect: str
    required: bool = False


SPECS: dict[str, Spec] = {
    "num_classes": Spec(_integer(), None, "size of the network's output", required=True),
    "num_training_samples": Spec(
        _integer(), None, "checked against the training set (a mismatch is logged)", required=True
    ),
    "augmentation_type": Spec(
        _choice(*AUGMENTATIONS), None, "random crop + flip, then colour, then affine jitter"
    ),
    "beta_1": Spec(_real(0, 1), 0.9, "adam's beta1"),
    "beta_2": Spec(_real(0, 1), 0.999, "adam's beta2"),
    "checkpoint_frequency": Spec(_integer(), None, "saves the weights every N epochs"),
    "early_stopping": Spec(_flag, False, "stops when validation accuracy stops improving"),
    "early_stopping_min_epochs": Spec(_integer(), 10, "epochs before early stopping may act"),
    "early_stopping_patience": Spec(_integer(), 5, "epochs without improvement before stopping"),
    "early_stopping_tolerance": Spec(_real(0, 1), 0.0, "relative improvement that counts"),
    "epochs": Spec(_integer(), 30, "epochs trained"),
    "eps": Spec(_real(0, 1), 1e-8, "epsilon of adam and rmsprop"),
    "gamma": Spec(_real(0, 1), 0.9, "rmsprop's decay factor"),
    "image_shape": Spec(_image_shape, (3, 224, 224), "images are resized to this shape"),
    "kv_store": Spec(_choice("dist_sync", "dist_async"), None, "no local effect: one host"),
    "learning_rate": Spec(_real(0, 1, low_open=True), 0.1, "initial learning rate"),
    "lr_scheduler_factor": Spec(_real(0, 1), 0.1, "learning-rate factor at each step"),
    "lr_scheduler_step": Spec(_epoch_list, None, "epochs at which the learning rate drops"),
    "mini_batch_size": Spec(_integer(), 32, "batch size"),
    "momentum": Spec(_real(0, 1), 0.9, "momentum of sgd, nag and rmsprop"),
    "multi_label": Spec(_flag, False, "1 needs an augmented manifest: not supported locally"),
    "num_layers": Spec(_num_layers, 152, "18: the project's ResNet-18; others: its small CNN"),
    "optimizer": Spec(_choice(*OPTIMIZERS), "sgd", "the optimizer"),
    "precision_dtype": Spec(
        _choice("float32", "float16"), "float32", "float16: bf16 autocast on CUDA, none on CPU"
    ),
    "resize": Spec(_integer(), None, "shorter side resized to this before the crop"),
    "top_k": Spec(_integer(low=2), None, "also logs top-k accuracy"),
    "use_pretrained_model": Spec(
        _flag, False, "no local effect: pretrained weights cannot be downloaded here"
    ),
    "use_weighted_loss": Spec(_flag, False, "cross-entropy weighted by inverse class frequency"),
    "weight_decay": Spec(_real(0, 1), 0.0001, "L2 weight decay"),
}


def _unquote(raw: Any) -> str:
    """The string form of a value (a JSON-encoded string, as some clients send, is unwrapped)."""
    text = str(raw).strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            decoded = json.loads(text)
        except ValueError:
            return text
        return str(decoded)
    return text


def parse_hyperparameters(raw: dict[str, Any]) -> dict[str, Any]:
    """Every hyperparameter with its value or default; HyperparameterError as AWS words it."""
    given = {k: v for k, v in raw.items() if not k.startswith("sagemaker_")}
    unknown = sorted(set(given) - set(SPECS))
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        verb = "were" if len(unknown) > 1 else "was"
        raise HyperparameterError(
            f"{VALIDATION_PREFIX}Additional properties are not allowed ({names} {verb} unexpected)"
        )
    for name, spec in SPECS.items():
        if spec.required and name not in given:
            raise HyperparameterError(f"{VALIDATION_PREFIX}'{name}' is a required property")
    values: dict[str, Any] = {}
    for name, spec in SPECS.items():
        if name not in given:
            values[name] = spec.default
            continue
        text = _unquote(given[name])
        try:
            values[name] = spec.parse(text)
        except _BadValue:
            raise HyperparameterError(
                f"{VALIDATION_PREFIX}'{text}' is not valid under any of the given schemas\n\n"
                f"Failed validating 'oneOf' in schema['properties']['{name}']"
            ) from None
    if (
        values["checkpoint_frequency"] is not None
        and values["checkpoint_frequency"] > values["epochs"]
    ):
        raise HyperparameterError(
            f"{VALIDATION_PREFIX}checkpoint_frequency ({values['checkpoint_frequency']}) "
            f"must not be larger than epochs ({values['epochs']})"
        )
    if values["multi_label"]:
        raise HyperparameterError(
            "ClientError: multi_label=1 needs an augmented manifest input, which sagemaker-local "
            "does not support; use multi_label=0 with .lst or RecordIO input."
        )
    return values
