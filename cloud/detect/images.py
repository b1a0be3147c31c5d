"""A frame's JPEG as pixels, refused with a reason when it is not what it declares.

Pillow reads the header first (format and size, no pixels), so an image whose dimensions would take
gigabytes is refused before anything is allocated (``too_large``); then the pixels are decoded in
full, so a truncated file is refused (``bad_image``), never half-grey boxes.
"""

from __future__ import annotations

import io

import numpy as np

from contracts import Image, Reason


class ImageRefused(ValueError):
    """The image cannot be detected on: ``reason`` (a :class:`~contracts.Reason`) and a sentence."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def decode_jpeg(image: Image, max_pixels: int) -> np.ndarray:
    """The pixels of ``image`` (``H x W x 3``, BGR uint8, as OpenCV holds them)."""
    from PIL import Image as Pil
    from PIL import UnidentifiedImageError

    try:
        opened = Pil.open(io.BytesIO(image.data))
    except Pil.DecompressionBombError as exc:
        raise ImageRefused(Reason.TOO_LARGE, str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageRefused(Reason.BAD_IMAGE, "not an image (no format Pillow knows)") from exc
    except (OSError, ValueError) as exc:
        raise ImageRefused(Reason.BAD_IMAGE, f"not an image: {exc}") from exc
    with opened:
        width, height = opened.size
        if opened.format != "JPEG":
            raise ImageRefused(Reason.BAD_IMAGE, f"a {opened.format} image, not a JPEG")
        if width * height > max_pixels:
            raise ImageRefused(Reason.TOO_LARGE, f"{width}x{height} pixels, over max_pixels {max_pixels}")
        if (width, height) != (image.width, image.height):
            raise ImageRefused(Reason.BAD_IMAGE, f"declared {image.width}x{image.height}, the JPEG is {width}x{height}")
        try:
            rgb = opened.convert("RGB")  # decodes every pixel: a truncated file raises here
        except (OSError, ValueError) as exc:
            raise ImageRefused(Reason.BAD_IMAGE, f"the JPEG does not decode: {exc}") from exc
    return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])
