"""Train an image classifier under the SageMaker training-container contract.

Runs unchanged as a SageMaker training job (AWS's PyTorch training image, `source_dir` = this
folder, entry point `train.py`) and locally as `python model/train.py`:

- hyperparameters arrive as `--key value`; keys may use dashes or underscores
  (`--min-val-accuracy 0.9` or `--min_val_accuracy 0.9`), booleans as true/false;
- data from the channels `SM_CHANNEL_TRAIN` / `SM_CHANNEL_TEST` (default
  `/opt/ml/input/data/<channel>`), each holding the ETL output: PNG files and `manifest.jsonl`
  (one JSON object per image: `key` = file name relative to the channel folder, `label`,
  `label_name`), and in the training channel `stats.json` (`mean`, `std`, `classes`);
- the model goes to `SM_MODEL_DIR` (default `/opt/ml/model`): `model.pt` (a state_dict, safe with
  `torch.load(weights_only=True)`), `model_config.json` (architecture, class names, mean/std,
  image size, validation accuracy) and `code/` (`inference.py`, `networks.py`, `image_io.py`);
- a checkpoint every epoch in `--checkpoint-dir` (default `/opt/ml/checkpoints`, which SageMaker
  syncs with `CheckpointConfig`); a restarted job resumes from it when its configuration matches;
- on any error the reason goes to `$SM_OUTPUT_DIR/failure` (default `/opt/ml/output/failure`,
  SageMaker's FailureReason) and the exit status is non-zero. A final validation accuracy below
  `--min-val-accuracy` is such an error, and then no model is left in the model folder.

Metric lines, one per epoch, flushed:
    epoch=3 train_loss=0.4100 val_loss=0.5200 val_acc=0.9130 lr=0.0500 images_per_sec=812.4
SageMaker metric definitions (Name: Regex):
    epoch: `epoch=(\\d+)`        train:loss: `train_loss=([0-9.]+)`
    validation:loss: `val_loss=([0-9.]+)`   validation:accuracy: `val_acc=([0-9.]+)`
    train:throughput: `images_per_sec=([0-9.]+)`

Speed: the whole dataset is decoded once into a uint8 tensor (on the GPU when there is one; CIFAR
fits), and augmentation (random crop with padding 4, horizontal flip) is one batched gather on
that tensor. CUDA adds bf16 autocast and channels_last; the CPU uses every core it is given.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

if __package__:
    from . import networks
else:  # run as a script: SageMaker puts the entry point's folder first on sys.path
    import networks  # type: ignore[no-redef]

IMAGE_SIZE = 32
PAD = 4
MODEL_FILE = "model.pt"
CONFIG_FILE = "model_config.json"
CHECKPOINT_FILE = "checkpoint.pt"
CODE_FILES = ("inference.py", "networks.py", "image_io.py")


class TrainingError(Exception):
    """A reason the training job fails (written to the failure file)."""


class HyperparameterError(TrainingError):
    """A hyperparameter is unknown or has a bad value."""


class AccuracyGateError(TrainingError):
    """The trained model is below the required validation accuracy."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise HyperparameterError(message)


def _bool(value: str) -> bool:
    lowered = str(value).strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {value!r}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Hyperparameters (`--key value`, dashes or underscores) plus the SageMaker paths."""
    env = os.environ
    parser = _Parser(description=__doc__.splitlines()[0])

    def option(name: str, **kwargs: object) -> None:
        names = {f"--{name}", f"--{name.replace('-', '_')}"}
        parser.add_argument(*sorted(names), dest=name.replace("-", "_"), **kwargs)  # type: ignore[arg-type]

    option("model", default="small_cnn", choices=sorted(networks.NETWORKS))
    option("epochs", type=int, default=12)
    option("batch-size", type=int, default=64)
    option("lr", type=float, default=0.1, help="peak learning rate (SGD, Nesterov momentum)")
    option("momentum", type=float, default=0.9)
    option("weight-decay", type=float, default=5e-4)
    option("label-smoothing", type=float, default=0.05)
    option("schedule", default="onecycle", choices=["onecycle", "cosine"])
    option("warmup", type=float, default=0.2, help="one-cycle: fraction of steps warming up")
    option("augment", type=_bool, default=True)
    option("seed", type=int, default=0)
    option("min-val-accuracy", type=float, default=0.0)
    option("device", default="auto", choices=["auto", "cpu", "cuda"])
    option("threads", type=int, default=0, help="CPU threads; 0 = every core available")
    option("bf16", type=_bool, default=True, help="bf16 autocast on CUDA")
    option("channels-last", type=_bool, default=True)
    option("compile", type=_bool, default=False, help="torch.compile the model")
    option(
        "checkpoint-dir",
        default=env.get("SM_CHECKPOINT_DIR", "/opt/ml/checkpoints"),
        help="empty: no checkpoints",
    )
    option("train", default=env.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    option("test", default=env.get("SM_CHANNEL_TEST", "/opt/ml/input/data/test"))
    option("model-dir", default=env.get("SM_MODEL_DIR", "/opt/ml/model"))
    option("output-dir", default=env.get("SM_OUTPUT_DIR", "/opt/ml/output"))
    args, unknown = parser.parse_known_args(argv)
    # The SageMaker SDK adds its own sagemaker_* hyperparameters; anything else is a typo that
    # must not silently disable, say, the accuracy gate.
    typos = [a for a in unknown if a.startswith("--") and not a.lstrip("-").startswith("sagemaker")]
    if typos:
        raise HyperparameterError(f"unknown hyperparameters: {' '.join(typos)}")
    if args.epochs < 1 or args.batch_size < 1:
        raise HyperparameterError("epochs and batch-size must be at least 1")
    return args


@dataclass
class Channel:
    """One decoded channel: images [N, 3, 32, 32] uint8 and labels [N] int64."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]


def _decode_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
            rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
        return np.asarray(rgb, dtype=np.uint8)


def read_manifest(channel_dir: Path) -> list[dict[str, object]]:
    """The rows of a channel's manifest.jsonl."""
    manifest = channel_dir / "manifest.jsonl"
    if not manifest.is_file():
        raise TrainingError(f"channel {channel_dir} has no manifest.jsonl (run the ETL first)")
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    if not rows:
        raise TrainingError(f"{manifest} lists no images")
    return rows


def load_channel(channel_dir: Path, class_names: list[str] | None = None) -> Channel:
    """Decode every image of a channel once; labels follow class_names when given."""
    rows = read_manifest(channel_dir)
    if class_names is None:
        by_label = {int(r["label"]): str(r["label_name"]) for r in rows}  # type: ignore[call-overload]
        class_names = [by_label[i] for i in sorted(by_label)]
        if sorted(by_label) != list(range(len(class_names))):
            raise TrainingError(f"{channel_dir}: labels are not 0..{len(class_names) - 1}")
    index = {name: i for i, name in enumerate(class_names)}
    root = channel_dir.resolve()
    paths, labels = [], []
    for row in rows:
        name = str(row["label_name"])
        if name not in index:
            raise TrainingError(f"{channel_dir}: class {name!r} is not one of {class_names}")
        path = (root / str(row["key"])).resolve()
        if not path.is_relative_to(root):
            raise TrainingError(f"{channel_dir}: manifest key {row['key']!r} leaves the channel")
        paths.append(path)
        labels.append(index[name])
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        pixels = np.stack(list(pool.map(_decode_png, paths, chunksize=256)))
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    return Channel(images, torch.tensor(labels, dtype=torch.int64), class_names)


def read_stats(
    train_dir: Path, images: torch.Tensor
) -> tuple[list[str] | None, list[float], list[float]]:
    """Classes and per-channel mean/std (0-1 scale) from stats.json, or computed from images."""
    stats_file = train_dir / "stats.json"
    if stats_file.is_file():
        stats = json.loads(stats_file.read_text())
        return (
            stats.get("classes"),
            [float(v) for v in stats["mean"]],
            [float(v) for v in stats["std"]],
        )
    pixels = images.double() / 255
    return None, pixels.mean((0, 2, 3)).tolist(), pixels.std((0, 2, 3)).tolist()


class Augmenter:
    """Random crop (zero padding 4) and horizontal flip of training images, drawn per epoch.

    The padded images are stored once; each epoch draws every image's crop offsets and flip as
    row/column index tables, so a batch's augmentation is a single gather on the device.
    """

    def __init__(self, images: torch.Tensor) -> None:
        _, channels, height, width = images.shape
        device = images.device
        self.padded = F.pad(images, (PAD, PAD, PAD, PAD))
        self.channel_index = torch.arange(channels, device=device)[None, :, None, None]
        self.row_index = torch.arange(height, device=device)
        self.col_index = torch.arange(width, device=device)
        self.rows = self.row_index.expand(len(images), -1) + PAD
        self.cols = self.col_index.expand(len(images), -1) + PAD

    def new_epoch(self, generator: torch.Generator) -> None:
        """Draw this epoch's crop offsets and flips for every image."""
        count, device = len(self.padded), self.padded.device
        offsets = torch.randint(0, 2 * PAD + 1, (count, 2), generator=generator, device=device)
        flips = torch.rand(count, 1, generator=generator, device=device) < 0.5
        self.rows = offsets[:, :1] + self.row_index
        cols = offsets[:, 1:] + self.col_index
        self.cols = torch.where(flips, cols.flip(1), cols)

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        """The augmented uint8 images [B, C, H, W] at the given dataset indices."""
        return self.padded[
            index[:, None, None, None],
            self.channel_index,
            self.rows[index][:, None, :, None],
            self.cols[index][:, None, None, :],
        ]


class Normaliser:
    """uint8 images -> normalised float input in the model's memory format."""

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], device: torch.device, channels_last: bool
    ) -> None:
        self.scale = (1.0 / (255.0 * torch.tensor(std, device=device))).view(1, 3, 1, 1)
        self.shift = (torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(
            1, 3, 1, 1
        )
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised float32 batch."""
        out = images.float() * self.scale - self.shift
        return out.contiguous(memory_format=self.memory_format)


def learning_rate(step: int, total_steps: int, peak: float, schedule: str, warmup: float) -> float:
    """One-cycle (linear warm-up, cosine down to 0) or plain cosine decay, at a step."""
    if schedule == "onecycle":
        warmup_steps = max(1, int(total_steps * warmup))
        if step < warmup_steps:
            return peak * (0.04 + 0.96 * step / warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    else:
        progress = step / max(1, total_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class EpochResult:
    """What one training epoch measured."""

    loss: float
    images: int
    seconds: float


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    data: Channel,
    augmenter: Augmenter | None,
    normalise: Normaliser,
    args: argparse.Namespace,
    epoch: int,
) -> EpochResult:
    """One pass over the training tensor in a seeded order, with augmentation on the batch."""
    device = data.images.device
    # Every epoch's randomness follows from (seed, epoch): a resumed run repeats it exactly.
    generator = torch.Generator(device=device).manual_seed(args.seed * 100_003 + epoch)
    torch.manual_seed(args.seed * 100_003 + epoch)  # dropout
    order = torch.randperm(len(data.labels), generator=generator, device=device)
    if augmenter is not None:
        augmenter.new_epoch(generator)
    use_amp = device.type == "cuda" and args.bf16
    steps_per_epoch = math.ceil(len(data.labels) / args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    losses, sizes = [], []
    model.train()
    start = time.perf_counter()
    for step in range(steps_per_epoch):
        lr = learning_rate(
            (epoch - 1) * steps_per_epoch + step, total_steps, args.lr, args.schedule, args.warmup
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = order[step * args.batch_size : (step + 1) * args.batch_size]
        batch = augmenter(index) if augmenter is not None else data.images[index]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(normalise(batch))
        loss = criterion(logits.float(), data.labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        sizes.append(len(index))
    weights = torch.tensor(sizes, dtype=torch.float32, device=device)
    mean_loss = float(torch.stack(losses) @ weights) / len(data.labels)  # one sync per epoch
    if not math.isfinite(mean_loss):
        raise TrainingError(f"training diverged at epoch {epoch} (loss {mean_loss}); lower --lr")
    return EpochResult(mean_loss, len(data.labels), time.perf_counter() - start)


@torch.inference_mode()
def evaluate(
    model: nn.Module, data: Channel, normalise: Normaliser, bf16: bool
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on a channel."""
    model.eval()
    device = data.images.device
    loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device)
    for start in range(0, len(data.labels), 1024):
        images = data.images[start : start + 1024]
        labels = data.labels[start : start + 1024]
        with torch.autocast(
            device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and bf16
        ):
            logits = model(normalise(images)).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
    return float(loss_sum) / len(data.labels), float(correct) / len(data.labels)


def _signature(args: argparse.Namespace, classes: list[str]) -> dict[str, object]:
    """What a checkpoint must match to be resumed: the configuration and the training data."""
    manifest = (Path(args.train) / "manifest.jsonl").read_bytes()
    keys = (
        "model",
        "epochs",
        "batch_size",
        "lr",
        "momentum",
        "weight_decay",
        "label_smoothing",
        "schedule",
        "warmup",
        "augment",
        "seed",
    )
    return {
        **{k: getattr(args, k) for k in keys},
        "classes": classes,
        "data": hashlib.sha256(manifest).hexdigest(),
    }


def save_checkpoint(
    directory: Path,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    signature: dict[str, object],
) -> None:
    """Write the state after an epoch atomically (a crash never leaves half a checkpoint)."""
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / (CHECKPOINT_FILE + ".partial")
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "signature": signature,
    }
    torch.save(state, partial)
    partial.replace(directory / CHECKPOINT_FILE)


def load_checkpoint(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    signature: dict[str, object],
) -> int:
    """Restore the last checkpoint if it matches this configuration; the epoch it completed."""
    path = directory / CHECKPOINT_FILE
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("signature") != signature:
        print(f"checkpoint {path} is from another configuration; starting afresh", flush=True)
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    print(f"resumed from {path} after epoch {state['epoch']}", flush=True)
    return int(state["epoch"])


def clear_model_dir(model_dir: Path) -> None:
    """Remove a previous run's deployable files, so a failed run leaves none."""
    for name in (MODEL_FILE, CONFIG_FILE):
        (model_dir / name).unlink(missing_ok=True)
    shutil.rmtree(model_dir / "code", ignore_errors=True)


def save_model(
    model_dir: Path,
    model: nn.Module,
    args: argparse.Namespace,
    classes: list[str],
    mean: list[float],
    std: list[float],
    val_acc: float,
) -> None:
    """Write model.pt, model_config.json and the self-contained code/ folder."""
    model_dir.mkdir(parents=True, exist_ok=True)
    code_dir = model_dir / "code"
    code_dir.mkdir(exist_ok=True)
    for name in CODE_FILES:
        shutil.copyfile(Path(__file__).resolve().parent / name, code_dir / name)
    config = {
        "architecture": args.model,
        "classes": classes,
        "mean": mean,
        "std": std,
        "image_size": IMAGE_SIZE,
        "val_acc": round(val_acc, 6),
        "epochs": args.epochs,
        "seed": args.seed,
    }
    (model_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    # The weights last and atomically: a model folder with model.pt is complete.
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, model_dir / (MODEL_FILE + ".partial"))
    (model_dir / (MODEL_FILE + ".partial")).replace(model_dir / MODEL_FILE)


def choose_device(args: argparse.Namespace) -> torch.device:
    """CUDA when present (or asked for), else the CPU with its threads set."""
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda asked for, but no CUDA device is available")
        torch.backends.cudnn.benchmark = True
        return torch.device("cuda")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(args.threads or cores or 1)
    return torch.device("cpu")


def train(args: argparse.Namespace) -> float:
    """Run the whole job; returns the final validation accuracy."""
    model_dir = Path(args.model_dir)
    clear_model_dir(model_dir)
    device = choose_device(args)
    train_dir, test_dir = Path(args.train), Path(args.test)
    train_data = load_channel(train_dir)
    classes, mean, std = read_stats(train_dir, train_data.images)
    classes = classes or train_data.class_names
    if classes != train_data.class_names:
        train_data = load_channel(train_dir, classes)
    test_data = load_channel(test_dir, classes)
    for data in (train_data, test_data):
        data.images, data.labels = data.images.to(device), data.labels.to(device)
    print(
        f"device={device.type} threads={torch.get_num_threads()} model={args.model} "
        f"classes={','.join(classes)} train_images={len(train_data.labels)} "
        f"test_images={len(test_data.labels)}",
        flush=True,
    )

    torch.manual_seed(args.seed)
    model = networks.build_network(args.model, len(classes)).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        momentum=args.momentum,
        nesterov=args.momentum > 0,
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    normalise = Normaliser(mean, std, device, args.channels_last)
    augmenter = Augmenter(train_data.images) if args.augment else None
    signature = _signature(args, classes)
    checkpoints = Path(args.checkpoint_dir) if args.checkpoint_dir else None
    first_epoch = 1 + (
        load_checkpoint(checkpoints, model, optimizer, signature) if checkpoints else 0
    )
    runner = cast(nn.Module, torch.compile(model)) if args.compile else model

    val_acc = float("nan")
    if first_epoch > args.epochs:  # the checkpoint already holds the finished run
        _, val_acc = evaluate(runner, test_data, normalise, args.bf16)
    for epoch in range(first_epoch, args.epochs + 1):
        result = train_epoch(
            runner, optimizer, criterion, train_data, augmenter, normalise, args, epoch
        )
        val_loss, val_acc = evaluate(runner, test_data, normalise, args.bf16)
        if checkpoints:
            save_checkpoint(checkpoints, epoch, model, optimizer, signature)
        print(
            f"epoch={epoch} train_loss={result.loss:.4f} val_loss={val_loss:.4f} "
            f"val_acc={val_acc:.4f} lr={optimizer.param_groups[0]['lr']:.4f} "
            f"images_per_sec={result.images / result.seconds:.1f}",
            flush=True,
        )

    if val_acc < args.min_val_accuracy:
        raise AccuracyGateError(
            f"validation accuracy {val_acc:.4f} is below the required minimum "
            f"{args.min_val_accuracy:.4f} (min-val-accuracy); no model was written"
        )
    save_model(model_dir, model, args, classes, mean, std, val_acc)
    print(f"final val_acc={val_acc:.4f} model_dir={model_dir}", flush=True)
    return val_acc


def write_failure(output_dir: str, reason: str) -> None:
    """Record why the job failed where SageMaker looks for it (best effort)."""
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "failure").write_text(reason[:4000] + "\n")
    except OSError as exc:
        print(f"could not write the failure file: {exc}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 on success; on failure the reason is in the failure file, status 1."""
    output_dir = os.environ.get("SM_OUTPUT_DIR", "/opt/ml/output")
    try:
        args = parse_args(argv)
        output_dir = args.output_dir
        train(args)
        return 0
    except Exception as exc:
        reason = str(exc) if isinstance(exc, TrainingError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, TrainingError):
            traceback.print_exc()
        print(f"training failed: {reason}", file=sys.stderr, flush=True)
        write_failure(output_dir, reason)
        return 1


if __name__ == "__main__":
    sys.exit(main())
