"""Local and global edits: a source scene, its target and the instruction."""
from __future__ import annotations

import random
from dataclasses import replace

from pipeline.data.world.scene import BACKGROUNDS, COLORS, EDIT_STYLES, Obj, POSITIONS, SHAPES, Scene
from pipeline.data.world.prompts import _obj, _place


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
