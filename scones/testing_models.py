"""Tiny models for tests and benchmarks: one small CNN, its `inference.py`, weights, imports.

Every tiny model is `TINY_MODEL_PY` (the network, loading its weights, decoding an image) plus
the handler functions of the variant (`model_fn`, `input_fn`, `predict_fn`, `output_fn`), so
that the model server sees the same kind of code a training job writes.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
import uuid
from pathlib import Path
from types import ModuleType

TINY_MODEL_PY = textwrap.dedent(
    """
    import io
    import json
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image
    from torch import nn


    class TinyNet(nn.Module):
        def __init__(self, channels=4, classes=3):
            super().__init__()
            self.conv = nn.Conv2d(3, channels, 3, padding=1)
            self.fc = nn.Linear(channels, classes)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


    def build_model(model_dir):
        state = torch.load(Path(model_dir) / "model.pth", weights_only=True)
        model = TinyNet(state["conv.weight"].shape[0], state["fc.weight"].shape[0])
        model.load_state_dict(state)
        return model.eval()


    def decode_image(body, size=None):
        try:
            image = Image.open(io.BytesIO(body)).convert("RGB")
        except Exception as exc:
            raise ValueError(f"cannot decode the image: {exc}") from exc
        if size is not None:
            image = image.resize(size)
        array = np.asarray(image, dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
    """
)


def tiny_inference_py(handlers: str) -> str:
    """A tiny model's `code/inference.py`: the network and helpers, then `handlers` (dedented)."""
    return TINY_MODEL_PY + "\n\n" + textwrap.dedent(handlers).strip("\n") + "\n"


def write_tiny_model(
    model_dir: Path, inference_py: str, channels: int = 4, classes: int = 3
) -> ModuleType:
    """A model folder as SageMaker unpacks it: seeded weights and `code/inference.py`.

    Returns the inference module, imported in this process.
    """
    import torch

    (model_dir / "code").mkdir(parents=True, exist_ok=True)
    (model_dir / "code" / "inference.py").write_text(inference_py)
    module = import_file(model_dir / "code" / "inference.py")
    torch.manual_seed(0)
    torch.save(module.TinyNet(channels, classes).state_dict(), model_dir / "model.pth")
    return module


def import_file(path: Path, name: str | None = None) -> ModuleType:
    """Import one Python file by path as `name` (default: a unique private one).

    Registered in sys.modules while it runs, as importlib's recipe does (dataclasses need it).
    """
    name = name or f"_imported_{path.stem}_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def png_bytes(seed: int, size: int = 32, fmt: str = "PNG") -> bytes:
    """A random RGB image of `size` x `size`, encoded (PNG by default)."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


# Two classes told apart by colour: class 0 red-ish, class 1 blue-ish.
COLOURS = ((220, 40, 40), (40, 60, 220))


def coloured_png(label: int, seed: int, size: int = 16) -> bytes:
    """A noisy PNG whose colour tells its class (`COLOURS`): data a tiny network can learn."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[label], dtype=np.int16)
    pixels = np.clip(base + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
