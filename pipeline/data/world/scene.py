"""The world's vocabulary (shapes, colours, backgrounds, styles, buckets, categories) and its scenes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


SHAPES = ("circle", "square", "triangle")
# Chosen by a small search for the palette margins stated in the docstring (tests pin them).
COLORS = {"red": (190, 10, 10), "green": (40, 175, 50), "blue": (40, 90, 250),
          "yellow": (235, 255, 80), "cyan": (130, 235, 230), "pink": (255, 130, 210)}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (150, 150, 150),
               "navy": (10, 20, 100)}
STYLES = ("plain", "invert", "grayscale", "outline", "real")
EDIT_STYLES = ("invert", "grayscale", "outline")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
RELATIONS = ("left of", "right of", "above", "below")
T2I_CATEGORIES = ("single", "two", "count", "colour", "position", "colour_attr")
LOCAL_EDIT_CATEGORIES = ("subject_add", "subject_replace", "subject_remove", "colour_alter")
GLOBAL_EDIT_CATEGORIES = ("background_change", "style_change")
EDIT_CATEGORIES = LOCAL_EDIT_CATEGORIES + GLOBAL_EDIT_CATEGORIES
TASKS = ("t2i", "local_edit", "global_edit")
BUCKETS = ("t2i", "local_edit", "global_edit", "realism")
BUCKET_TASK = {"t2i": "t2i", "local_edit": "local_edit", "global_edit": "global_edit", "realism": "t2i"}
# The routes a teacher can have (`pipeline.core.teacher`): route name -> the buckets whose samples
# take it; params `routing.weights` and `settings.<s>.routes` name them (`pipeline.config` reads them here).
ROUTE_BUCKETS = {"t2i": ("t2i",), "edit": ("local_edit", "global_edit"), "local_edit": ("local_edit",),
                 "global_edit": ("global_edit",)}
CATEGORIES = {"t2i": T2I_CATEGORIES, "local_edit": LOCAL_EDIT_CATEGORIES,
              "global_edit": GLOBAL_EDIT_CATEGORIES, "realism": T2I_CATEGORIES}
SPLIT_BASE = {"train": 0, "test": 10**9, "reference": 2 * 10**9}  # reference: KID/FID's real set
BUCKET_BASE = {"t2i": 0, "local_edit": 10**8, "global_edit": 2 * 10**8, "realism": 3 * 10**8}
LUMA = np.array([0.299, 0.587, 0.114])

_STYLE_WORDS = {"plain": "flat colours", "invert": "inverted colours", "grayscale": "in grayscale",
                "outline": "drawn as outlines", "real": "realistic rendering"}


def _check_name(kind: str, value, known) -> None:
    if value not in known:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {sorted(known)}")


@dataclass(frozen=True)
class Obj:
    """One object: a shape in a colour."""
    shape: str
    color: str

    def __post_init__(self):
        _check_name("shape", self.shape, SHAPES)
        _check_name("color", self.color, COLORS)


@dataclass(frozen=True)
class Scene:
    """Four cells (row-major, None = empty), a background and a rendering style."""
    cells: tuple
    background: str
    style: str = "plain"

    def __post_init__(self):
        object.__setattr__(self, "cells", tuple(self.cells))
        if len(self.cells) != 4 or not all(c is None or isinstance(c, Obj) for c in self.cells):
            raise ValueError(f"cells must be 4 entries of Obj or None, got {self.cells!r}")
        _check_name("background", self.background, BACKGROUNDS)
        _check_name("style", self.style, STYLES)

    def objects(self) -> list[tuple[int, Obj]]:
        """The (cell, object) pairs of the occupied cells."""
        return [(i, o) for i, o in enumerate(self.cells) if o is not None]

    def to_dict(self) -> dict:
        """JSON-friendly form: cells as a list of {"shape", "color"} or None."""
        cells = [None if o is None else {"shape": o.shape, "color": o.color} for o in self.cells]
        return {"cells": cells, "background": self.background, "style": self.style}

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        """Inverse of `to_dict`; a bad key or name raises ValueError naming it."""
        _check_keys("Scene", d, {"cells", "background", "style"})
        if not isinstance(d["cells"], (list, tuple)) or len(d["cells"]) != 4:
            raise ValueError(f"Scene: 'cells' must be a list of 4, got {d['cells']!r}")
        cells = []
        for i, c in enumerate(d["cells"]):
            if c is not None:
                _check_keys(f"Scene cells[{i}]", c, {"shape", "color"})
                try:
                    c = Obj(c["shape"], c["color"])
                except ValueError as e:
                    raise ValueError(f"Scene cells[{i}]: {e}") from None
            cells.append(c)
        return cls(tuple(cells), d["background"], d["style"])


def _check_keys(what: str, d, keys: set) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"{what}: expected a dict, got {d!r}")
    if unknown := set(d) - keys:
        raise ValueError(f"{what}: unknown key(s) {sorted(unknown)}")
    if missing := keys - set(d):
        raise ValueError(f"{what}: missing key(s) {sorted(missing)}")


def cell_box(cell: int, size: int = 32) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) pixel box of a cell."""
    if cell not in range(4):
        raise ValueError(f"cell must be 0..3, got {cell!r}")
    half, (row, col) = size // 2, divmod(cell, 2)
    return row * half, (row + 1) * half, col * half, (col + 1) * half
