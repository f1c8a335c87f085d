"""The evaluator: exact batch rendering, label codec, shapes, save/load, the accuracy gate."""
from __future__ import annotations

import functools
import json
import random
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.data import world
from pipeline.data.shards import to_tensor
from pipeline.eval import evaluator as E
from pipeline.train import evaluator_training as T
from tests.conftest import ROOT, tiny_cfg, tiny_raw

TINY_EVAL = {"parser_steps": 1, "clip_steps": 1, "batch_size": 8, "holdout": 40}


def _tiny_eval_raw(gate: float = 0.99) -> dict:
    """params `eval` with a one-step evaluator and the accuracy gate at `gate`."""
    raw = tiny_raw()["eval"]
    return raw | {"evaluator": raw["evaluator"] | TINY_EVAL | {"min_scene_accuracy": gate}}


@functools.lru_cache(maxsize=None)
def trained_evaluator() -> E.Evaluator:
    """The evaluator of the default params.yaml, trained once per session (slow tests only)."""
    import tempfile
    from pathlib import Path

    from pipeline import config

    out = Path(tempfile.mkdtemp()) / "evaluator"
    params = config.load(ROOT / "params.yaml")
    metrics, _ = T.train_evaluator(params.eval.evaluator, params.world.resolution, params.compute, out)
    trained_evaluator.metrics = metrics
    trained_evaluator.gate = params.eval.evaluator.min_scene_accuracy
    return E.Evaluator.load(out)


@pytest.fixture(scope="module")
def untrained():
    torch.manual_seed(0)
    tok = T.tokenizer()
    reference = np.random.default_rng(0).normal(size=(50, 256)).astype(np.float32)
    return E.Evaluator(E.SceneParser(E.ParserConfig(size=32)), E.build_clip(32, tok), tok, reference)


# ----------------------------------------------------------------------------- data

@pytest.mark.parametrize("size", [16, 32])
def test_tile_renderer_equals_world_render(size):
    rng = random.Random(1)
    scenes = [T.random_scene(rng) for _ in range(40)] + [
        world.Scene((world.Obj("circle", "red"),) * 4, "navy", style) for style in world.STYLES]
    got = T.TileRenderer(size)(scenes)
    assert np.array_equal(got, np.stack([world.render(s, size) for s in scenes]))


def test_labels_round_trip_and_cover_every_class():
    rng = random.Random(2)
    scenes = [T.random_scene(rng) for _ in range(3000)]
    labels = E.scene_labels(scenes)
    assert E.decode(labels) == scenes
    assert len(E.CONTENTS) == 1 + len(world.SHAPES) * len(world.COLORS)
    assert set(labels[:, :4].flatten().tolist()) == set(range(len(E.CONTENTS)))
    assert set(labels[:, 5].tolist()) == set(range(len(world.STYLES)))
    assert {sum(c is not None for c in s.cells) for s in scenes} == {0, 1, 2, 3, 4}


def test_training_draws_never_reuse_make_bucket_seeds():
    pairs = [T.caption_pair(random.Random(f"clip/0/{i}")) for i in range(50)]
    assert all(isinstance(c, str) and c for _, c in pairs)
    # The T2I samples come from seeds >= 10**12; curated buckets stop below 1.4 * 10**9.
    assert max(world.SPLIT_BASE.values()) + max(world.BUCKET_BASE.values()) + 10**8 < 10**12


def test_the_kid_fid_reference_is_disjoint_from_every_test_target(monkeypatch):
    """The reference renders come from the world's own `reference` split, never from the test split
    whose first targets every evaluation scores."""
    asked = []
    real = world.make_bucket
    monkeypatch.setattr(world, "make_bucket", lambda *a: asked.append(a) or real(*a))
    params = SimpleNamespace(reference=30)
    feats = T.reference_features(E.SceneParser(E.ParserConfig(size=32)), params, T.TileRenderer(32))
    assert asked == [("t2i", "reference", 30)] and feats.shape[0] == 30
    reference = {s.seed for s in real("t2i", "reference", 2000)}
    assert not reference & {s.seed for s in real("t2i", "test", 2000)}


def test_augment_keeps_shape_range_and_geometry():
    x = to_tensor(T.TileRenderer(32)([T.random_scene(random.Random(3)) for _ in range(64)]))
    y = T.augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    assert (y - x).abs().mean() < 0.1  # light: pixels move a little, shapes stay put
    assert torch.equal(T.augment(x, torch.Generator().manual_seed(0), p=0.0), x)


# ----------------------------------------------------------------------------- models

def test_parser_shapes_and_parse_gives_valid_scenes(untrained):
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    cells, bg, style = untrained.parser(x)
    assert cells.shape == (5, 4, len(E.CONTENTS)) and bg.shape == (5, 4) and style.shape == (5, 5)
    assert untrained.features(x).shape == (5, untrained.parser.config.hidden)
    scenes = untrained.parse(x)
    assert len(scenes) == 5 and all(isinstance(s, world.Scene) for s in scenes)
    r = untrained.realism(x)
    assert r.shape == (5,) and ((r > 0) & (r < 1)).all()
    # uint8 NHWC arrays are accepted as well
    black = np.zeros((2, 32, 32, 3), np.uint8)
    assert untrained.parse(black) == untrained.parse(-torch.ones(2, 3, 32, 32))
    with pytest.raises(ValueError, match="expected images"):
        untrained.parse(torch.zeros(1, 3, 16, 16))


def test_clip_pools_the_sep_token_and_scores_pairs(untrained):
    cfg = untrained.clip.config.text_config
    assert (cfg.vocab_size, cfg.eos_token_id, cfg.bos_token_id, cfg.pad_token_id) == (30522, 102, 101, 0)
    assert untrained.clip.config.vision_config.image_size == 32
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    s = untrained.clip_score(x, ["a red circle", "a blue square in the top left", "x"])
    assert s.shape == (3,) and (s.abs() <= 100 + 1e-3).all()
    with pytest.raises(ValueError, match="texts"):
        untrained.clip_score(x, ["one"])


def test_save_load_round_trip_is_exact_and_atomic(untrained, tmp_path):
    out = tmp_path / "models" / "evaluator"
    untrained.save(out)
    untrained.save(out)  # overwriting an existing evaluator works too
    assert sorted(p.name for p in out.parent.iterdir()) == ["evaluator"]  # no temp folder left
    assert json.loads((out / "parser.json").read_text())["size"] == 32
    ev = E.Evaluator.load(out)
    x, texts = torch.rand(4, 3, 32, 32) * 2 - 1, ["a"] * 4
    assert ev.parse(x) == untrained.parse(x)
    assert torch.allclose(ev.features(x), untrained.features(x))
    assert torch.allclose(ev.realism(x), untrained.realism(x))
    assert torch.allclose(ev.clip_score(x, texts), untrained.clip_score(x, texts), atol=1e-5)
    assert np.array_equal(ev.reference, untrained.reference)  # KID's and FID's real reference travels with it
    with pytest.raises(FileNotFoundError, match="parser.pt"):
        E.Evaluator.load(tmp_path)


@pytest.mark.parametrize("resolution, side", [(16, 16), (32, 32), (48, 48), (64, 32), (100, 50), (384, 32),
                                              (512, 32), (1024, 32)])
def test_the_grid_side_is_the_world_s_and_each_box_lies_in_one_cell(resolution, side):
    assert E.grid_side(resolution) == side
    assert (resolution // 2) % (resolution // side) == 0  # a box never straddles two cells


def test_a_large_image_is_measured_as_its_box_average_at_the_grid(untrained):
    """A 128-px image reaches both models as the 4 x 4 box mean of its pixels (the 32-px grid the
    evaluator was built for): every measurement equals that of the averaged image."""
    big = torch.rand(3, 3, 128, 128) * 2 - 1
    small = big.unfold(2, 4, 4).unfold(3, 4, 4).mean((-1, -2))  # (3, 3, 32, 32), by hand
    assert torch.allclose(E.to_grid(big, 32), small, atol=1e-6)
    assert untrained.parse(big) == untrained.parse(small)
    assert torch.allclose(untrained.features(big), untrained.features(small), atol=1e-5)
    assert torch.allclose(untrained.clip_score(big, ["a"] * 3), untrained.clip_score(small, ["a"] * 3), atol=1e-4)
    with pytest.raises(ValueError, match="box-average"):
        untrained.parse(torch.zeros(1, 3, 48, 48))  # 48 is no multiple of 32


def test_an_evaluator_for_a_64_px_world_is_built_and_trained_at_its_32_px_grid(tmp_path):
    """world.resolution 64: the renders are box-averaged to 32 px before the parser and the CLIP see
    them, so both are the 32-px models (their cost does not grow with the resolution), and the saved
    evaluator measures 64-px images."""
    cfg = tiny_cfg(eval=_tiny_eval_raw(gate=0.0))
    render = T.TileRenderer(64)
    scenes = [T.random_scene(random.Random(5)) for _ in range(6)]
    assert torch.allclose(render.grid(scenes), E.to_grid(to_tensor(render(scenes)), 32))
    T.train_evaluator(cfg.eval.evaluator, 64, cfg.compute, tmp_path / "evaluator")
    ev = E.Evaluator.load(tmp_path / "evaluator")
    assert ev.parser.config.size == 32 and ev.clip.config.vision_config.image_size == 32
    x = to_tensor(render(scenes))  # (6, 3, 64, 64)
    assert ev.parse(x) == ev.parse(E.to_grid(x, 32)) and ev.reference.shape[1] == ev.parser.config.hidden


# ----------------------------------------------------------------------------- the accuracy gate

def test_train_evaluator_refuses_a_poor_parser_and_writes_nothing(tmp_path):
    cfg = tiny_cfg(eval=_tiny_eval_raw())
    with pytest.raises(RuntimeError, match="scene accuracy"):
        T.train_evaluator(cfg.eval.evaluator, cfg.world.resolution, cfg.compute, tmp_path / "evaluator")
    assert list(tmp_path.iterdir()) == []


def test_stage_writes_model_and_metrics_or_nothing(tmp_path, monkeypatch):
    import yaml

    from stages import train_evaluator as stage

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_raw(eval=_tiny_eval_raw())))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    (tmp_path / "mlruns").mkdir()
    monkeypatch.chdir(tmp_path)
    argv = ["train_evaluator", "--out", "models/evaluator", "--metrics", "metrics/evaluator.json",
            "--cost", "metrics/train/evaluator.json"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(RuntimeError, match="scene accuracy"):
        stage.main()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlruns", "params.yaml"]
    params.write_text(yaml.safe_dump(tiny_raw(eval=_tiny_eval_raw(gate=0.0))))  # the gate off: it completes
    stage.main()
    metrics = json.loads((tmp_path / "metrics" / "evaluator.json").read_text())
    assert set(metrics) == {"scene_accuracy", "cell_accuracy", "background_accuracy", "style_accuracy",
                            "clip_match", "clip_shuffled"}  # its training time is apart, in the cost file
    assert json.loads((tmp_path / "metrics" / "train" / "evaluator.json").read_text())["seconds"] > 0
    assert E.Evaluator.load(tmp_path / "models" / "evaluator").parser.config.size == 32


@pytest.mark.slow
def test_default_params_reach_the_accuracy_the_metrics_need():
    ev = trained_evaluator()
    m = trained_evaluator.metrics
    assert m["scene_accuracy"] >= trained_evaluator.gate
    assert m["clip_match"] > m["clip_shuffled"] + 20
    # Slightly noisy renders (as generated images are) still parse.
    rng = random.Random("noisy-test")
    scenes = [T.random_scene(rng, rng.randint(1, 3)) for _ in range(500)]
    x = to_tensor(T.TileRenderer(32)(scenes))
    noisy = (x + 0.03 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    assert np.mean([a == b for a, b in zip(ev.parse(noisy), scenes)]) >= 0.95


def test_a_bucket_sampled_in_parts_is_the_bucket_sampled_at_once(curated):
    """`eval.batch_size`: the test images in micro-batches are those of the whole bucket at once (the
    noise is the bucket's, sliced), so the batch size changes memory, not scores."""
    from pipeline.core import backbone
    from pipeline.eval import evaluation

    torch.manual_seed(0)
    model = backbone.build("tiny", 4, 32, curated.tensors(["t2i"], "train").text_dim).eval()
    cfg = tiny_cfg()
    runs = {}
    for size in (0, 4):
        params = cfg.eval.model_copy(update={"batch_size": size})
        test, images, _ = evaluation.sample_bucket(model, curated, "local_edit", params, 3.0, 1.0,
                                                   torch.device("cpu"))
        runs[size] = images
    assert len(test) == cfg.eval.count > 4 and runs[0].shape == runs[4].shape
    assert np.abs(runs[0].astype(int) - runs[4].astype(int)).max() <= 1  # float rounding of other batch shapes
