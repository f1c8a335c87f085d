"""Rendering a scene to pixels: shapes, styles, the realism mode."""
from __future__ import annotations

import functools

import numpy as np

from pipeline.data.world.scene import BACKGROUNDS, COLORS, LUMA, Scene, cell_box

_SUPERSAMPLE = 4  # real mode: anti-aliasing by rendering at x4 and box-downsampling
_SHADE = 0.12  # real mode: +-12% brightness keeps every colour recognisable
_TEXTURE_STD = 3.0  # real mode: grain in grey levels, well under the palette margins
_TEXTURE_SEED = 20240606  # fixed, so the texture is the same for every scene


@functools.lru_cache(maxsize=None)
def _shape_mask(shape: str, cell_px: int, scale: int) -> np.ndarray:
    """Boolean (cell_px*scale)^2 mask of a shape in its cell, sampled at sub-pixel centres."""
    c = (np.arange(cell_px * scale) + 0.5) / scale  # sample centres in cell pixel units
    y, x = np.meshgrid(c, c, indexing="ij")
    lo, hi, mid = cell_px / 8, cell_px * 7 / 8, cell_px / 2  # margin keeps shapes off the cell edge
    if shape == "circle":
        m = (y - mid) ** 2 + (x - mid) ** 2 <= ((hi - lo) / 2) ** 2
    elif shape == "square":
        m = (y >= lo) & (y <= hi) & (x >= lo) & (x <= hi)
    else:  # upward triangle: the half-width grows from 0 at the apex to (hi-lo)/2 at the base
        m = (y >= lo) & (y <= hi) & (np.abs(x - mid) <= (y - lo) / 2)
    m.flags.writeable = False
    return m


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary erosion by a 3x3 square, `steps` times."""
    for _ in range(steps):
        p, (h, w) = np.pad(mask, 1), mask.shape
        shifts = [p[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)]
        mask = np.logical_and.reduce(shifts)
    return mask


@functools.lru_cache(maxsize=None)
def _shading(cell_px: int, scale: int) -> np.ndarray:
    """Brightness factor over a cell: a soft highlight up-left of centre, darker away from it."""
    c = (np.arange(cell_px * scale) + 0.5) / scale
    y, x = np.meshgrid(c, c, indexing="ij")
    r = cell_px * 3 / 8
    light = cell_px / 2 - 0.3 * r
    d = np.hypot(y - light, x - light) / (2 * r)
    return 1 + _SHADE * (1 - 2 * np.clip(d, 0, 1))


@functools.lru_cache(maxsize=None)
def _texture(size: int) -> np.ndarray:
    """The fixed grain of the real mode (same for every scene)."""
    t = np.random.default_rng(_TEXTURE_SEED).normal(0, _TEXTURE_STD, (size, size, 1))
    t.flags.writeable = False
    return t


def _paint(scene: Scene, size: int, scale: int, outline: bool, shade: bool) -> np.ndarray:
    """Float (size*scale, size*scale, 3) image of the scene's flat colours."""
    n, half = size * scale, size // 2
    img = np.empty((n, n, 3))
    img[:] = BACKGROUNDS[scene.background]
    for cell, obj in scene.objects():
        mask = _shape_mask(obj.shape, half, scale)
        if outline:
            mask = mask & ~_erode(mask, max(1, round(size / 16)))
        y0, y1, x0, x1 = (v * scale for v in cell_box(cell, size))
        colour = np.array(COLORS[obj.color], float)
        tile = img[y0:y1, x0:x1]  # a view: writes land in img
        tile[mask] = colour * _shading(half, scale)[mask][:, None] if shade else colour
    return img


def render(scene: Scene, size: int = 32) -> np.ndarray:
    """(size, size, 3) uint8 image of the scene; pure and deterministic."""
    if size < 8 or size % 2:
        raise ValueError(f"size must be an even integer >= 8, got {size!r}")
    if scene.style == "real":
        k = _SUPERSAMPLE
        img = _paint(scene, size, k, outline=False, shade=True)
        img = img.reshape(size, k, size, k, 3).mean(axis=(1, 3)) + _texture(size)
    else:
        img = _paint(scene, size, 1, outline=scene.style == "outline", shade=False)
        if scene.style == "invert":
            img = 255 - img
        elif scene.style == "grayscale":
            img = np.repeat(img @ LUMA, 3).reshape(img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
