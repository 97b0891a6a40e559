"""The training image chooses the executor: URIs from the SageMaker SDK's own data, every region.

The derived table (`algorithms/image_uris.json`) must agree with the installed SDK, and every URI
`image_uris.retrieve` gives for the built-in algorithm or a PyTorch training image must be
recognised; near misses (another account, region, repository or tag) are plain containers.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from services.sagemaker_local import training
from services.sagemaker_local.algorithms import images
from services.sagemaker_local.algorithms.images import ImageKind, classify_image

image_uris = pytest.importorskip("sagemaker.core.image_uris")
SDK_CONFIG = Path(image_uris.__file__).with_name("image_uri_config")


def sdk_regions(filename: str, scope: str | None = None) -> list[str]:
    config = json.loads((SDK_CONFIG / filename).read_text())
    config = config[scope] if scope else config
    return sorted({r for v in config["versions"].values() for r in v["registries"]})


def test_the_table_is_what_the_sdk_ships() -> None:
    refresh = "python -m services.sagemaker_local.algorithms.images --refresh"
    assert images.load_table() == images.derive_table(), f"image_uris.json is stale: {refresh}"


@pytest.mark.parametrize("region", sdk_regions("image-classification.json"))
def test_builtin_image_classification_in_every_region(region: str) -> None:
    uri = image_uris.retrieve("image-classification", region)
    assert classify_image(uri) is ImageKind.IMAGE_CLASSIFICATION
    assert classify_image(uri.replace(":1", ":latest")) is ImageKind.IMAGE_CLASSIFICATION
    assert classify_image(uri.split(":")[0]) is ImageKind.IMAGE_CLASSIFICATION  # no tag = latest


@pytest.mark.parametrize(
    ("version", "py_version"), [("2.5", "py311"), ("1.13", "py39"), ("2.10", "py313")]
)
def test_pytorch_training_images(version: str, py_version: str) -> None:
    for region in ("us-east-1", "eu-west-1", "ap-southeast-2"):
        for instance_type in ("ml.m5.xlarge", "ml.g5.xlarge"):
            uri = image_uris.retrieve(
                framework="pytorch",
                region=region,
                version=version,
                py_version=py_version,
                instance_type=instance_type,
                image_scope="training",
            )
            assert classify_image(uri) is ImageKind.PYTORCH, uri


@pytest.mark.parametrize(
    "uri",
    [
        # the us-east-1 account in another region's host
        "811284229777.dkr.ecr.eu-west-1.amazonaws.com/image-classification:1",
        "811284229777.dkr.ecr.us-east-1.amazonaws.com/image-classification:2",
        "811284229777.dkr.ecr.us-east-1.amazonaws.com/object-detection:1",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/image-classification:1",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.5-cpu-py311",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/scones-model-server:latest",
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.5-cpu-py311",
        "busybox:latest",
        "",
    ],
)
def test_near_misses_are_plain_containers(uri: str) -> None:
    assert classify_image(uri) is ImageKind.CONTAINER


def test_every_kind_has_an_executor() -> None:
    assert set(training.EXECUTORS) == set(ImageKind)
    assert training.BUILTIN_METRICS[ImageKind.IMAGE_CLASSIFICATION][1]["Name"] == (
        "validation:accuracy"
    )


def test_docker_unavailable_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert training.docker_unavailable() == "no docker command is installed"
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    reason = training.docker_unavailable()
    assert reason == "the Docker engine is not reachable (Cannot connect to the Docker daemon)"
    fake.write_text("#!/bin/sh\necho 27.0.1\n")
    assert training.docker_unavailable() is None
    assert os.environ["PATH"] == str(tmp_path)
