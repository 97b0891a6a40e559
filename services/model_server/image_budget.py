"""image_budget: refuse an image whose decoded size is out of proportion, before decoding it.

A compressed image claims its canvas in its header: a 49 KB PNG of 4096x4096 decodes to 64 MiB of
RGBA, and a model's `input_fn` typically makes several copies (about 320 MB per request
measured). The header is read (cheap, no pixel data) and the request answered 400 when the
canvas is above the pixel budget or its decoded bytes above the byte budget.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

DEFAULT_MAX_PIXELS = 2048 * 2048
DEFAULT_MAX_BYTES = 32 << 20
IMAGE_CONTENT_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp", "application/x-image"}
)
# Bytes per pixel of PIL's modes; modes not listed count as 4.
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "I;16": 2, "RGB": 3, "I": 4, "F": 4}


@dataclass(frozen=True)
class ImageBudget:
    """How large a request image may decode (0 turns a limit off)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES

    def refusal(self, body: bytes, content_type: str) -> str | None:
        """Why this image is over budget, or None (also for bodies that are not images)."""
        if content_type not in IMAGE_CONTENT_TYPES or not (self.max_pixels or self.max_bytes):
            return None
        from PIL import Image  # only the workers decode images

        try:
            with Image.open(io.BytesIO(body)) as image:  # reads the header, not the pixels
                width, height, mode = image.width, image.height, image.mode
        except Exception:  # not an image, or a bomb PIL refuses itself: input_fn says why
            return None
        pixels = width * height
        if self.max_pixels and pixels > self.max_pixels:
            return (
                f"image of {width}x{height} = {pixels} pixels is over the decode budget of "
                f"{self.max_pixels} pixels (MODEL_SERVER_MAX_IMAGE_PIXELS)"
            )
        decoded = pixels * _BYTES_PER_PIXEL.get(mode, 4)
        if self.max_bytes and decoded > self.max_bytes:
            return (
                f"image of {width}x{height} ({mode}) decodes to {decoded} bytes, over the decode "
                f"budget of {self.max_bytes} bytes (MODEL_SERVER_MAX_IMAGE_BYTES)"
            )
        return None
