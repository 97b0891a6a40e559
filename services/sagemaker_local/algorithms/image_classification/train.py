"""The built-in image-classification algorithm, run as a local process under the training contract.

    python -m services.sagemaker_local.algorithms.image_classification.train --ml-root DIR

`DIR` is laid out as `/opt/ml` is in AWS's container (`input/config/*.json`, `input/data/<channel>`,
`model/`, `output/failure`). Readable top to bottom: hyperparameters, data, network, loop, save.
Progress is logged in the lines AWS's algorithm writes (`Epoch[0] Train-accuracy=0.62`,
`Epoch[0] Validation-accuracy=0.70`), which the package's `METRIC_DEFINITIONS` turn into metrics.

The network is the project's own (`model/networks.py`): `num_layers=18` trains its ResNet-18;
every other depth (AWS's default is 152) trains its small CNN at width 16, which fits 30 epochs of
a thousand 32x32 images in well under a minute on two CPU cores. The model kept is the epoch with
the best validation accuracy, as AWS keeps it.
"""

from __future__ import annotations

import os

# Busy-waiting OpenMP threads multiply the CPU time several-fold on a shared host (measured: 38 s
# of CPU instead of 9 s for the same 5 epochs under a load of 6 on 2 cores); set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import logging
import math
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model import networks

from . import serving
from .data import (
    DataError,
    Split,
    channel_content_type,
    load_split,
    read_input_data_config,
)
from .hyperparameters import SPECS, HyperparameterError, parse_hyperparameters

# The project's files (in `model/`) the artefact's `code/` ships beside the serving hooks.
SHIPPED_MODEL_FILES = ("networks.py", "image_io.py")
SMALL_CNN_WIDTH = 16
SEED = 0
BATCH_LOG_EVERY = 20
# Evaluation and the saved model use an exponential moving average of the weights (and BN
# statistics): on small data the raw weights' validation accuracy swings by 10-20 points from
# epoch to epoch, which would make the final `validation:accuracy` a lottery.
EMA_DECAY = 0.98
NO_LOCAL_EFFECT = ("kv_store", "use_pretrained_model")

log = logging.getLogger("image-classification")


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        logging.Formatter("[%(asctime)s %(levelname)s %(thread)d] %(message)s", "%m/%d/%Y %H:%M:%S")
    )
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def _log_settings(hps: dict[str, Any], given: dict[str, Any], device: torch.device) -> None:
    log.info("Reading provided hyperparameters: %s", json.dumps(given, sort_keys=True))
    log.info("Final configuration: %s", json.dumps(hps, sort_keys=True, default=list))
    for name in NO_LOCAL_EFFECT:
        if name in given:
            log.info("%s=%s: %s", name, given[name], SPECS[name].local_effect)
    if hps["use_pretrained_model"]:
        log.warning(
            "use_pretrained_model=1: pretrained ImageNet weights cannot be downloaded here; "
            "training from a random initialisation."
        )
    if hps["precision_dtype"] == "float16" and device.type != "cuda":
        log.info("precision_dtype=float16: no effect on CPU; training in float32.")
    if hps["num_layers"] != 18:
        log.info(
            "num_layers=%d: sagemaker-local trains the project's small CNN (width %d); "
            "num_layers=18 trains its ResNet-18.",
            hps["num_layers"],
            SMALL_CNN_WIDTH,
        )


def model_config(hps: dict[str, Any], mean: list[float], std: list[float]) -> dict[str, Any]:
    """What serving needs to rebuild the network and its input transform."""
    return {
        "algorithm": "image-classification",
        "architecture": "resnet18" if hps["num_layers"] == 18 else "small_cnn",
        "width": SMALL_CNN_WIDTH,
        "num_classes": hps["num_classes"],
        "image_shape": list(hps["image_shape"]),
        "mean": mean,
        "std": std,
    }


def _optimizer(model: nn.Module, hps: dict[str, Any]) -> torch.optim.Optimizer:
    params, lr, wd = model.parameters(), hps["learning_rate"], hps["weight_decay"]
    name = hps["optimizer"]
    if name == "adam":
        return torch.optim.Adam(
            params, lr=lr, betas=(hps["beta_1"], hps["beta_2"]), eps=hps["eps"], weight_decay=wd
        )
    if name == "rmsprop":
        return torch.optim.RMSprop(
            params,
            lr=lr,
            alpha=hps["gamma"],
            eps=hps["eps"],
            momentum=hps["momentum"],
            weight_decay=wd,
        )
    return torch.optim.SGD(
        params, lr=lr, momentum=hps["momentum"], weight_decay=wd, nesterov=name == "nag"
    )


def augment(batch: torch.Tensor, kind: str | None, generator: torch.Generator) -> torch.Tensor:
    """AWS's augmentation types on a normalised batch [N, C, H, W]."""
    if not kind:
        return batch
    n, _, h, w = batch.shape
    pad = max(1, h // 8)
    padded = F.pad(batch, (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    if kind in ("crop_color", "crop_color_transform"):
        # Hue/saturation/lightness offsets of AWS's [-36,36]/[-50,50]/[-50,50], applied in RGB:
        # a lightness shift, a saturation scale and a small per-channel (hue-like) shift.
        light = (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * (50 / 255)
        sat = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * (50 / 255)
        hue = (torch.rand(n, out.shape[1], 1, 1, generator=generator) * 2 - 1) * (36 / 255)
        grey = out.mean(dim=1, keepdim=True)
        out = grey + (out - grey) * sat + light + hue
    if kind == "crop_color_transform":
        angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(10)
        shear = (torch.rand(n, generator=generator) * 2 - 1) * 0.1
        aspect = 1 + (torch.rand(n, generator=generator) * 2 - 1) * 0.25
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = cos * aspect, -sin + shear
        theta[:, 1, 0], theta[:, 1, 1] = sin, cos / aspect
        grid = F.affine_grid(theta, list(out.shape), align_corners=False)
        out = F.grid_sample(out, grid, padding_mode="reflection", align_corners=False)
    return out


def _accuracies(logits: torch.Tensor, labels: torch.Tensor, top_k: int | None) -> tuple[int, int]:
    correct = int((logits.argmax(dim=1) == labels).sum())
    top = 0
    if top_k:
        k = min(top_k, logits.shape[1])
        top = int((logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum())
    return correct, top


def evaluate(
    model: nn.Module,
    split: Split,
    normalise: Any,
    batch_size: int,
    top_k: int | None,
    device: torch.device,
) -> tuple[float, float]:
    """Accuracy and top-k accuracy of the model on a split."""
    model.eval()
    correct = top = 0
    with torch.inference_mode():
        for start in range(0, len(split), max(batch_size, 256)):
            images = normalise(split.images[start : start + max(batch_size, 256)]).to(device)
            labels = split.labels[start : start + max(batch_size, 256)].to(device)
            c, t = _accuracies(model(images), labels, top_k)
            correct, top = correct + c, top + t
    return correct / len(split), top / len(split)


def train(hps: dict[str, Any], train_split: Split, val_split: Split, model_dir: Path) -> float:
    """The training loop; saves the best epoch's model; returns its validation accuracy."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    pixels = train_split.images.float() / 255
    mean = pixels.mean(dim=(0, 2, 3))
    std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-3)
    channels = train_split.images.shape[1]

    def normalise(images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255 - mean.view(1, channels, 1, 1)) / std.view(1, channels, 1, 1)

    config = model_config(hps, mean.tolist(), std.tolist())
    model = serving.build_model(config, networks).to(device)
    averaged = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(EMA_DECAY), use_buffers=True
    )
    optimizer = _optimizer(model, hps)
    scheduler = (
        torch.optim.lr_scheduler.MultiStepLR(
            optimizer, list(hps["lr_scheduler_step"]), gamma=hps["lr_scheduler_factor"]
        )
        if hps["lr_scheduler_step"]
        else None
    )
    weight = None
    if hps["use_weighted_loss"]:
        counts = torch.bincount(train_split.labels, minlength=hps["num_classes"]).float()
        weight = (counts.sum() / counts.clamp_min(1) / hps["num_classes"]).to(device)
    autocast = device.type == "cuda" and hps["precision_dtype"] == "float16"
    batch_size, top_k = hps["mini_batch_size"], hps["top_k"]
    inputs = normalise(train_split.images)
    best_accuracy, best_epoch, best_state = -1.0, -1, None
    for epoch in range(hps["epochs"]):
        model.train()
        started = time.time()
        order = torch.randperm(len(train_split), generator=generator)
        correct = top = seen = 0
        window_start, window_seen = time.time(), 0
        for batch, start in enumerate(range(0, len(order), batch_size)):
            index = order[start : start + batch_size]
            images = augment(inputs[index], hps["augmentation_type"], generator).to(device)
            labels = train_split.labels[index].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = model(images)
                loss = F.cross_entropy(logits.float(), labels, weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            averaged.update_parameters(model)
            c, t = _accuracies(logits.detach(), labels, top_k)
            correct, top, seen = correct + c, top + t, seen + len(index)
            window_seen += len(index)
            if (batch + 1) % BATCH_LOG_EVERY == 0:
                speed = window_seen / max(time.time() - window_start, 1e-9)
                log.info(
                    "Epoch[%d] Batch [%d]\tSpeed: %.3f samples/sec\taccuracy=%f",
                    epoch,
                    batch + 1,
                    speed,
                    correct / seen,
                )
                window_start, window_seen = time.time(), 0
        if scheduler is not None:
            scheduler.step()
        log.info("Epoch[%d] Train-accuracy=%f", epoch, correct / seen)
        if top_k:
            log.info("Epoch[%d] Train-top_k_accuracy_%d=%f", epoch, top_k, top / seen)
        log.info("Epoch[%d] Time cost=%.3f", epoch, time.time() - started)
        accuracy, top_accuracy = evaluate(
            averaged.module, val_split, normalise, batch_size, top_k, device
        )
        log.info("Epoch[%d] Validation-accuracy=%f", epoch, accuracy)
        if top_k:
            log.info("Epoch[%d] Validation-top_k_accuracy_%d=%f", epoch, top_k, top_accuracy)
        tolerance = hps["early_stopping_tolerance"] * max(best_accuracy, 0.0)
        if accuracy > best_accuracy + tolerance or best_state is None:
            best_accuracy, best_epoch = accuracy, epoch
            best_state = {
                k: v.detach().cpu().clone() for k, v in averaged.module.state_dict().items()
            }
            log.info("Storing the best model with validation accuracy: %f", accuracy)
        frequency = hps["checkpoint_frequency"]
        if frequency and (epoch + 1) % frequency == 0:
            path = model_dir / f"image-classification-{epoch + 1:04d}.pt"
            torch.save(averaged.module.state_dict(), path)
            log.info('Saved checkpoint to "%s"', path)
        if (
            hps["early_stopping"]
            and epoch + 1 >= hps["early_stopping_min_epochs"]
            and epoch - best_epoch >= hps["early_stopping_patience"]
        ):
            log.info("Early stopping criteria met at epoch %d.", epoch)
            break
    assert best_state is not None
    torch.save(best_state, model_dir / "model.pt")
    write_serving_files(model_dir, config)
    log.info("Saved the model of epoch %d (validation accuracy %f)", best_epoch, best_accuracy)
    return best_accuracy


def write_serving_files(model_dir: Path, config: dict[str, Any]) -> None:
    """The model config, the input shapes and the self-contained `code/` the server loads."""
    (model_dir / "model_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    channels, height, width = config["image_shape"]
    shapes = [{"shape": [1, channels, height, width], "name": "data"}]
    (model_dir / "model-shapes.json").write_text(json.dumps(shapes), encoding="utf-8")
    code = model_dir / "code"
    code.mkdir(exist_ok=True)
    shutil.copyfile(serving.__file__, code / "inference.py")
    for name in SHIPPED_MODEL_FILES:
        shutil.copyfile(Path(networks.__file__).with_name(name), code / name)


def training_threads() -> int:
    """Torch threads: the instance's CPUs (`SM_NUM_CPUS`), or `SAGEMAKER_LOCAL_TRAINING_THREADS`.

    With passive OpenMP waiting (above) all cores pay off even on a shared host: on 2 cores
    under a load of 3-4, 5 epochs took 13-14 s with 2 threads and 22-45 s with 1.
    """
    forced = os.environ.get("SAGEMAKER_LOCAL_TRAINING_THREADS")
    if forced:
        return max(1, int(forced))
    return max(1, int(os.environ.get("SM_NUM_CPUS") or os.cpu_count() or 1))


def run(ml_root: Path) -> int:
    """One training job; the process exit code (the failure reason in `output/failure`)."""
    config_dir, data_dir = ml_root / "input" / "config", ml_root / "input" / "data"
    model_dir = ml_root / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(training_threads())
    try:
        given = json.loads((config_dir / "hyperparameters.json").read_text(encoding="utf-8"))
        hps = parse_hyperparameters(given)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        _log_settings(hps, given, device)
        log.info("Training on %s with %d thread(s)", device, torch.get_num_threads())
        content_type = channel_content_type(read_input_data_config(config_dir))
        shape = hps["image_shape"]
        splits = [
            load_split(data_dir, channel, content_type, hps["num_classes"], shape, hps["resize"])
            for channel in ("train", "validation")
        ]
        log.info(
            "Loaded %d training and %d validation images (%s, shape %s)",
            len(splits[0]),
            len(splits[1]),
            content_type,
            ",".join(map(str, shape)),
        )
        if len(splits[0]) != hps["num_training_samples"]:
            log.warning(
                "num_training_samples=%d but the train channel holds %d images",
                hps["num_training_samples"],
                len(splits[0]),
            )
        train(hps, splits[0], splits[1], model_dir)
    except (HyperparameterError, DataError) as exc:
        return _fail(ml_root, str(exc))
    except Exception as exc:  # the algorithm's own fault: AWS reports these as AlgorithmError
        traceback.print_exc()
        return _fail(ml_root, f"AlgorithmError: {type(exc).__name__}: {exc}")
    return 0


def _fail(ml_root: Path, reason: str) -> int:
    log.error(reason)
    failure = ml_root / "output" / "failure"
    failure.parent.mkdir(parents=True, exist_ok=True)
    failure.write_text(reason, encoding="utf-8")
    return 2 if reason.startswith("ClientError") else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point: `--ml-root` is the job's /opt/ml."""
    parser = argparse.ArgumentParser(description="SageMaker built-in image classification")
    parser.add_argument("--ml-root", type=Path, default=Path("/opt/ml"))
    args = parser.parse_args(argv)
    _setup_logging()
    return run(args.ml_root)


if __name__ == "__main__":
    raise SystemExit(main())
