"""Transform: decoded CIFAR-100 -> PNG files, a manifest per split and training statistics.

Layout written under the output folder (the same relative paths become S3 keys under the prefix):
    train/<filename>.png      one PNG per image, named as in the archive's `filenames`
    train/manifest.jsonl      {"key", "label", "label_name", "fine_label", "coarse_label"} per image
    train/stats.json          {"classes", "mean", "std", "images"} (mean/std per RGB channel, 0-1)
    test/<filename>.png, test/manifest.jsonl
`key` is the file name relative to its split folder (a SageMaker channel holds the split folder),
`label` the index in the chosen class subset (in `classes` order), `fine_label` the original id.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from scones.etl.archive import Cifar100, Split

DEFAULT_CLASSES = ("bicycle", "motorcycle")
SPLITS = ("train", "test")


class UnknownClassError(ValueError):
    """A requested class is not a CIFAR-100 fine label."""


def select_classes(spec: str | Sequence[str], fine_label_names: Sequence[str]) -> list[str]:
    """Class names from `all`, a comma-separated list or a sequence, in CIFAR-100 id order."""
    if isinstance(spec, str):
        if spec.strip().lower() == "all":
            return list(fine_label_names)
        spec = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = sorted(set(spec) - set(fine_label_names))
    if unknown or not spec:
        raise UnknownClassError(
            f"unknown classes {unknown or spec}; choose from CIFAR-100's fine labels or 'all'"
        )
    chosen = set(spec)
    return [name for name in fine_label_names if name in chosen]


def png_bytes(image: np.ndarray) -> bytes:
    """A deterministic PNG encoding of an [H, W, 3] uint8 image (same pixels, same bytes)."""
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


@dataclass(frozen=True)
class SplitSummary:
    """What was written for one split."""

    images: int
    bytes: int


def _unique_names(filenames: Sequence[str]) -> list[str]:
    """File names as in the archive, with a row suffix only where a name repeats in a split."""
    seen: dict[str, int] = {}
    names = []
    for row, name in enumerate(filenames):
        seen[name] = seen.get(name, 0) + 1
        stem, dot, ext = name.rpartition(".")
        names.append(name if seen[name] == 1 else f"{stem}-{row}{dot}{ext}")
    return names


def write_split(
    split: Split,
    split_name: str,
    classes: list[str],
    fine_label_names: Sequence[str],
    out_dir: Path,
    workers: int = 4,
) -> SplitSummary:
    """Write the PNGs and the manifest of one split (replacing an earlier run's folder)."""
    fine_index = {name: i for i, name in enumerate(fine_label_names)}
    subset = {fine_index[name]: label for label, name in enumerate(classes)}
    rows = np.flatnonzero(np.isin(split.fine_labels, list(subset)))
    folder = out_dir / split_name
    if folder.exists():
        shutil.rmtree(folder)  # a different class subset must not leave stale images behind
    folder.mkdir(parents=True)
    names = _unique_names([split.filenames[r] for r in rows])

    def write(item: tuple[int, str]) -> int:
        row, name = item
        payload = png_bytes(split.images[row])
        (folder / name).write_bytes(payload)
        return len(payload)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        sizes = list(pool.map(write, zip(rows.tolist(), names, strict=True), chunksize=256))
    with open(folder / "manifest.jsonl", "w") as manifest:
        for row, name in zip(rows.tolist(), names, strict=True):
            fine = int(split.fine_labels[row])
            record = {
                "key": name,
                "label": subset[fine],
                "label_name": fine_label_names[fine],
                "fine_label": fine,
                "coarse_label": int(split.coarse_labels[row]),
            }
            manifest.write(json.dumps(record) + "\n")
    return SplitSummary(images=len(rows), bytes=sum(sizes))


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation (0-1 scale) of [N, H, W, 3] uint8 images."""
    if len(images) == 0:
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    pixels = images.reshape(-1, 3)
    count = len(pixels)
    total = pixels.sum(axis=0, dtype=np.float64)
    squares = np.einsum("ij,ij->j", pixels.astype(np.float64), pixels.astype(np.float64))
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return [round(float(v) / 255, 6) for v in mean], [round(float(v) / 255, 6) for v in std]


def transform(dataset: Cifar100, classes: list[str], out_dir: Path) -> dict[str, SplitSummary]:
    """Write both splits and the training statistics under out_dir."""
    summaries = {
        name: write_split(getattr(dataset, name), name, classes, dataset.fine_label_names, out_dir)
        for name in SPLITS
    }
    wanted = [dataset.fine_label_names.index(name) for name in classes]
    train_rows = np.isin(dataset.train.fine_labels, wanted)
    mean, std = channel_stats(dataset.train.images[train_rows])
    stats = {"classes": classes, "mean": mean, "std": std, "images": int(train_rows.sum())}
    (out_dir / "train" / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return summaries
