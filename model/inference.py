"""SageMaker PyTorch inference hooks for the image classifier (self-contained in `code/`).

- `model_fn(model_dir)`: the network named in `model_config.json` with the weights of `model.pt`
  (loaded with `weights_only=True`), in eval mode, on CUDA when present.
- `input_fn(body, content_type)`: `image/png`, `image/jpeg` or `application/x-image` bytes of any
  size or mode -> a normalised [1, 3, 32, 32] float tensor. Transparency is composited over
  white, grey becomes RGB, the image is resized (not cropped) to 32x32. Raises
  `UnsupportedContentTypeError` or `InvalidImageError` (both ValueError) on bad requests.
- `predict_fn(batch, model)`: softmax probabilities [N, classes] for a batch of any N (a server
  may `torch.cat` several requests' inputs).
- `output_fn(prediction, accept)`: `(body, "application/json")`, the body being JSON
  `{"probabilities": [floats in class order], "label": top class name, "labels": [class names]}`
  for one image ([C] or [1, C]) or a JSON list of such objects for [N, C] with N > 1. The tuple
  form (honoured by the SageMaker inference toolkit and our model server) sets the response's
  Content-Type even when the caller accepts `*/*`. Only JSON is produced
  (`UnsupportedAcceptError` for an Accept that excludes it).
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

IMAGE_CONTENT_TYPES = {"image/png", "image/jpeg", "application/x-image"}
MAX_PIXELS = 4096 * 4096  # a small compressed body can claim a huge canvas; refuse before decoding
# Set by model_fn: output_fn receives only the prediction, so the class names live here.
_SERVING: dict[str, Any] = {}


class UnsupportedContentTypeError(ValueError):
    """The request's content type is not an image type this model accepts."""


class InvalidImageError(ValueError):
    """The request body is not a decodable image."""


class UnsupportedAcceptError(ValueError):
    """The caller asked for a response type other than JSON."""


def _networks() -> Any:
    """networks.py beside this file (never a same-named module elsewhere on sys.path)."""
    name = "_scones_networks"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("networks.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def model_fn(model_dir: str) -> torch.nn.Module:
    """Load the network and weights from a model directory."""
    config = json.loads((Path(model_dir) / "model_config.json").read_text())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = _networks().build_network(config["architecture"], len(config["classes"]))
    state = torch.load(Path(model_dir) / "model.pt", map_location=device, weights_only=True)
    model.load_state_dict(state)
    model.to(device).eval()
    _SERVING.update(
        classes=list(config["classes"]),
        size=int(config.get("image_size", 32)),
        mean=torch.tensor(config["mean"]).view(1, 3, 1, 1),
        std=torch.tensor(config["std"]).view(1, 3, 1, 1),
    )
    return model


def _media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def input_fn(request_body: bytes | bytearray | memoryview, content_type: str) -> torch.Tensor:
    """Decode image bytes into a normalised [1, 3, 32, 32] tensor."""
    media_type = _media_type(content_type)
    if media_type not in IMAGE_CONTENT_TYPES:
        raise UnsupportedContentTypeError(
            f"content type {content_type!r} is not supported; "
            f"send one of {sorted(IMAGE_CONTENT_TYPES)}"
        )
    if not _SERVING:
        raise RuntimeError("model_fn has not been called")
    try:
        with Image.open(io.BytesIO(bytes(request_body))) as image:
            if image.width * image.height > MAX_PIXELS:
                raise InvalidImageError(
                    f"image of {image.width}x{image.height} pixels is too large"
                )
            upright: Image.Image = ImageOps.exif_transpose(image)
            if upright.mode in {"I", "I;16", "F"}:  # 16/32-bit grey: scale into 8 bits
                upright = upright.point(lambda v: v / 256).convert("L")
            rgba = upright.convert("RGBA")
    except InvalidImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        reason = "unknown image format" if isinstance(exc, UnidentifiedImageError) else exc
        raise InvalidImageError(
            f"request body is not a decodable image ({media_type}): {reason}"
        ) from exc
    rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert(
        "RGB"
    )
    size = _SERVING["size"]
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
    pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(size, size, 3)
    tensor = pixels.permute(2, 0, 1).unsqueeze(0).float() / 255
    return (tensor - _SERVING["mean"]) / _SERVING["std"]


def predict_fn(input_data: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """Class probabilities [N, classes] for a batch of inputs [N, 3, 32, 32]."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_data.to(device))
    return torch.softmax(logits.float(), dim=1).cpu()


def output_fn(prediction: torch.Tensor, accept: str | None) -> tuple[str, str]:
    """JSON probabilities in class order with the top label (a list for several images)."""
    wanted = {_media_type(part) for part in (accept or "").split(",")}
    if not wanted & {"", "*/*", "application/json", "application/*"}:
        raise UnsupportedAcceptError(f"accept {accept!r} is not supported; use application/json")
    classes = _SERVING["classes"]
    rows = torch.as_tensor(prediction).reshape(-1, len(classes)).tolist()
    results = [
        {
            "probabilities": row,
            "label": classes[max(range(len(row)), key=row.__getitem__)],
            "labels": classes,
        }
        for row in rows
    ]
    return json.dumps(results[0] if len(results) == 1 else results), "application/json"
