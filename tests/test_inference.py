"""The four SageMaker hooks of code/inference.py, as a model folder ships them."""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

from model import networks, train

CLASSES = ["bicycle", "motorcycle"]
MEAN, STD = [0.48, 0.47, 0.46], [0.22, 0.21, 0.23]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder written by the trainer's own save step (untrained weights suffice here)."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    network = networks.build_network("small_cnn", len(CLASSES))
    args = argparse.Namespace(model="small_cnn", epochs=1, seed=0)
    train.save_model(folder, network, args, CLASSES, MEAN, STD, val_acc=0.5)
    return folder


@pytest.fixture(scope="module")
def hooks(model_dir: Path) -> ModuleType:
    """code/inference.py imported by path, as a model server does."""
    spec = importlib.util.spec_from_file_location(
        "shipped_inference", model_dir / "code" / "inference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model(hooks: ModuleType, model_dir: Path) -> torch.nn.Module:
    return hooks.model_fn(str(model_dir))


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def normalised(pixels: np.ndarray) -> torch.Tensor:
    """What input_fn must produce for 32x32 RGB pixels [32, 32, 3]."""
    tensor = torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1)[None] / 255
    return (tensor - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


PIXELS = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
PHOTO = Image.fromarray(PIXELS, "RGB")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (encode(PHOTO, "PNG"), "image/png"),
        (encode(PHOTO.resize((640, 480)), "JPEG"), "image/jpeg"),
        (encode(PHOTO.convert("RGBA"), "PNG"), "application/x-image"),
        (encode(PHOTO.convert("L").resize((17, 90)), "PNG"), "image/png; charset=binary"),
        (encode(Image.fromarray(np.full((8, 8), 40000, np.uint16)), "PNG"), "image/png"),
        (encode(PHOTO.convert("P"), "GIF"), "application/x-image"),
    ],
    ids=["png", "jpeg-640x480", "rgba", "grey-17x90", "grey-16bit", "palette-gif"],
)
def test_hooks_answer_any_image(
    hooks: ModuleType, model: torch.nn.Module, body: bytes, content_type: str
) -> None:
    batch = hooks.input_fn(body, content_type)
    assert batch.shape == (1, 3, 32, 32) and batch.dtype == torch.float32
    probabilities = hooks.predict_fn(batch, model)
    assert probabilities.shape == (1, 2)
    assert float(probabilities.sum()) == pytest.approx(1.0, abs=1e-5)
    body_out, content_type_out = hooks.output_fn(probabilities, "application/json")
    answer = json.loads(body_out)
    assert content_type_out == "application/json"
    assert answer["labels"] == CLASSES and answer["label"] in CLASSES
    assert len(answer["probabilities"]) == 2 and all(
        type(p) is float for p in answer["probabilities"]
    )
    assert answer["label"] == CLASSES[int(np.argmax(answer["probabilities"]))]


def test_input_fn_normalises_with_the_stored_statistics(
    hooks: ModuleType, model: torch.nn.Module
) -> None:
    assert torch.allclose(
        hooks.input_fn(encode(PHOTO, "PNG"), "image/png"), normalised(PIXELS), atol=1e-6
    )
    # Grey becomes three equal channels; full transparency shows the white background.
    grey = hooks.input_fn(encode(PHOTO.convert("L"), "PNG"), "image/png")
    raw = grey * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-6) and torch.allclose(
        raw[:, 1], raw[:, 2], atol=1e-6
    )
    clear = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    white = np.full((32, 32, 3), 255, np.uint8)
    assert torch.allclose(
        hooks.input_fn(encode(clear, "PNG"), "image/png"), normalised(white), atol=1e-6
    )


@pytest.mark.parametrize(
    "body",
    [
        b"garbage",
        b"",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
        encode(PHOTO, "PNG")[:60],
        b"\xff\xd8\xff\xe0junk",
    ],
    ids=["text", "empty", "png-signature-only", "truncated-png", "jpeg-header-only"],
)
def test_undecodable_bodies_raise_a_clear_error(
    hooks: ModuleType, model: torch.nn.Module, body: bytes
) -> None:
    with pytest.raises(hooks.InvalidImageError, match="not a decodable image"):
        hooks.input_fn(body, "image/png")
    assert issubclass(hooks.InvalidImageError, ValueError)


def test_huge_canvases_and_other_content_types_are_refused(
    hooks: ModuleType, model: torch.nn.Module
) -> None:
    huge = encode(Image.new("1", (5000, 5000)), "PNG")  # a few KiB claiming 25 megapixels
    assert len(huge) < 100_000
    with pytest.raises(hooks.InvalidImageError, match="too large"):
        hooks.input_fn(huge, "image/png")
    with pytest.raises(hooks.UnsupportedContentTypeError):
        hooks.input_fn(encode(PHOTO, "PNG"), "text/csv")
    with pytest.raises(hooks.UnsupportedAcceptError):
        hooks.output_fn(torch.tensor([[0.3, 0.7]]), "text/csv")
    for accept in (None, "", "*/*", "application/json", "text/plain, application/json"):
        assert (
            json.loads(hooks.output_fn(torch.tensor([[0.3, 0.7]]), accept)[0])["label"]
            == "motorcycle"
        )


def test_predict_fn_handles_a_concatenated_batch(hooks: ModuleType, model: torch.nn.Module) -> None:
    images = [PHOTO, PHOTO.rotate(90), PHOTO.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    inputs = [hooks.input_fn(encode(image, "PNG"), "image/png") for image in images]
    together = hooks.predict_fn(torch.cat(inputs), model)
    alone = torch.cat([hooks.predict_fn(x, model) for x in inputs])
    assert together.shape == (3, 2) and torch.allclose(together, alone, atol=1e-5)
    answers = json.loads(hooks.output_fn(together, "application/json")[0])
    assert np.allclose([a["probabilities"] for a in answers], together.numpy())
    assert json.loads(hooks.output_fn(together[1], None)[0])["probabilities"] == pytest.approx(
        together[1].tolist()
    )


def test_model_fn_loads_the_saved_weights_exactly(
    hooks: ModuleType, model: torch.nn.Module, model_dir: Path
) -> None:
    torch.manual_seed(0)
    reference = networks.build_network("small_cnn", 2).eval()
    x = normalised(PIXELS)
    with torch.no_grad():
        expected = torch.softmax(reference(x), 1)
    assert torch.allclose(hooks.predict_fn(x, model), expected, atol=1e-5)


def test_the_code_folder_is_self_contained(model_dir: Path, tmp_path: Path) -> None:
    """In isolated mode (no repository on the path) the shipped code still serves a request."""
    probe = (
        "import sys, json; sys.path.insert(0, sys.argv[1] + '/code'); import inference as h; "
        "m = h.model_fn(sys.argv[1]); "
        "body = open(sys.argv[2], 'rb').read(); "
        "print(h.output_fn(h.predict_fn(h.input_fn(body, 'image/png'), m), None)[0])"
    )
    PHOTO.save(tmp_path / "photo.png")
    result = subprocess.run(
        [sys.executable, "-I", "-c", probe, str(model_dir), str(tmp_path / "photo.png")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["labels"] == CLASSES
