"""Training under the SageMaker contract: accuracy, the gate, checkpoints, the model folder."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from model import train
from scones.archives import pack_model
from scones.etl import __main__ as etl_cli
from scones.etl import synthetic
from scones.testing_models import import_file

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_SCRIPT = REPO_ROOT / "model" / "train.py"
METRIC = re.compile(
    r"epoch=(\d+) train_loss=([0-9.]+) val_loss=([0-9.]+) val_acc=([0-9.]+)"
    r" .*images_per_sec=([0-9.]+)"
)
# One thread: the test machines are small and shared, and oversubscribed OpenMP threads crawl.
THREADS = ["--threads", "1"]


@pytest.fixture(scope="module")
def bikes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default two-class subset of the default synthetic archive, through the real ETL.

    The archive holds exactly the bicycle and motorcycle rows of the full 50,000/10,000-row archive
    (the generator renders each class from its own stream), so it is quick to make.
    """
    work = tmp_path_factory.mktemp("bikes")
    path = work / "source" / synthetic.ARCHIVE_NAME
    md5 = synthetic.write_archive(path, seed=0, only_classes=("bicycle", "motorcycle"))
    rc = etl_cli.main(
        [
            "--source",
            str(path),
            "--md5",
            md5,
            "--work-dir",
            str(work),
            "--no-upload",
            "--classes",
            "bicycle,motorcycle",
        ]
    )
    assert rc == 0
    return work / "dataset"


@pytest.fixture(scope="module")
def mini(bikes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few images of the same data, for tests about the job's mechanics rather than accuracy."""
    root = tmp_path_factory.mktemp("mini")
    for split, count in (("train", 160), ("test", 40)):
        (root / split).mkdir()
        lines = (bikes / split / "manifest.jsonl").read_text().splitlines()[:count]
        (root / split / "manifest.jsonl").write_text("\n".join(lines) + "\n")
        for line in lines:
            key = json.loads(line)["key"]
            (root / split / key).write_bytes((bikes / split / key).read_bytes())
    (root / "train" / "stats.json").write_bytes((bikes / "train" / "stats.json").read_bytes())
    return root


def sagemaker_env(data: Path, job: Path) -> dict[str, str]:
    """The environment a SageMaker training container gives the script (local paths)."""
    return {
        **os.environ,
        "SM_CHANNEL_TRAIN": str(data / "train"),
        "SM_CHANNEL_TEST": str(data / "test"),
        "SM_MODEL_DIR": str(job / "model"),
        "SM_OUTPUT_DIR": str(job / "output"),
    }


def run_train(
    data: Path, job: Path, *args: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run model/train.py as SageMaker would: a script in its folder, hyperparameters as flags."""
    return subprocess.run(
        [
            sys.executable,
            str(TRAIN_SCRIPT),
            "--checkpoint-dir",
            str(job / "checkpoints"),
            *THREADS,
            *args,
        ],
        env=sagemaker_env(data, job),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=job.parent,
    )


def test_default_training_reaches_the_bar_and_writes_a_deployable_model(
    bikes: Path, tmp_path: Path
) -> None:
    job = tmp_path / "job"
    result = run_train(bikes, job, "--min_val_accuracy", "0.9")  # SageMaker passes keys as given
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = [METRIC.search(line) for line in result.stdout.splitlines()]
    epochs = [m for m in metrics if m]
    assert [int(m.group(1)) for m in epochs] == list(range(1, 13))
    val_acc = float(epochs[-1].group(4))
    assert val_acc >= 0.90, result.stdout
    assert not (job / "output" / "failure").exists()

    model_dir = job / "model"
    assert sorted(
        p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()
    ) == [
        "code/image_io.py",
        "code/inference.py",
        "code/networks.py",
        "model.pt",
        "model_config.json",
    ]
    state = torch.load(model_dir / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    config = json.loads((model_dir / "model_config.json").read_text())
    stats = json.loads((bikes / "train" / "stats.json").read_text())
    assert config["architecture"] == "small_cnn" and config["classes"] == ["bicycle", "motorcycle"]
    assert config["mean"] == stats["mean"] and config["std"] == stats["std"]
    assert (job / "checkpoints" / "checkpoint.pt").is_file()

    archive = pack_model(model_dir, tmp_path / "model.tar.gz")
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == [
            "code/image_io.py",
            "code/inference.py",
            "code/networks.py",
            "model.pt",
            "model_config.json",
        ]
        tar.extractall(tmp_path / "unpacked", filter="data")

    # The packed model, through its own hooks, classifies the test PNGs as the trainer measured,
    # high but not perfectly, with some answers under the workflow's 0.93 threshold.
    hooks = import_file(tmp_path / "unpacked" / "code" / "inference.py")
    model = hooks.model_fn(str(tmp_path / "unpacked"))
    rows = [
        json.loads(line) for line in (bikes / "test" / "manifest.jsonl").read_text().splitlines()
    ]
    confidences, correct = [], 0
    for row in rows:
        body = (bikes / "test" / row["key"]).read_bytes()
        answer, content_type = hooks.output_fn(
            hooks.predict_fn(hooks.input_fn(body, "image/png"), model), "*/*"
        )
        assert content_type == "application/json"
        answer = json.loads(answer)
        confidences.append(max(answer["probabilities"]))
        correct += answer["label"] == row["label_name"]
    assert abs(correct / len(rows) - val_acc) <= 0.01
    assert correct < len(rows) and min(confidences) < 0.93


def test_the_gate_fails_the_job_and_leaves_no_model(mini: Path, tmp_path: Path) -> None:
    job = tmp_path / "job"
    (job / "model").mkdir(parents=True)
    (job / "model" / "model.pt").write_bytes(b"a previous run's weights")
    result = run_train(mini, job, "--epochs", "1", "--min-val-accuracy", "0.999")
    assert result.returncode != 0
    failure = (job / "output" / "failure").read_text()
    assert "validation accuracy" in failure and "0.9990" in failure, failure
    measured = float(re.search(r"accuracy (\d\.\d+)", failure).group(1))  # type: ignore[union-attr]
    assert measured < 0.999
    assert not (job / "model" / "model.pt").exists()
    assert not (job / "model" / "code").exists()


def test_a_killed_job_resumes_from_its_checkpoint_to_the_same_model(
    mini: Path, tmp_path: Path
) -> None:
    args = ["--epochs", "3", "--seed", "7"]
    reference = run_train(mini, tmp_path / "reference", *args)
    assert reference.returncode == 0, reference.stderr

    job = tmp_path / "interrupted"
    process = subprocess.Popen(
        [
            sys.executable,
            str(TRAIN_SCRIPT),
            "--checkpoint-dir",
            str(job / "checkpoints"),
            *THREADS,
            *args,
        ],
        env=sagemaker_env(mini, job),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("epoch=1 "):
                process.send_signal(signal.SIGKILL)  # a spot interruption
                break
    finally:
        process.kill()
        process.wait(timeout=30)
    assert not (job / "model" / "model.pt").exists()

    resumed = run_train(mini, job, *args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert "epoch=1 " not in resumed.stdout and "epoch=3 " in resumed.stdout
    last = [line for line in resumed.stdout.splitlines() if line.startswith("epoch=3 ")]
    assert last[0].split(" lr=")[0] in reference.stdout  # same losses and accuracy
    ours = torch.load(job / "model" / "model.pt", weights_only=True)
    theirs = torch.load(tmp_path / "reference" / "model" / "model.pt", weights_only=True)
    assert all(torch.allclose(ours[k].float(), theirs[k].float(), atol=1e-5) for k in theirs)


def test_a_checkpoint_from_another_configuration_is_not_resumed(mini: Path, tmp_path: Path) -> None:
    job = tmp_path / "job"
    assert run_train(mini, job, "--epochs", "1").returncode == 0
    result = run_train(mini, job, "--epochs", "1", "--seed", "1")
    assert result.returncode == 0
    assert "another configuration" in result.stdout and "epoch=1 " in result.stdout


def test_hyperparameters_accept_dashes_and_underscores() -> None:
    args = train.parse_args(
        [
            "--min_val_accuracy",
            "0.5",
            "--batch-size",
            "32",
            "--label_smoothing",
            "0.1",
            "--augment",
            "False",
            "--sagemaker_program",
            "train.py",
        ]
    )
    assert (args.min_val_accuracy, args.batch_size, args.label_smoothing) == (0.5, 32, 0.1)
    assert args.augment is False
    with pytest.raises(train.HyperparameterError, match="min-val-acuracy"):
        train.parse_args(["--min-val-acuracy", "0.9"])
    with pytest.raises(train.HyperparameterError):
        train.parse_args(["--epochs", "many"])


def test_bad_input_fails_with_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "data"
    (empty / "train").mkdir(parents=True)
    (empty / "test").mkdir()
    for name, value in sagemaker_env(empty, tmp_path / "job").items():
        monkeypatch.setenv(name, value)
    failure = tmp_path / "job" / "output" / "failure"
    assert train.main(["--epochs", "1", "--checkpoint-dir", ""]) == 1
    assert "manifest.jsonl" in failure.read_text()
    assert train.main(["--learning-rate", "0.1"]) == 1
    assert "unknown hyperparameters: --learning-rate" in failure.read_text()
    assert train.main(["--epochs", "0"]) == 1
    assert "at least 1" in failure.read_text()


def test_augmentation_is_a_padded_crop_with_optional_flip() -> None:
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    augmenter = train.Augmenter(images)
    assert torch.equal(augmenter(torch.arange(6)), images)  # before any epoch: the images
    augmenter.new_epoch(torch.Generator().manual_seed(0))
    out = augmenter(torch.tensor([5, 0, 1, 2, 3, 4]))[[1, 2, 3, 4, 5, 0]]
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(len(images)):
        candidates = [
            crop
            for dy in range(9)
            for dx in range(9)
            for crop in (padded[i, :, dy : dy + 32, dx : dx + 32],)
            for crop in (crop, crop.flip(2))
        ]
        assert any(torch.equal(out[i], c) for c in candidates)
    assert not torch.equal(out, images)


def test_learning_rate_schedules() -> None:
    onecycle = [train.learning_rate(s, 100, 0.1, "onecycle", 0.2) for s in range(100)]
    assert onecycle[0] < 0.01 and max(onecycle) == pytest.approx(0.1) and onecycle[-1] < 1e-3
    assert int(np.argmax(onecycle)) == 20
    cosine = [train.learning_rate(s, 100, 0.1, "cosine", 0.2) for s in range(100)]
    assert cosine[0] == pytest.approx(0.1) and all(a >= b for a, b in itertools.pairwise(cosine))


def test_channel_loading_resizes_and_refuses_escaping_keys(tmp_path: Path) -> None:
    channel = tmp_path / "train"
    channel.mkdir()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(channel / "big.png")
    rows = [{"key": "big.png", "label": 0, "label_name": "bicycle"}]
    (channel / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = train.load_channel(channel)
    assert data.images.shape == (1, 3, 32, 32) and data.class_names == ["bicycle"]
    assert data.images[0, :, 16, 16].tolist() == [10, 200, 30]
    bad: list[dict[str, Any]] = [{"key": "../../etc/passwd", "label": 0, "label_name": "bicycle"}]
    (channel / "manifest.jsonl").write_text(json.dumps(bad[0]) + "\n")
    with pytest.raises(train.TrainingError, match="leaves the channel"):
        train.load_channel(channel)
