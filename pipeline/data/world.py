"""ShapesEdit: the procedural image world with exact ground truth (DESIGN.md §4).

Conventions (this module owns them):

- Canvas: ``size``x``size`` RGB uint8 (default 32), split into a 2x2 grid of cells. Cells are
  indexed row-major: 0 top left, 1 top right, 2 bottom left, 3 bottom right; row = cell // 2,
  col = cell % 2. `cell_box` gives a cell's pixel box. A cell is empty (None) or holds one `Obj`
  (a shape of `SHAPES` in a colour of `COLORS`); a scene has a background of `BACKGROUNDS` and a
  style. Generated scenes hold 1 to 3 objects.
- Geometry: every shape lies inside its cell with a margin of size/16 px, so a change to one
  cell never touches pixels outside its `cell_box`. circle = disk, square = filled square,
  triangle = filled upward triangle (apex at the top).
- Styles: ``plain`` flat colours; ``invert`` 255 - rgb; ``grayscale`` luminance
  0.299R + 0.587G + 0.114B on all channels; ``outline`` each object as a ~size/16 px outline in
  its colour; ``real`` (the realism mode) x4 supersampled anti-aliased edges, a soft radial
  shading over each object and a fixed low-amplitude texture (its seed is a constant, so
  rendering stays a pure function of the scene).
- Palette: object luminances are pairwise >= 25 apart and >= 25 from every background's
  (the grayscale style stays exactly parseable); objects are >= 100 from backgrounds in RGB, and
  an inverted object colour is >= 60 from every plain one (invert stays tellable from plain).
- Spec of a T2I prompt: ``{"category": c, "objects": [desc, ...], ...}`` where a desc is
  ``{"shape": s}`` plus ``"color"`` only if the prompt states it; any spec may carry
  ``"background"``. Rules (`check_spec`):
  single:      exactly one object in the scene, matching objects[0];
  two:         exactly two objects, matching the two descs one-to-one;
  count:       exactly spec["count"] objects match objects[0] (a shape; others may be present);
  colour:      some object matches objects[0] (shape and colour);
  position:    some object matching objects[0] is spec["relation"] ("left of", "right of",
               "above", "below") another matching objects[1]: left of = smaller col, above =
               smaller row;
  colour_attr: two distinct objects match the two descs.
- Samples: a pure function of (bucket, category, seed) through `random.Random(seed)`. Split and
  bucket seed ranges are disjoint (`SPLIT_BASE` + `BUCKET_BASE` + index); the `reference` split is
  never curated: the evaluator renders it as KID's and FID's real set, disjoint from every test target. Realism samples are T2I
  samples rendered in style ``real``. Local edits change exactly one cell of a plain source and
  refer to the object by position, or by attributes only when those are unique in the source.
"""
from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass, replace

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
CATEGORIES = {"t2i": T2I_CATEGORIES, "local_edit": LOCAL_EDIT_CATEGORIES,
              "global_edit": GLOBAL_EDIT_CATEGORIES, "realism": T2I_CATEGORIES}
SPLIT_BASE = {"train": 0, "test": 10**9, "reference": 2 * 10**9}  # reference: KID/FID's real set
BUCKET_BASE = {"t2i": 0, "local_edit": 10**8, "global_edit": 2 * 10**8, "realism": 3 * 10**8}
LUMA = np.array([0.299, 0.587, 0.114])

_SUPERSAMPLE = 4  # real mode: anti-aliasing by rendering at x4 and box-downsampling
_SHADE = 0.12  # real mode: +-12% brightness keeps every colour recognisable
_TEXTURE_STD = 3.0  # real mode: grain in grey levels, well under the palette margins
_TEXTURE_SEED = 20240606  # fixed, so the texture is the same for every scene
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


# ----------------------------------------------------------------------------- rendering

def cell_box(cell: int, size: int = 32) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) pixel box of a cell."""
    if cell not in range(4):
        raise ValueError(f"cell must be 0..3, got {cell!r}")
    half, (row, col) = size // 2, divmod(cell, 2)
    return row * half, (row + 1) * half, col * half, (col + 1) * half


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


# ----------------------------------------------------------------------------- text and specs

def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def describe(scene: Scene) -> str:
    """Full caption: every object with colour and position, the background and the style."""
    parts = [f"a {o.color} {o.shape} in the {POSITIONS[i]}" for i, o in scene.objects()]
    objs = _join(parts) if parts else "no objects"
    return f"{objs} on a {scene.background} background, {_STYLE_WORDS[scene.style]}"


def _matches(obj: Obj, desc: dict) -> bool:
    return obj.shape == desc["shape"] and desc.get("color", obj.color) == obj.color


def _relation_holds(a: int, b: int, relation: str) -> bool:
    (ra, ca), (rb, cb) = divmod(a, 2), divmod(b, 2)
    return {"left of": ca < cb, "right of": ca > cb, "above": ra < rb, "below": ra > rb}[relation]


def check_spec(spec: dict, scene: Scene) -> bool:
    """GenEval-style rule: does the scene satisfy the prompt's spec (module docstring)?"""
    cat, descs, objs = spec["category"], spec["objects"], scene.objects()
    if "background" in spec and spec["background"] != scene.background:
        return False
    # Pairs of distinct objects (i, j) matching descs[0] and descs[1] (two, position, colour_attr).
    pairs = [(i, j) for (i, a), (j, b) in itertools.permutations(objs, 2)
             if _matches(a, descs[0]) and len(descs) > 1 and _matches(b, descs[1])]
    if cat == "single":
        return len(objs) == 1 and _matches(objs[0][1], descs[0])
    if cat == "two":
        return len(objs) == 2 and bool(pairs)
    if cat == "count":
        return sum(_matches(o, descs[0]) for _, o in objs) == spec["count"]
    if cat == "colour":
        return any(_matches(o, descs[0]) for _, o in objs)
    if cat == "position":
        return any(_relation_holds(i, j, spec["relation"]) for i, j in pairs)
    if cat == "colour_attr":
        return bool(pairs)
    raise ValueError(f"unknown spec category {cat!r}; expected one of {list(T2I_CATEGORIES)}")


# ----------------------------------------------------------------------------- T2I prompts

def _obj(rng: random.Random, shapes=SHAPES) -> Obj:
    return Obj(rng.choice(shapes), rng.choice(list(COLORS)))


def _place(rng: random.Random, objs: list[Obj]) -> Scene:
    cells = [None] * 4
    for cell, obj in zip(rng.sample(range(4), len(objs)), objs):
        cells[cell] = obj
    return Scene(tuple(cells), rng.choice(list(BACKGROUNDS)))


def _name(d: dict) -> str:
    return f"{d['color']} {d['shape']}" if "color" in d else d["shape"]


def _desc(obj: Obj, colour: bool) -> dict:
    return {"shape": obj.shape, "color": obj.color} if colour else {"shape": obj.shape}


def _t2i_single(rng: random.Random):
    scene = _place(rng, [_obj(rng)])
    descs = [_desc(scene.objects()[0][1], rng.random() < 0.7)]  # colour often left unstated
    return scene, descs, {}, ["a {a}", "an image of a {a}", "there is one {a}", "a single {a}"]


def _t2i_two(rng: random.Random):
    scene = _place(rng, [_obj(rng, (s,)) for s in rng.sample(SHAPES, 2)])
    return scene, [_desc(o, False) for _, o in scene.objects()], {}, [
        "a {a} and a {b}", "an image of a {a} and a {b}", "two shapes, a {a} and a {b}",
        "there is a {a} and a {b}"]


def _t2i_count(rng: random.Random):
    shape, n = rng.choice(SHAPES), rng.randint(1, 3)
    others = tuple(s for s in SHAPES if s != shape)  # unmentioned objects of other shapes
    scene = _place(rng, [_obj(rng, (shape,)) for _ in range(n)]
                   + [_obj(rng, others) for _ in range(rng.randint(0, 3 - n))])
    word, noun = ("one", "two", "three")[n - 1], shape + "s" * (n > 1)
    return scene, [{"shape": shape}], {"count": n}, [
        f"{word} {noun}", f"an image of {word} {noun}", f"exactly {n} {noun}",
        f"there {'is' if n == 1 else 'are'} exactly {word} {noun}"]


def _t2i_colour(rng: random.Random):
    scene = _place(rng, [_obj(rng) for _ in range(rng.randint(1, 3))])
    o = rng.choice(scene.objects())[1]
    return scene, [_desc(o, True)], {}, [
        "a {a}", "an image with a {a}", f"a {o.shape} that is {o.color}",
        f"a {o.shape} coloured {o.color}"]


def _t2i_position(rng: random.Random):
    scene = _place(rng, [_obj(rng) for _ in range(rng.randint(2, 3))])
    (i, a), (j, b) = rng.sample(scene.objects(), 2)
    relation = rng.choice([r for r in RELATIONS if _relation_holds(i, j, r)])
    colour = rng.random() < 0.5
    rel = {"left of": "to the left of", "right of": "to the right of"}.get(relation, relation)
    return scene, [_desc(a, colour), _desc(b, colour)], {"relation": relation}, [
        f"a {{a}} {rel} a {{b}}", f"an image of a {{a}} {rel} a {{b}}",
        f"there is a {{a}} {rel} a {{b}}"]


def _t2i_colour_attr(rng: random.Random):
    a, b = [_obj(rng, (s,)) for s in rng.sample(SHAPES, 2)]
    scene = _place(rng, [a, b] + [_obj(rng) for _ in range(rng.randint(0, 1))])
    return scene, [_desc(a, True), _desc(b, True)], {}, [
        "a {a} and a {b}", "an image of a {a} and a {b}", "there is a {a} and a {b}",
        f"a {a.shape} in {a.color} and a {b.shape} in {b.color}"]


# Each returns (scene, object descs, extra spec keys, prompt templates over {a} and {b}).
_T2I = {"single": _t2i_single, "two": _t2i_two, "count": _t2i_count, "colour": _t2i_colour,
        "position": _t2i_position, "colour_attr": _t2i_colour_attr}


def _t2i(rng: random.Random, category: str) -> tuple[Scene, str, dict]:
    """A scene, a prompt that describes it fully or partly, and the prompt's spec."""
    scene, descs, extra, templates = _T2I[category](rng)
    spec = {"category": category, "objects": descs, **extra}
    prompt = rng.choice(templates).format(a=_name(descs[0]), b=_name(descs[-1]))
    if rng.random() < 0.5:  # half of the prompts also pin the background
        spec["background"] = scene.background
        prompt += f" on a {scene.background} background"
    return scene, prompt, spec


# ----------------------------------------------------------------------------- edits

def edited_cells(source: Scene, target: Scene) -> list[int]:
    """Indices of the cells whose content differs between two scenes."""
    return [i for i in range(4) if source.cells[i] != target.cells[i]]


def _reference(rng: random.Random, scene: Scene, cell: int) -> str:
    """How an edit names the object in `cell`: by position, or by attributes unique in the scene."""
    o, pos = scene.cells[cell], POSITIONS[cell]
    others = [p for i, p in scene.objects() if i != cell]
    by_attr = [f"{o.color} {o.shape}"] * all(p != o for p in others)
    by_attr += [o.shape] * all(p.shape != o.shape for p in others)
    by_attr += [f"{o.color} shape"] * all(p.color != o.color for p in others)
    by_pos = [f"object in the {pos}", f"shape in the {pos}", f"{o.shape} at the {pos}"]
    return rng.choice(by_attr if by_attr and rng.random() < 0.5 else by_pos)


def _local_edit(rng: random.Random, category: str) -> tuple[Scene, Scene, str]:
    """Plain source, target with exactly one cell changed, and the instruction."""
    lo, hi = {"subject_add": (1, 2), "subject_remove": (2, 3)}.get(category, (1, 3))
    source = _place(rng, [_obj(rng) for _ in range(rng.randint(lo, hi))])
    if category == "subject_add":
        cell = rng.choice([i for i in range(4) if source.cells[i] is None])
        new = _obj(rng)
        what, pos = f"{new.color} {new.shape}", POSITIONS[cell]
        templates = [f"add a {what} in the {pos}", f"put a {what} in the {pos} cell",
                     f"place a {what} at the {pos}", f"draw a {what} in the {pos} corner"]
    else:
        cell, old = rng.choice(source.objects())
        ref = _reference(rng, source, cell)
        if category == "subject_replace":
            new = Obj(rng.choice([s for s in SHAPES if s != old.shape]), old.color)
            to = new.shape
            templates = [f"replace the {ref} with a {to}", f"make the {ref} a {to}",
                         f"turn the {ref} into a {to}", f"change the {ref} into a {to}"]
        elif category == "subject_remove":
            new = None
            templates = [f"remove the {ref}", f"delete the {ref}", f"erase the {ref}",
                         f"take away the {ref}"]
        elif category == "colour_alter":
            new = Obj(old.shape, rng.choice([c for c in COLORS if c != old.color]))
            templates = [f"make the {ref} {new.color}", f"paint the {ref} {new.color}",
                         f"change the colour of the {ref} to {new.color}",
                         f"recolour the {ref} {new.color}"]
        else:
            raise ValueError(f"unknown local edit category {category!r}")
    cells = list(source.cells)
    cells[cell] = new
    return source, replace(source, cells=tuple(cells)), rng.choice(templates)


_STYLE_TEMPLATES = {
    "invert": ["invert the colours", "invert the image", "make it a colour negative",
               "turn the picture into its negative"],
    "grayscale": ["make it grayscale", "convert the image to grayscale", "remove all colour",
                  "desaturate the picture"],
    "outline": ["draw the shapes as outlines", "turn the shapes into outlines",
                "show only the outlines of the shapes", "make the shapes hollow"],
}


def _global_edit(rng: random.Random, category: str) -> tuple[Scene, Scene, str]:
    """Plain source, target with a new background or style (cells unchanged), instruction."""
    source = _place(rng, [_obj(rng) for _ in range(rng.randint(1, 3))])
    if category == "background_change":
        bg = rng.choice([b for b in BACKGROUNDS if b != source.background])
        templates = [f"change the background to {bg}", f"make the background {bg}",
                     f"use a {bg} background", f"set the background colour to {bg}",
                     f"replace the {source.background} background with a {bg} one"]
        return source, replace(source, background=bg), rng.choice(templates)
    if category == "style_change":
        style = rng.choice(EDIT_STYLES)
        return source, replace(source, style=style), rng.choice(_STYLE_TEMPLATES[style])
    raise ValueError(f"unknown global edit category {category!r}")


# ----------------------------------------------------------------------------- samples

@dataclass(frozen=True)
class Sample:
    """One training/test example: prompt or instruction, scenes, spec and seed."""
    key: str
    task: str
    category: str
    prompt: str
    source: Scene | None
    target: Scene
    spec: dict | None
    seed: int

    def __post_init__(self):
        _check_name("task", self.task, TASKS)
        _check_name(f"category of task {self.task!r}", self.category, CATEGORIES[self.task])
        if "." in self.key:  # webdataset splits keys at the first dot
            raise ValueError(f"sample key must not contain '.', got {self.key!r}")

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        d = {k: getattr(self, k) for k in ("key", "task", "category", "prompt", "spec", "seed")}
        d["source"] = None if self.source is None else self.source.to_dict()
        d["target"] = self.target.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Sample:
        """Inverse of `to_dict`; a bad key or name raises ValueError naming it."""
        _check_keys("Sample", d, {"key", "task", "category", "prompt", "source", "target",
                                  "spec", "seed"})
        source = None if d["source"] is None else Scene.from_dict(d["source"])
        return cls(d["key"], d["task"], d["category"], d["prompt"], source,
                   Scene.from_dict(d["target"]), d["spec"], d["seed"])


def make_sample(bucket: str, category: str, seed: int, key: str = "") -> Sample:
    """The sample of a bucket and category drawn from `seed`; a pure function of its arguments."""
    _check_name("bucket", bucket, BUCKETS)
    _check_name(f"category of bucket {bucket!r}", category, CATEGORIES[bucket])
    rng = random.Random(seed)
    if bucket in ("t2i", "realism"):
        scene, prompt, spec = _t2i(rng, category)
        if bucket == "realism":  # same prompt and scene, only the rendering mode differs
            scene = replace(scene, style="real")
        return Sample(key, BUCKET_TASK[bucket], category, prompt, None, scene, spec, seed)
    edit = _local_edit if bucket == "local_edit" else _global_edit
    source, target, prompt = edit(rng, category)
    return Sample(key, bucket, category, prompt, source, target, None, seed)


def make_bucket(bucket: str, split: str, n: int) -> list[Sample]:
    """n samples of a bucket and split, categories cycled evenly, seeds disjoint across both."""
    _check_name("bucket", bucket, BUCKETS)
    _check_name("split", split, SPLIT_BASE)
    if not 0 <= n <= 10**8:  # beyond 10**8 the seed ranges of buckets would overlap
        raise ValueError(f"n must be in 0..10**8, got {n}")
    cats, base = CATEGORIES[bucket], SPLIT_BASE[split] + BUCKET_BASE[bucket]
    return [make_sample(bucket, cats[i % len(cats)], base + i, f"{bucket}-{split}-{i:06d}")
            for i in range(n)]
