"""Inference hooks of a built-in image-classification model (copied as `code/inference.py`).

Self-contained: it imports torch, Pillow and `networks.py` beside it, so the project's model
server serves the artefact with no other code. The contract is the built-in algorithm's:
- in: `image/png`, `image/jpeg`, `application/x-image` (any format Pillow decodes), one image
  per request, resized to the training `image_shape`;
- out: `application/json` (also for `*/*` or no Accept) -> a JSON list of class probabilities in
  label order, `[p0, p1, ...]`; `application/jsonlines` -> `{"prediction": [...]}` and, with
  `verbose=true`, `{"prediction": [...], "labels": [0, 1, ...], "predicted_label": k}`.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_CONTENT_TYPES = {"image/png", "image/jpeg", "image/jpg", "application/x-image"}
JSON_ACCEPTS = {"", "*/*", "application/json", "application/*"}
JSONLINES = "application/jsonlines"
MAX_PIXELS = 4096 * 4096
_STATE: dict[str, Any] = {}


class UnsupportedContentTypeError(ValueError):
    """The request is not an image type the algorithm accepts."""


class InvalidImageError(ValueError):
    """The request body is not a decodable image."""


class UnsupportedAcceptError(ValueError):
    """The caller asked for a response type the algorithm does not produce."""


def _networks() -> Any:
    name = "_image_classification_networks"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("networks.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def build_model(config: dict[str, Any], networks: Any = None) -> torch.nn.Module:
    """The network a model config names (training passes the project's `model.networks`)."""
    networks = networks or _networks()
    if config["architecture"] == "small_cnn":
        return networks.SmallCNN(config["num_classes"], width=config["width"])
    return networks.build_network(config["architecture"], config["num_classes"])


def model_fn(model_dir: str) -> torch.nn.Module:
    """The trained network in eval mode."""
    config = json.loads((Path(model_dir) / "model_config.json").read_text(encoding="utf-8"))
    model = build_model(config)
    state = torch.load(Path(model_dir) / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    channels, height, width = config["image_shape"]
    _STATE.update(
        channels=channels,
        size=(width, height),
        num_classes=config["num_classes"],
        mean=torch.tensor(config["mean"]).view(1, channels, 1, 1),
        std=torch.tensor(config["std"]).view(1, channels, 1, 1),
    )
    return model


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def input_fn(request_body: bytes, content_type: str) -> torch.Tensor:
    """One encoded image -> a normalised [1, C, H, W] tensor."""
    media = _media_type(content_type)
    if media not in IMAGE_CONTENT_TYPES:
        raise UnsupportedContentTypeError(
            f"content type {content_type!r} is not supported; "
            f"send one of {sorted(IMAGE_CONTENT_TYPES)}"
        )
    try:
        with Image.open(io.BytesIO(bytes(request_body))) as image:
            if image.width * image.height > MAX_PIXELS:
                raise InvalidImageError(f"image of {image.width}x{image.height} is too large")
            mode = "RGB" if _STATE["channels"] == 3 else "L"
            picture = ImageOps.exif_transpose(image).convert(mode)
    except InvalidImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImageError(f"request body is not a decodable image: {exc}") from exc
    if picture.size != _STATE["size"]:
        picture = picture.resize(_STATE["size"], Image.Resampling.BILINEAR)
    pixels = torch.frombuffer(bytearray(picture.tobytes()), dtype=torch.uint8)
    width, height = _STATE["size"]
    tensor = pixels.view(height, width, _STATE["channels"]).permute(2, 0, 1).unsqueeze(0)
    return (tensor.float() / 255 - _STATE["mean"]) / _STATE["std"]


def predict_fn(input_data: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """Class probabilities [N, classes]."""
    with torch.inference_mode():
        return torch.softmax(model(input_data).float(), dim=1)


def output_fn(prediction: torch.Tensor, accept: str | None) -> tuple[str, str]:
    """The built-in algorithm's response body and its content type."""
    rows = torch.as_tensor(prediction).reshape(-1, _STATE["num_classes"]).tolist()
    parts = [p.strip().lower() for p in (accept or "").split(",")]
    medias = {_media_type(p) for p in parts}
    if medias & JSON_ACCEPTS:
        return json.dumps(rows[0] if len(rows) == 1 else rows), "application/json"
    if JSONLINES in medias:
        verbose = any(
            _media_type(p) == JSONLINES and "verbose=true" in p.replace(" ", "") for p in parts
        )
        lines = []
        for row in rows:
            record: dict[str, Any] = {"prediction": row}
            if verbose:
                record["labels"] = list(range(len(row)))
                record["predicted_label"] = max(range(len(row)), key=row.__getitem__)
            lines.append(json.dumps(record))
        return "\n".join(lines) + "\n", JSONLINES
    raise UnsupportedAcceptError(
        f"accept {accept!r} is not supported; use application/json or application/jsonlines"
    )
