"""Reading an image for the tools, as 8-bit RGB, with one clear error for what cannot be read."""
from __future__ import annotations

import numpy as np
from PIL import Image, UnidentifiedImageError

#: the largest image the tools read, in pixels (PIL's own bomb limit is twice its MAX_IMAGE_PIXELS, ~179 M)
MAX_PIXELS = 100_000_000
#: integer modes PIL gives 16-bit images (a 16-bit greyscale PNG opens as "I" or "I;16")
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


class ImageError(ValueError):
    """A file the tools cannot read as an image, in one line."""


def open_rgb(path: str) -> Image.Image:
    """``path`` as an 8-bit RGB image. 16-bit images are scaled to 8 bits (``convert('RGB')`` alone clips every
    value above 255 to white); a float image or a larger one than ``MAX_PIXELS`` is refused."""
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(f"{path} is {img.width}x{img.height}: more than {MAX_PIXELS:,} pixels; "
                                 "resize it first")
            img.load()
            if img.mode in WIDE_MODES:
                arr = np.asarray(img, dtype=np.int64)
                top = 255 if arr.max(initial=0) <= 255 else 65535
                if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
                    raise ImageError(f"{path}: integer pixel values outside 0..65535 (mode {img.mode})")
                eight = np.round(arr * (255.0 / top)).astype(np.uint8)
                return Image.fromarray(eight, mode="L").convert("RGB")
            if img.mode == "F":
                raise ImageError(f"{path} holds floating-point pixels (mode F): save it as an 8- or 16-bit image")
            return img.convert("RGB")
    except Image.DecompressionBombError as err:
        raise ImageError(f"{path} is too large to read safely ({err})") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ImageError(f"{path} is not an image PIL can read ({type(err).__name__})") from None
