"""The model's hooks, loaded from `<model_dir>/code/inference.py`, run on batches of requests.

Follows the SageMaker PyTorch inference toolkit: `model_fn(model_dir)`,
`input_fn(request_body, content_type)`, `predict_fn(input_data, model)`,
`output_fn(prediction, accept)`, or a single `transform_fn(model, body, content_type, accept)`;
defaults stand in for missing hooks. Bodies of type application/json and text/csv arrive as str,
all others as bytes. `output_fn` may return the body, or a `(body, content_type)` tuple.

Error convention: an exception with an integer `status_code` attribute (as the toolkit's errors
carry) gives that status; any exception raised by `input_fn`, and a `ValueError` raised by a later
hook, gives 400 (the request is at fault); anything else gives 500. The body carries the message.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from .image_budget import ImageBudget

log = logging.getLogger("model_server.handler")

JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"
TEXT_CONTENT_TYPES = frozenset({JSON, CSV})


class HookError(Exception):
    """An error with the HTTP status it should be answered with."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class InferenceRequest:
    """One request as a worker receives it."""

    body: bytes
    content_type: str
    accept: str


@dataclass(frozen=True)
class InferenceResponse:
    """One answer as a worker returns it."""

    status: int
    body: bytes
    content_type: str


def error_response(exc: BaseException, stage: str) -> InferenceResponse:
    """The answer for an exception raised by a hook at `stage` (input, predict, output)."""
    status = getattr(exc, "status_code", None)
    if not (isinstance(status, int) and 400 <= status <= 599):
        status = 400 if stage == "input" or isinstance(exc, ValueError) else 500
    message = f"{type(exc).__name__}: {exc}"
    if status >= 500:
        log.error("%s_fn failed:\n%s", stage, "".join(traceback.format_exception(exc)))
    body = json.dumps({"code": status, "type": type(exc).__name__, "message": message})
    return InferenceResponse(status, body.encode(), JSON)


# --- default hooks, as the SageMaker PyTorch toolkit has them ---------------------------------


def default_model_fn(model_dir: str) -> Any:
    """Load a TorchScript `model.pt` when there is one; otherwise ask for a model_fn."""
    path = Path(model_dir) / "model.pt"
    if not path.is_file():
        raise NotImplementedError(
            "code/inference.py defines no model_fn and the model directory has no TorchScript "
            "model.pt; please provide a model_fn(model_dir)"
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = torch.jit.load(str(path), map_location=device)
    return model.eval()


def default_input_fn(input_data: str | bytes, content_type: str) -> torch.Tensor:
    """Decode JSON, CSV or NPY into a tensor."""
    if content_type == JSON:
        return torch.tensor(json.loads(input_data), dtype=torch.float32)
    if content_type == CSV:
        text = input_data if isinstance(input_data, str) else input_data.decode()
        array = np.genfromtxt(io.StringIO(text), delimiter=",", dtype=np.float32, ndmin=2)
        return torch.from_numpy(array)
    if content_type == NPY:
        data = input_data.encode() if isinstance(input_data, str) else input_data
        return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False))
    raise HookError(415, f"the default input_fn cannot decode {content_type}; provide input_fn")


def default_predict_fn(input_data: Any, model: Any) -> Any:
    """Run the model on the input without gradients, on the model's device."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    with torch.no_grad():
        return model(input_data.to(device))


def default_output_fn(prediction: Any, accept: str) -> bytes | str:
    """Encode a tensor or array as JSON, CSV or NPY."""
    if isinstance(prediction, torch.Tensor):
        prediction = prediction.detach().cpu().numpy()
    array = np.asarray(prediction)
    if accept == JSON:
        return json.dumps(array.tolist())
    if accept == CSV:
        buffer = io.StringIO()
        np.savetxt(buffer, np.atleast_2d(array), delimiter=",", fmt="%s")
        return buffer.getvalue()
    if accept == NPY:
        buffer_bytes = io.BytesIO()
        np.save(buffer_bytes, array, allow_pickle=False)
        return buffer_bytes.getvalue()
    raise HookError(406, f"the default output_fn cannot encode {accept}; provide output_fn")


# --- loading and running ---------------------------------------------------------------------


def load_inference_module(model_dir: Path) -> ModuleType | None:
    """Import `<model_dir>/code/inference.py` by path, with its folder on sys.path."""
    code_dir = model_dir / "code"
    script = code_dir / "inference.py"
    if not script.is_file():
        return None
    sys.path.insert(0, str(code_dir))
    spec = importlib.util.spec_from_file_location("inference", script)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {script}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["inference"] = module
    spec.loader.exec_module(module)
    return module


class ModelHandler:
    """The model's hooks and the model they loaded, run on batches of requests."""

    def __init__(self, model_dir: str | Path, image_budget: ImageBudget | None = None) -> None:
        self.image_budget = image_budget or ImageBudget()
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f"model directory {self.model_dir} does not exist")
        module = load_inference_module(self.model_dir)

        def hook(name: str, default: Callable[..., Any] | None) -> Callable[..., Any] | None:
            return getattr(module, name, default) if module is not None else default

        self.model_fn: Callable[..., Any] = hook("model_fn", default_model_fn)  # type: ignore[assignment]
        self.transform_fn = hook("transform_fn", None)
        self.input_fn: Callable[..., Any] = hook("input_fn", default_input_fn)  # type: ignore[assignment]
        self.predict_fn: Callable[..., Any] = hook("predict_fn", default_predict_fn)  # type: ignore[assignment]
        self.output_fn: Callable[..., Any] = hook("output_fn", default_output_fn)  # type: ignore[assignment]
        self.model: Any = None

    def load(self) -> None:
        """Call model_fn once; the model then serves every batch of this process."""
        self.model = self.model_fn(str(self.model_dir))

    def handle_batch(self, requests: list[InferenceRequest]) -> list[InferenceResponse]:
        """Answer a batch: input_fn per request, one predict_fn when batchable, output_fn each."""
        if self.transform_fn is not None:
            return [self._transform(request) for request in requests]
        responses: list[InferenceResponse | None] = [None] * len(requests)
        inputs: dict[int, Any] = {}
        for i, request in enumerate(requests):
            over_budget = self.image_budget.refusal(request.body, request.content_type)
            if over_budget is not None:
                responses[i] = error_response(HookError(400, over_budget), "input")
                continue
            try:
                inputs[i] = self.input_fn(_decode_body(request), request.content_type)
            except Exception as exc:
                responses[i] = error_response(exc, "input")
        predictions = self._predict(inputs)
        for i, outcome in predictions.items():
            if isinstance(outcome, _Failed):
                responses[i] = error_response(outcome.exc, "predict")
                continue
            try:
                responses[i] = _encode(self.output_fn(outcome, requests[i].accept), requests[i])
            except Exception as exc:
                responses[i] = error_response(exc, "output")
        missing = [i for i, r in enumerate(responses) if r is None]
        if missing:
            raise RuntimeError(f"requests {missing} got no answer")
        return responses  # type: ignore[return-value]

    def _transform(self, request: InferenceRequest) -> InferenceResponse:
        over_budget = self.image_budget.refusal(request.body, request.content_type)
        if over_budget is not None:
            return error_response(HookError(400, over_budget), "input")
        try:
            assert self.transform_fn is not None
            result = self.transform_fn(
                self.model, _decode_body(request), request.content_type, request.accept
            )
            return _encode(result, request)
        except Exception as exc:
            return error_response(exc, "predict")

    def _predict(self, inputs: dict[int, Any]) -> dict[int, Any]:
        """Predict all inputs, as one batch when they concatenate, else one by one."""
        if len(inputs) > 1 and _batchable(list(inputs.values())):
            try:
                return self._predict_batched(inputs)
            except _NotSplittable:
                pass
            except Exception:
                # Predict alone so the error lands on the request that caused it.
                log.debug("batched predict_fn failed; predicting one by one", exc_info=True)
        outcomes: dict[int, Any] = {}
        for i, data in inputs.items():
            try:
                outcomes[i] = self.predict_fn(data, self.model)
            except Exception as exc:
                outcomes[i] = _Failed(exc)
        return outcomes

    def _predict_batched(self, inputs: dict[int, Any]) -> dict[int, Any]:
        tensors = list(inputs.values())
        rows = [t.shape[0] for t in tensors]
        prediction = self.predict_fn(torch.cat(tensors, dim=0), self.model)
        parts = _split(prediction, rows)
        return dict(zip(inputs.keys(), parts, strict=True))


@dataclass(frozen=True)
class _Failed:
    exc: Exception


class _NotSplittable(Exception):
    """The batched prediction has no batch dimension matching the inputs."""


def _decode_body(request: InferenceRequest) -> str | bytes:
    if request.content_type in TEXT_CONTENT_TYPES:
        try:
            return request.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{request.content_type} body is not UTF-8: {exc}") from exc
    return request.body


def _encode(result: Any, request: InferenceRequest) -> InferenceResponse:
    content_type = request.accept
    if isinstance(result, tuple) and len(result) == 2:
        result, content_type = result
    if isinstance(result, str):
        result = result.encode("utf-8")
    elif isinstance(result, bytearray | memoryview):
        result = bytes(result)
    if not isinstance(result, bytes):
        raise TypeError(f"output_fn returned {type(result).__name__}; expected bytes or str")
    return InferenceResponse(200, result, str(content_type))


def _batchable(items: list[Any]) -> bool:
    """Tensors whose dim 0 is the batch: same dtype, device and trailing shape."""
    first = items[0]
    if not isinstance(first, torch.Tensor) or first.dim() < 2:
        return False
    return all(
        isinstance(t, torch.Tensor)
        and t.dim() == first.dim()
        and t.shape[1:] == first.shape[1:]
        and t.dtype == first.dtype
        and t.device == first.device
        for t in items
    )


def _split(prediction: Any, rows: list[int]) -> list[Any]:
    """Split a batched prediction (a tensor, or a tuple/list/dict of them) back per request."""
    total = sum(rows)

    def split_tensor(t: Any) -> list[Any]:
        if not isinstance(t, torch.Tensor) or t.dim() == 0 or t.shape[0] != total:
            raise _NotSplittable
        return list(torch.split(t, rows, dim=0))

    if isinstance(prediction, torch.Tensor):
        return split_tensor(prediction)
    if isinstance(prediction, tuple | list):
        columns = [split_tensor(t) for t in prediction]
        return [type(prediction)(parts) for parts in zip(*columns, strict=True)]
    if isinstance(prediction, dict):
        split = {key: split_tensor(t) for key, t in prediction.items()}
        return [{key: parts[i] for key, parts in split.items()} for i in range(len(rows))]
    raise _NotSplittable
