"""Picture payloads to RGB arrays and back. Runs on a thread pool: Pillow releases the GIL while
it decodes and encodes, so codec work overlaps the model instead of blocking the event loop."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from streaming.errors import ErrorCode, StreamError

_PIL_FORMATS = {"jpeg": "JPEG", "webp": "WEBP"}


def decode_image(fmt: str, payload: bytes | memoryview, width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8 RGB; StreamError(bad_image) when the payload is not that picture."""
    if fmt == "rgb24":
        if len(payload) != width * height * 3:
            raise StreamError(ErrorCode.BAD_HEADER, f"rgb24 payload is {len(payload)} bytes; {width}x{height} needs {width * height * 3}")
        return np.frombuffer(payload, dtype=np.uint8).reshape(height, width, 3).copy()
    try:
        with Image.open(io.BytesIO(payload)) as picture:
            if picture.format != _PIL_FORMATS[fmt]:
                raise StreamError(ErrorCode.BAD_IMAGE, f"payload is {picture.format or 'not an image'}, header says {fmt}")
            # The size is known before decoding: refuse a mismatch before spending time on it.
            if picture.size != (width, height):
                raise StreamError(ErrorCode.BAD_IMAGE, f"picture is {picture.size[0]}x{picture.size[1]}, header says {width}x{height}")
            return np.array(picture.convert("RGB"))  # a writable copy: pipelines may work in place
    except UnidentifiedImageError:
        raise StreamError(ErrorCode.BAD_IMAGE, f"payload is not a {fmt} picture") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise StreamError(ErrorCode.BAD_IMAGE, f"{fmt} payload does not decode: {err}") from None


def encode_image(image: np.ndarray, fmt: str, quality: int = 85) -> bytes:
    if fmt == "rgb24":
        return np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    out = io.BytesIO()
    # WebP's fastest method: its slower ones cost several frame intervals at 512x512.
    extra = {"method": 0} if fmt == "webp" else {}
    Image.fromarray(image).save(out, format=_PIL_FORMATS[fmt], quality=quality, **extra)
    return out.getvalue()
