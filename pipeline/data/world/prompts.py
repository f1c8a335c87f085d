"""Captions, T2I prompts and their specs, and the rule that checks a scene against a spec."""
from __future__ import annotations

import itertools
import random

from pipeline.data.world.scene import (BACKGROUNDS, COLORS, Obj, POSITIONS, RELATIONS, SHAPES, Scene,
                                       T2I_CATEGORIES, _STYLE_WORDS)


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
