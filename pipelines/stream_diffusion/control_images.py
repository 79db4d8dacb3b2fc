"""Image prompts by content: an uploaded picture is kept once, under its SHA-256, and a stream's
parameters name it by that digest instead of carrying its bytes.

So the parameters in force stay small (they are echoed in every ack, stats message and REST
reply), the same picture sent twice is decoded and embedded once, and a client can name a
picture it uploaded earlier. The store is bounded: the oldest pictures go first; a stream that
already embedded a picture keeps its tokens (pipelines/stream_diffusion/control.py) even when
the picture itself is gone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import threading
from collections import OrderedDict

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PICTURES = 32
MAX_SIDE = 4096
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
DATA_URL = re.compile(r"^data:image/(png|jpeg|webp);base64,", re.IGNORECASE)

_pictures: OrderedDict[str, np.ndarray] = OrderedDict()
_lock = threading.Lock()


def store_data_url(url: str) -> str:
    """Decode a `data:image/...;base64,` picture and keep it; returns its `sha256:` name.
    ValueError says what is wrong with it."""
    match = DATA_URL.match(url)
    if match is None:
        raise ValueError("an image prompt is a data:image/png|jpeg|webp;base64,... URL, a sha256: name of an uploaded "
                         "picture, or 'input'")
    try:
        payload = base64.b64decode(url[match.end():], validate=True)
    except binascii.Error:
        raise ValueError("the image prompt's base64 does not decode") from None
    return store_picture(payload)


def store_picture(payload: bytes) -> str:
    """Keep an encoded picture (PNG, JPEG or WebP); returns its `sha256:` name."""
    name = "sha256:" + hashlib.sha256(payload).hexdigest()
    with _lock:
        if name in _pictures:
            _pictures.move_to_end(name)
            return name
    try:
        with Image.open(io.BytesIO(payload)) as picture:
            if max(picture.size) > MAX_SIDE:
                raise ValueError(f"the image prompt is {picture.size[0]}x{picture.size[1]}; at most {MAX_SIDE} pixels a side")
            pixels = np.array(picture.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"the image prompt is not a picture that decodes ({err})") from None
    with _lock:
        _pictures[name] = pixels
        while len(_pictures) > MAX_PICTURES:
            _pictures.popitem(last=False)
    return name


def picture(name: str) -> np.ndarray | None:
    """The picture kept under `name`, (H, W, 3) uint8 RGB, or None when it is not (or no longer) here."""
    with _lock:
        return _pictures.get(name)
