"""Reading an image someone gives the pipeline (an external CSV's, `pipeline.generate --image`) as
8-bit RGB, refusing what would be silently wrong: transparency (palette transparency included),
which RGB would drop; float pixels; and images too large to decode (checked from the header, before
decoding). 16-bit greyscale is scaled to 8 bits (PIL's `convert("RGB")` clips it: a 16-bit grey
of 50% would turn white)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

MAX_PIXELS = 4096 * 4096  # the largest image decoded: ~50 MB of RGB (the world's images are 32 x 32)
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")  # the greyscale modes PIL gives 16-bit PNGs


class ImageError(ValueError):
    """An image file the pipeline cannot take as it is; the message names the file."""


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of the image at `path`; an `ImageError` naming it when it cannot be one."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(f"{path}: {img.width}x{img.height} pixels, above the {MAX_PIXELS:,} this reads")
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                alpha = np.asarray(img.convert("RGBA"))[..., 3]
                if (alpha < 255).any():
                    raise ImageError(f"{path}: has transparent pixels ({(alpha < 255).mean():.0%}); flatten it "
                                     f"onto its background first (RGB would drop the transparency)")
            if img.mode in SIXTEEN_BIT:
                grey = np.rint(np.asarray(img).astype(np.float64) / 257.0).astype(np.uint8)  # 0..65535 -> 0..255
                return np.repeat(grey[..., None], 3, axis=-1)
            if img.mode in ("I", "F"):
                raise ImageError(f"{path}: {'32-bit integer' if img.mode == 'I' else 'float'} pixels (mode "
                                 f"{img.mode}); save it as an 8- or 16-bit image")
            return np.asarray(img.convert("RGB"))
    except ImageError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"{path}: cannot read it ({err})") from err
