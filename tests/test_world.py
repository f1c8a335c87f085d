"""ShapesEdit world: determinism, ground truth of every bucket, renderer, palette."""
import itertools
import json
import re
from dataclasses import replace

import numpy as np
import pytest

from pipeline.data import world as w
from pipeline.data.world import Obj, Sample, Scene, rendering

N = 240  # per bucket: every category many times, still well under a second to generate
RC, BS, GT = Obj("circle", "red"), Obj("square", "blue"), Obj("triangle", "green")


@pytest.fixture(scope="module")
def buckets():
    return {b: w.make_bucket(b, "train", N) for b in w.BUCKETS}


def scene(*cells, background="white", style="plain"):
    return Scene(tuple(cells), background, style)


def changed_box(a: np.ndarray, b: np.ndarray):
    """(y0, y1, x0, x1) bounding box of the pixels that differ, or None."""
    ys, xs = np.nonzero((a != b).any(axis=2))
    return None if ys.size == 0 else (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)


# ----------------------------------------------------------------------------- samples

def test_make_bucket_is_deterministic():
    for b in w.BUCKETS:
        first, second = w.make_bucket(b, "train", 24), w.make_bucket(b, "train", 24)
        assert first == second
        for s1, s2 in zip(first, second):
            assert w.render(s1.target).tobytes() == w.render(s2.target).tobytes()
    assert w.make_sample("local_edit", "subject_add", 7) == w.make_sample("local_edit",
                                                                          "subject_add", 7)
    assert w.make_sample("t2i", "two", 7) != w.make_sample("t2i", "two", 8)


def test_every_category_appears_evenly_with_keys_and_tasks():
    for b in w.BUCKETS:
        samples = w.make_bucket(b, "train", 24)
        cats = [s.category for s in samples]
        assert set(cats) == set(w.CATEGORIES[b])
        assert len({cats.count(c) for c in w.CATEGORIES[b]}) == 1  # cycled evenly
        assert [s.key for s in samples] == [f"{b}-train-{i:06d}" for i in range(24)]
        assert {s.task for s in samples} == {"t2i" if b == "realism" else b}


def test_seeds_are_disjoint_between_splits_and_buckets():
    seeds = {(b, sp): {s.seed for s in w.make_bucket(b, sp, 30)} for b in w.BUCKETS
             for sp in ("train", "test")}
    for (k1, s1), (k2, s2) in itertools.combinations(seeds.items(), 2):
        assert not s1 & s2, (k1, k2)
    assert min(seeds["t2i", "test"]) >= 10**9 > max(max(s) for (_, sp), s in seeds.items()
                                                    if sp == "train")
    with pytest.raises(ValueError):
        w.make_bucket("t2i", "train", 10**8 + 1)


def test_bad_bucket_split_or_category_names_raise():
    with pytest.raises(ValueError, match="nope"):
        w.make_bucket("nope", "train", 2)
    with pytest.raises(ValueError, match="val"):
        w.make_bucket("t2i", "val", 2)
    with pytest.raises(ValueError, match="subject_add"):
        w.make_sample("t2i", "subject_add", 0)


def test_round_trips_through_json(buckets):
    for samples in buckets.values():
        for s in samples:
            assert Sample.from_dict(json.loads(json.dumps(s.to_dict()))) == s
            assert Scene.from_dict(s.target.to_dict()) == s.target


def test_from_dict_names_the_bad_value_or_key():
    d = scene(RC, None, None, None).to_dict()
    d["cells"][0]["color"] = "purple"
    with pytest.raises(ValueError, match="purple"):
        Scene.from_dict(d)
    with pytest.raises(ValueError, match="mauve"):
        Scene.from_dict({**scene(None, None, None, None).to_dict(), "background": "mauve"})
    with pytest.raises(ValueError, match="colour"):
        Scene.from_dict({**scene(None, None, None, None).to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="hexagon"):
        Obj("hexagon", "red")
    with pytest.raises(ValueError, match="\\."):
        replace(w.make_sample("t2i", "single", 0), key="a.b")


# ----------------------------------------------------------------------------- T2I specs

def test_check_spec_holds_on_every_t2i_and_realism_target(buckets):
    for b in ("t2i", "realism"):
        for s in buckets[b]:
            assert s.source is None and s.spec["category"] == s.category
            assert check(s.spec, s.target), (s.prompt, s.spec, s.target)
            assert 1 <= len(s.target.objects()) <= 3
            assert s.target.style == ("real" if b == "realism" else "plain")


def check(spec, sc):
    return w.check_spec(json.loads(json.dumps(spec)), sc)  # the spec is used as stored (JSON)


def test_check_spec_fails_when_named_objects_or_background_change(buckets):
    for s in buckets["t2i"]:
        named = [i for i, o in s.target.objects()
                 if any(o.shape == d["shape"] and d.get("color", o.color) == o.color
                        for d in s.spec["objects"])]
        assert named, s.prompt
        cells = tuple(None if i in named else o for i, o in enumerate(s.target.cells))
        assert not check(s.spec, replace(s.target, cells=cells)), (s.prompt, s.target)
        if "background" in s.spec:
            other = next(b for b in w.BACKGROUNDS if b != s.target.background)
            assert not check(s.spec, replace(s.target, background=other))


def test_prompts_state_what_the_spec_records(buckets):
    for s in buckets["t2i"]:
        for d in s.spec["objects"]:
            assert d["shape"] in s.prompt and d.get("color", "") in s.prompt
        assert ("background" in s.spec) == ("background" in s.prompt)
        assert s.spec.get("background", "") in s.prompt


def test_every_category_has_several_paraphrases(buckets):
    vocab = re.compile(r"\b({})s?\b".format("|".join(
        [*w.COLORS, *w.BACKGROUNDS, *w.SHAPES, *w.POSITIONS, "one", "two", "three", r"\d"])))
    for b in ("t2i", "local_edit", "global_edit"):
        templates = {c: {vocab.sub("X", s.prompt).replace(" on a X background", "")
                         for s in buckets[b] if s.category == c} for c in w.CATEGORIES[b]}
        assert all(len(t) >= 3 for t in templates.values()), templates


@pytest.mark.parametrize("spec, good, bad", [
    ({"category": "single", "objects": [{"shape": "circle", "color": "red"}]},
     scene(RC, None, None, None), scene(RC, BS, None, None)),
    ({"category": "single", "objects": [{"shape": "circle"}]},
     scene(None, Obj("circle", "pink"), None, None), scene(None, BS, None, None)),
    ({"category": "two", "objects": [{"shape": "circle"}, {"shape": "square"}]},
     scene(RC, None, None, BS), scene(RC, None, GT, BS)),
    ({"category": "two", "objects": [{"shape": "circle"}, {"shape": "square"}]},
     scene(RC, None, None, BS), scene(RC, None, None, Obj("circle", "blue"))),
    ({"category": "count", "objects": [{"shape": "square"}], "count": 2},
     scene(BS, GT, BS, None), scene(BS, BS, BS, None)),
    ({"category": "count", "objects": [{"shape": "square"}], "count": 1},
     scene(BS, GT, RC, None), scene(GT, None, RC, None)),
    ({"category": "colour", "objects": [{"shape": "circle", "color": "red"}]},
     scene(BS, RC, None, None), scene(BS, Obj("circle", "blue"), Obj("square", "red"), None)),
    ({"category": "position", "objects": [{"shape": "circle"}, {"shape": "square"}],
      "relation": "left of"}, scene(RC, BS, None, None), scene(BS, RC, None, None)),
    ({"category": "position", "objects": [{"shape": "circle"}, {"shape": "square"}],
      "relation": "above"}, scene(None, RC, BS, None), scene(RC, BS, None, None)),
    ({"category": "position", "objects": [{"shape": "circle"}, {"shape": "square"}],
      "relation": "below"}, scene(BS, None, None, RC), scene(RC, None, None, BS)),
    ({"category": "position", "objects": [{"shape": "circle", "color": "red"},
                                          {"shape": "square"}], "relation": "right of"},
     scene(BS, RC, None, None), scene(BS, Obj("circle", "pink"), None, None)),
    ({"category": "colour_attr", "objects": [{"shape": "circle", "color": "red"},
                                             {"shape": "square", "color": "blue"}]},
     scene(RC, None, GT, BS), scene(Obj("circle", "blue"), None, None, Obj("square", "red"))),
    ({"category": "single", "objects": [{"shape": "circle"}], "background": "navy"},
     scene(RC, None, None, None, background="navy"), scene(RC, None, None, None)),
])
def test_check_spec_counter_examples(spec, good, bad):
    assert w.check_spec(spec, good)
    assert not w.check_spec(spec, bad)


# ----------------------------------------------------------------------------- edits

REF = re.compile(r"\bthe (?:({c}) )?({s}|object|shape)(?: (?:in|at) the ({p}))?\b".format(
    c="|".join(w.COLORS), s="|".join(w.SHAPES), p="|".join(w.POSITIONS)))


@pytest.mark.parametrize("size", [32, 48])
@pytest.mark.parametrize("style", ["plain", "outline", "real", "invert"])
def test_local_edits_change_one_cell_and_only_its_pixels(buckets, size, style):
    for s in buckets["local_edit"]:
        assert s.source.style == s.target.style == "plain" and s.spec is None
        (cell,) = w.edited_cells(s.source, s.target)
        src, tgt = (w.render(replace(x, style=style), size) for x in (s.source, s.target))
        y0, y1, x0, x1 = w.cell_box(cell, size)
        box = changed_box(src, tgt)
        assert box is not None, s.prompt  # the edit is visible
        assert y0 <= box[0] and box[1] <= y1 and x0 <= box[2] and box[3] <= x1, (s.prompt, box)


def test_local_edit_categories_do_what_they_say(buckets):
    for s in buckets["local_edit"]:
        (cell,) = w.edited_cells(s.source, s.target)
        old, new = s.source.cells[cell], s.target.cells[cell]
        assert s.source.background == s.target.background
        assert 1 <= len(s.source.objects()) <= 3 and 1 <= len(s.target.objects()) <= 3
        if s.category == "subject_add":
            assert old is None and new is not None
            assert f"{new.color} {new.shape}" in s.prompt and w.POSITIONS[cell] in s.prompt
        elif s.category == "subject_remove":
            assert old is not None and new is None
        elif s.category == "subject_replace":
            assert new.color == old.color and new.shape != old.shape and new.shape in s.prompt
        else:
            assert new.shape == old.shape and new.color != old.color and new.color in s.prompt


def test_edit_references_pick_out_exactly_the_edited_object(buckets):
    by_attribute = 0
    for s in buckets["local_edit"]:
        if s.category == "subject_add":
            continue
        (cell,) = w.edited_cells(s.source, s.target)
        colour, shape, pos = REF.search(s.prompt).groups()
        hits = [i for i, o in s.source.objects()
                if colour in (None, o.color) and shape in ("object", "shape", o.shape)
                and pos in (None, w.POSITIONS[i])]
        assert hits == [cell], (s.prompt, s.source)
        by_attribute += pos is None
    assert by_attribute >= 20  # attribute references are really exercised


def test_global_edits_keep_cells_and_change_one_thing(buckets):
    styles = set()
    for s in buckets["global_edit"]:
        assert w.edited_cells(s.source, s.target) == [] and s.source.cells == s.target.cells
        assert s.source.style == "plain"
        if s.category == "background_change":
            assert s.target.background != s.source.background and s.target.style == "plain"
            assert s.target.background in s.prompt
        else:
            assert s.target.background == s.source.background and s.target.style in w.EDIT_STYLES
            styles.add(s.target.style)
        assert w.render(s.source).tobytes() != w.render(s.target).tobytes()
    assert styles == set(w.EDIT_STYLES)


# ----------------------------------------------------------------------------- rendering

def test_palette_is_readable_in_every_style():
    lum = {n: float(np.dot(c, w.LUMA)) for n, c in {**w.COLORS, **w.BACKGROUNDS}.items()}
    for a, b in itertools.combinations(w.COLORS, 2):
        assert abs(lum[a] - lum[b]) >= 20, (a, b)
        assert np.linalg.norm(np.subtract(w.COLORS[a], w.COLORS[b])) >= 80, (a, b)
    for a, b in itertools.product(w.COLORS, w.BACKGROUNDS):
        assert abs(lum[a] - lum[b]) >= 20, (a, b)
        assert np.linalg.norm(np.subtract(w.COLORS[a], w.BACKGROUNDS[b])) >= 100, (a, b)
    for a, b in itertools.product(w.COLORS, repeat=2):  # an inverted colour is no plain colour
        inverted = 255 - np.array(w.COLORS[a])
        assert np.linalg.norm(inverted - w.COLORS[b]) >= 60, (a, b)
    assert len(w.COLORS) == 6 and len(w.BACKGROUNDS) == 4


def test_cell_boxes_tile_the_canvas():
    cover = np.zeros((32, 32), int)
    for c in range(4):
        y0, y1, x0, x1 = w.cell_box(c, 32)
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all() and w.cell_box(1, 32) == (0, 16, 16, 32)
    assert w.cell_box(2, 32) == (16, 32, 0, 16)


def test_shapes_sit_inside_their_cell_with_margin():
    for shape, cell in itertools.product(w.SHAPES, range(4)):
        cells = [None] * 4
        cells[cell] = Obj(shape, "red")
        img = w.render(scene(*cells, background="black"))
        ys, xs = np.nonzero(img.any(axis=2))
        y0, y1, x0, x1 = w.cell_box(cell)
        assert ys.min() >= y0 + 2 and ys.max() < y1 - 2 and xs.min() >= x0 + 2 and xs.max() < x1 - 2
        assert (img[ys, xs] == w.COLORS["red"]).all()
    masks = {s: w.render(scene(Obj(s, "red"), None, None, None, background="black")).any(axis=2)
             for s in w.SHAPES}
    assert len({m.tobytes() for m in masks.values()}) == 3
    tri = masks["triangle"].sum(axis=1)
    assert tri[tri > 0][0] < tri[tri > 0][-1]  # apex at the top
    assert masks["square"].sum() > masks["circle"].sum() > masks["triangle"].sum()


def test_styles_are_the_documented_pixel_maps():
    sc = scene(RC, None, GT, Obj("triangle", "yellow"), background="gray")
    plain = w.render(sc).astype(int)
    assert (w.render(replace(sc, style="invert")) == 255 - plain).all()
    gray = w.render(replace(sc, style="grayscale")).astype(int)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert np.abs(gray[..., 0] - plain @ w.LUMA).max() <= 0.5
    outline = w.render(replace(sc, style="outline"))
    bg = np.array(w.BACKGROUNDS["gray"])
    drawn, filled = (outline != bg).any(axis=2), (plain != bg).any(axis=2)
    assert (drawn <= filled).all() and 0.3 * filled.sum() < drawn.sum() < 0.9 * filled.sum()
    assert (outline[8, 8] == bg).all() and (plain[8, 8] == w.COLORS["red"]).all()


def test_real_mode_is_pure_differs_from_plain_and_keeps_colours_readable():
    for s in w.make_bucket("realism", "train", 24):
        real, plain = w.render(s.target), w.render(replace(s.target, style="plain"))
        rendering._texture.cache_clear()  # the texture must come from its fixed seed, not a cache
        assert real.tobytes() == w.render(s.target).tobytes()
        assert np.abs(real.astype(int) - plain).mean() > 1.0
        n_colours = [len(np.unique(x.reshape(-1, 3), axis=0)) for x in (real, plain)]
        assert n_colours[0] > 3 * n_colours[1]  # anti-aliasing, shading and texture
        for cell, obj in s.target.objects():
            y0, _, x0, _ = w.cell_box(cell)
            patch = real[y0 + 7:y0 + 11, x0 + 6:x0 + 10].reshape(-1, 3).mean(axis=0)
            nearest = min(w.COLORS, key=lambda c: np.linalg.norm(patch - w.COLORS[c]))
            assert nearest == obj.color, (s.prompt, obj, patch)
        corner = real[:2, :2].reshape(-1, 3).mean(axis=0)  # background with texture only
        assert np.abs(corner - w.BACKGROUNDS[s.target.background]).max() < 8


def test_render_rejects_bad_sizes_and_scales():
    sc = scene(RC, BS, None, GT)
    assert w.render(sc, 64).shape == (64, 64, 3) and w.render(sc).dtype == np.uint8
    big = w.render(sc, 64)
    assert (big[::2, ::2] == w.render(sc, 32)).mean() > 0.95  # same geometry, finer grid
    for bad in (31, 4):
        with pytest.raises(ValueError, match=str(bad)):
            w.render(sc, bad)


def test_describe_is_a_full_caption(buckets):
    scenes = {s.target for s in buckets["t2i"]} | {s.target for s in buckets["global_edit"]}
    captions = {}
    for sc in scenes:
        text = w.describe(sc)
        for i, o in sc.objects():
            assert f"{o.color} {o.shape} in the {w.POSITIONS[i]}" in text
        assert sc.background in text
        captions.setdefault(text, sc)
        assert captions[text] == sc  # different scenes, different captions
    styles = {w.describe(replace(sc, style=st)) for st in w.STYLES}
    assert len(styles) == len(w.STYLES)
