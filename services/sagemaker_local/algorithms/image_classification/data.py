"""The algorithm's input channels, File mode, as AWS documents them.

- `application/x-recordio` (the default): `train` and `validation` channels of `.rec` files.
- `application/x-image` (also `image/png`, `image/jpeg`): `train` and `validation` channels of
  images with a `.lst` list in `train_lst` / `validation_lst`, or inside the image channel itself.
  A `.lst` line is `index<TAB>label<TAB>relative/path` (the label may be written `1.000000`).

Every input is untrusted: paths must stay inside their channel, images are size-checked before
decoding, labels must be whole numbers in `[0, num_classes)`. Problems raise `DataError` with the
`ClientError:` reason the job fails with.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .recordio import RecordIOError, read_records, unpack_image_record

RECORDIO = "application/x-recordio"
IMAGE = "application/x-image"
IMAGE_CONTENT_TYPES = {IMAGE, "image/png", "image/jpeg", "image/jpg"}
MAX_PIXELS = 4096 * 4096
CONFIG_PREFIX = (
    "ClientError: Unable to initialize the algorithm. Failed to validate input data "
    "configuration. (caused by ValidationError)\n\nCaused by: "
)


class DataError(ValueError):
    """Input data the algorithm refuses (the message is the job's FailureReason)."""


@dataclass
class Split:
    """One split in memory: uint8 images [N, C, H, W] and integer labels [N]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def channel_content_type(input_data_config: dict[str, dict[str, str]]) -> str:
    """The training content type: the train channel's ContentType, RecordIO by default."""
    for required in ("train", "validation"):
        if required not in input_data_config:
            raise DataError(f"{CONFIG_PREFIX}'{required}' is a required property")
    media = _media_type(input_data_config["train"].get("ContentType")) or RECORDIO
    other = _media_type(input_data_config["validation"].get("ContentType")) or RECORDIO
    kinds = {
        RECORDIO if m == RECORDIO else IMAGE if m in IMAGE_CONTENT_TYPES else m
        for m in (media, other)
    }
    unknown = kinds - {RECORDIO, IMAGE}
    if unknown:
        raise DataError(
            f"{CONFIG_PREFIX}'{sorted(unknown)[0]}' is not one of "
            f"['{RECORDIO}', '{IMAGE}', 'image/png', 'image/jpeg']"
        )
    if len(kinds) > 1:
        raise DataError(
            "ClientError: the train and validation channels must have the same content type."
        )
    return kinds.pop()


def _files(folder: Path, suffix: str) -> list[Path]:
    return sorted(p for p in folder.rglob(f"*{suffix}") if p.is_file() and not p.is_symlink())


def _label(text: str, where: str, num_classes: int) -> int:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"ClientError: {where}: label {text!r} is not a number.") from None
    if value != int(value) or not 0 <= value < num_classes:
        raise DataError(
            f"ClientError: {where}: label {text} is out of range; labels must be integers in "
            f"[0, num_classes - 1] = [0, {num_classes - 1}]."
        )
    return int(value)


def _inside(root: Path, relative: str, where: str) -> Path:
    path = (root / relative).resolve()
    if Path(relative).is_absolute() or not path.is_relative_to(root.resolve()):
        raise DataError(f"ClientError: {where}: path {relative!r} is outside the channel.")
    if not path.is_file():
        raise DataError(f"ClientError: {where}: image {relative!r} not found in the channel.")
    return path


def read_lst(paths: Iterable[Path], num_classes: int) -> list[tuple[int, str, str]]:
    """(label, relative path, where) for every line of the .lst files."""
    entries = []
    for lst in paths:
        text = lst.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{lst.name} line {number}"
            fields = line.rstrip("\r").split("\t")
            if len(fields) < 3:
                raise DataError(
                    f"ClientError: {where}: a .lst line is index<TAB>label<TAB>path; "
                    f"got {len(fields)} tab-separated field(s)."
                )
            if len(fields) > 3:
                raise DataError(
                    f"ClientError: {where}: several labels per image need multi_label=1, "
                    "which sagemaker-local does not support."
                )
            entries.append((_label(fields[1], where, num_classes), fields[2], where))
    return entries


def _decode(data: bytes, shape: tuple[int, int, int], resize: int | None, where: str) -> np.ndarray:
    """Encoded image bytes -> uint8 [C, H, W] at the image shape."""
    channels, height, width = shape
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise DataError(
                    f"ClientError: {where}: image of {image.width}x{image.height} "
                    "pixels is too large."
                )
            picture = ImageOps.exif_transpose(image).convert("RGB" if channels == 3 else "L")
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"ClientError: {where}: not a decodable image ({exc}).") from exc
    if resize:
        scale = resize / min(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.BILINEAR)
    if picture.size != (width, height):
        if resize and picture.width >= width and picture.height >= height:
            left, top = (picture.width - width) // 2, (picture.height - height) // 2
            picture = picture.crop((left, top, left + width, top + height))
        else:
            picture = picture.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(picture, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _stack(items: list[tuple[int, np.ndarray]], channel: str) -> Split:
    if not items:
        raise DataError(f"ClientError: channel {channel} holds no images.")
    images = torch.from_numpy(np.stack([array for _, array in items]))
    labels = torch.tensor([label for label, _ in items], dtype=torch.long)
    return Split(images, labels)


def _image_items(
    channel_dir: Path,
    lst_dir: Path | None,
    num_classes: int,
    shape: tuple[int, int, int],
    resize: int | None,
    channel: str,
) -> Iterator[tuple[int, np.ndarray]]:
    lists = _files(lst_dir, ".lst") if lst_dir is not None and lst_dir.is_dir() else []
    if not lists:
        lists = _files(channel_dir, ".lst")
    if not lists:
        raise DataError(
            f"ClientError: no .lst file for channel {channel}: give a {channel}_lst channel or "
            f"put the .lst file in the {channel} channel."
        )
    for label, relative, where in read_lst(lists, num_classes):
        path = _inside(channel_dir, relative, where)
        yield label, _decode(path.read_bytes(), shape, resize, f"{where} ({relative})")


def _recordio_items(
    channel_dir: Path,
    num_classes: int,
    shape: tuple[int, int, int],
    resize: int | None,
    channel: str,
) -> Iterator[tuple[int, np.ndarray]]:
    files = _files(channel_dir, ".rec")
    if not files:
        raise DataError(f"ClientError: no .rec file in channel {channel}.")
    for rec in files:
        with rec.open("rb") as stream:
            try:
                for index, payload in enumerate(read_records(stream)):
                    where = f"{rec.name} record {index}"
                    record = unpack_image_record(payload)
                    if len(record.labels) != 1:
                        raise DataError(
                            f"ClientError: {where}: several labels per image need "
                            "multi_label=1, which sagemaker-local does not support."
                        )
                    label = _label(repr(record.labels[0]), where, num_classes)
                    yield label, _decode(record.image, shape, resize, where)
            except RecordIOError as exc:
                raise DataError(f"ClientError: {rec.name}: {exc}") from exc


def load_split(
    data_dir: Path,
    channel: str,
    content_type: str,
    num_classes: int,
    shape: tuple[int, int, int],
    resize: int | None = None,
) -> Split:
    """One split (`train` or `validation`) from its channel folder(s)."""
    channel_dir = data_dir / channel
    if not channel_dir.is_dir():
        raise DataError(f"{CONFIG_PREFIX}'{channel}' is a required property")
    if content_type == RECORDIO:
        items = _recordio_items(channel_dir, num_classes, shape, resize, channel)
    else:
        items = _image_items(
            channel_dir, data_dir / f"{channel}_lst", num_classes, shape, resize, channel
        )
    return _stack(list(items), channel)


def read_input_data_config(config_dir: Path) -> dict[str, dict[str, str]]:
    """`inputdataconfig.json` (channel -> its settings)."""
    path = config_dir / "inputdataconfig.json"
    return dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else {}
