"""Inference hooks of a built-in image-classification model (copied as `code/inference.py`).

Self-contained: it needs torch, Pillow and, beside it, the project's `networks.py` and
`image_io.py` (the request decoding both serving scripts share), so the project's model server
serves the artefact with no other code. The contract is the built-in algorithm's:
- in: `image/png`, `image/jpeg`, `application/x-image` (any format Pillow decodes), one image
  per request, resized to the training `image_shape`;
- out: `application/json` (also for `*/*` or no Accept) -> a JSON list of class probabilities in
  label order, `[p0, p1, ...]`; `application/jsonlines` -> `{"prediction": [...]}` and, with
  `verbose=true`, `{"prediction": [...], "labels": [0, 1, ...], "predicted_label": k}`.
"""

from __future__ import annotations

import functools
import json
import runpy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from PIL import Image

IMAGE_CONTENT_TYPES = {"image/png", "image/jpeg", "image/jpg", "application/x-image"}
JSON_ACCEPTS = {"", "*/*", "application/json", "application/*"}
JSONLINES = "application/jsonlines"
_STATE: dict[str, Any] = {}


class UnsupportedAcceptError(ValueError):
    """The caller asked for a response type the algorithm does not produce."""


@functools.cache
def _beside(stem: str) -> Any:
    # Run by path when first needed: training imports this module from the package, where
    # the files it ships beside are not.
    return SimpleNamespace(**runpy.run_path(str(Path(__file__).with_name(f"{stem}.py"))))


def build_model(config: dict[str, Any], networks: Any = None) -> torch.nn.Module:
    """The network a model config names (training passes the project's `model.networks`)."""
    networks = networks or _beside("networks")
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


def input_fn(request_body: bytes, content_type: str) -> torch.Tensor:
    """One encoded image -> a normalised [1, C, H, W] tensor."""
    image_io = _beside("image_io")
    picture = image_io.decode_image(
        request_body,
        content_type,
        IMAGE_CONTENT_TYPES,
        lambda image: image.convert("RGB" if _STATE["channels"] == 3 else "L"),
    )
    if picture.size != _STATE["size"]:
        picture = picture.resize(_STATE["size"], Image.Resampling.BILINEAR)
    return image_io.normalised(picture, _STATE["mean"], _STATE["std"])


def predict_fn(input_data: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """Class probabilities [N, classes]."""
    with torch.inference_mode():
        return torch.softmax(model(input_data).float(), dim=1)


def output_fn(prediction: torch.Tensor, accept: str | None) -> tuple[str, str]:
    """The built-in algorithm's response body and its content type."""
    rows = torch.as_tensor(prediction).reshape(-1, _STATE["num_classes"]).tolist()
    media_type = _beside("image_io").media_type
    parts = [p.strip().lower() for p in (accept or "").split(",")]
    medias = {media_type(p) for p in parts}
    if medias & JSON_ACCEPTS:
        return json.dumps(rows[0] if len(rows) == 1 else rows), "application/json"
    if JSONLINES in medias:
        verbose = any(
            media_type(p) == JSONLINES and "verbose=true" in p.replace(" ", "") for p in parts
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
