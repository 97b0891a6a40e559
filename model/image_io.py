"""Image requests as both serving scripts take them: content type, safe decoding, typed errors.

Shipped as `code/image_io.py` beside the `inference.py` of the project's model and of the
built-in image-classification algorithm, which run it by path; it needs only torch and Pillow.
- `decode_image(body, content_type, accepted, prepare)`: the upright `PIL.Image` of an image body
  whose media type is in `accepted`, passed through `prepare` (the script's mode conversion)
  while decoding errors are still caught. Raises `UnsupportedContentTypeError` or
  `InvalidImageError` (both ValueError, so a server answers 400).
- `normalised(picture, mean, std)`: its pixels as a [1, C, H, W] float tensor, `(x/255 - mean)/std`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Collection

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 4096 * 4096  # a small compressed body can claim a huge canvas; refuse before decoding


class UnsupportedContentTypeError(ValueError):
    """The request's content type is not an image type this model accepts."""


class InvalidImageError(ValueError):
    """The request body is not a decodable image."""


def media_type(header: str | None) -> str:
    """`image/png` of `Image/PNG; charset=binary` ("" for no header)."""
    return (header or "").split(";", 1)[0].strip().lower()


def decode_image(
    body: bytes | bytearray | memoryview,
    content_type: str,
    accepted: Collection[str],
    prepare: Callable[[Image.Image], Image.Image],
) -> Image.Image:
    """The body's image, upright (EXIF orientation applied), after `prepare`."""
    media = media_type(content_type)
    if media not in accepted:
        raise UnsupportedContentTypeError(
            f"content type {content_type!r} is not supported; send one of {sorted(accepted)}"
        )
    try:
        with Image.open(io.BytesIO(bytes(body))) as image:
            if image.width * image.height > MAX_PIXELS:
                raise InvalidImageError(
                    f"image of {image.width}x{image.height} pixels is too large"
                )
            # Pillow decodes lazily: a truncated body fails here, inside the guard.
            return prepare(ImageOps.exif_transpose(image))
    except InvalidImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        reason = "unknown image format" if isinstance(exc, UnidentifiedImageError) else exc
        raise InvalidImageError(
            f"request body is not a decodable image ({media}): {reason}"
        ) from exc


def normalised(picture: Image.Image, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The picture's pixels as a normalised [1, C, H, W] float tensor."""
    width, height = picture.size
    pixels = torch.frombuffer(bytearray(picture.tobytes()), dtype=torch.uint8)
    tensor = pixels.view(height, width, len(picture.getbands())).permute(2, 0, 1).unsqueeze(0)
    return (tensor.float() / 255 - mean) / std
