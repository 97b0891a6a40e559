"""SageMaker PyTorch inference hooks for the image classifier (self-contained in `code/`).

`networks.py` and `image_io.py` (the request decoding) ship beside it and are run by path.

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

import functools
import json
import runpy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from PIL import Image

IMAGE_CONTENT_TYPES = {"image/png", "image/jpeg", "application/x-image"}
# Set by model_fn: output_fn receives only the prediction, so the class names live here.
_SERVING: dict[str, Any] = {}


@functools.cache
def _beside(stem: str) -> Any:
    """`<stem>.py` beside this file, run once by path (never a same-named module on sys.path)."""
    return SimpleNamespace(**runpy.run_path(str(Path(__file__).with_name(f"{stem}.py"))))


_image_io = _beside("image_io")
UnsupportedContentTypeError = _image_io.UnsupportedContentTypeError
InvalidImageError = _image_io.InvalidImageError


class UnsupportedAcceptError(ValueError):
    """The caller asked for a response type other than JSON."""


def model_fn(model_dir: str) -> torch.nn.Module:
    """Load the network and weights from a model directory."""
    config = json.loads((Path(model_dir) / "model_config.json").read_text())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = _beside("networks").build_network(config["architecture"], len(config["classes"]))
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


def _rgba(upright: Image.Image) -> Image.Image:
    if upright.mode in {"I", "I;16", "F"}:  # 16/32-bit grey: scale into 8 bits
        upright = upright.point(lambda v: v / 256).convert("L")
    return upright.convert("RGBA")


def input_fn(request_body: bytes | bytearray | memoryview, content_type: str) -> torch.Tensor:
    """Decode image bytes into a normalised [1, 3, 32, 32] tensor."""
    rgba = _image_io.decode_image(request_body, content_type, IMAGE_CONTENT_TYPES, _rgba)
    if not _SERVING:
        raise RuntimeError("model_fn has not been called")
    rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert(
        "RGB"
    )
    size = _SERVING["size"]
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
    return _image_io.normalised(rgb, _SERVING["mean"], _SERVING["std"])


def predict_fn(input_data: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """Class probabilities [N, classes] for a batch of inputs [N, 3, 32, 32]."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_data.to(device))
    return torch.softmax(logits.float(), dim=1).cpu()


def output_fn(prediction: torch.Tensor, accept: str | None) -> tuple[str, str]:
    """JSON probabilities in class order with the top label (a list for several images)."""
    wanted = {_image_io.media_type(part) for part in (accept or "").split(",")}
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
