import dataclasses

import pytest
import torch

from pipeline import backbone, data, sample, train
from pipeline.fields import Cond
from tests.conftest import repo_cfg, tiny_cfg


@pytest.fixture(scope="module")
def shards(tmp_path_factory, encoder):
    cfg = tiny_cfg()
    out = tmp_path_factory.mktemp("curated")
    data.curate(cfg.world, cfg.data, encoder, out / "shards", out / "manifest.parquet")
    return out / "shards"


def _setup(shards, **train_overrides):
    cfg = tiny_cfg(model={"size": "tiny"})
    train_cfg = dataclasses.replace(cfg.train, batch_size=8, log_every=1, checkpoint_every=3, **train_overrides)
    tensors = data.load_tensors(shards, ["t2i", "local_edit"], "train")
    torch.manual_seed(0)
    model = backbone.build("tiny", 4, 32, tensors.text.shape[-1])
    loss = train.flow_matching_loss(tensors, train_cfg, data.read_null(shards), torch.device("cpu"))
    return model, loss, train_cfg


def _fit(model, loss, train_cfg, tmp_path, steps, **kw):
    kw = {"lr": 1e-3, "work": tmp_path / "work", "run_id": "r", "device": torch.device("cpu")} | kw
    return train.fit(model, loss, train_cfg, steps=steps, **kw)


def test_training_reduces_the_loss(shards, tmp_path):
    model, loss, train_cfg = _setup(shards)
    _, history = _fit(model, loss, train_cfg, tmp_path, steps=40, lr=3e-3)
    first, last = history[0]["loss"], sum(h["loss"] for h in history[-5:]) / 5
    assert last < 0.7 * first, (first, last)


def test_same_seed_same_weights_and_resume_equals_uninterrupted(shards, tmp_path):
    model, loss, train_cfg = _setup(shards)
    straight, _ = _fit(model, loss, train_cfg, tmp_path / "a", steps=6)

    calls = {"n": 0}

    def dies_at_step_5(m, gen):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # a kill after the step-3 checkpoint
        return loss(m, gen)

    model, _, _ = _setup(shards)
    with pytest.raises(KeyboardInterrupt):
        _fit(model, dies_at_step_5, train_cfg, tmp_path / "b", steps=6)
    model, _, _ = _setup(shards)
    resumed, history = _fit(model, loss, train_cfg, tmp_path / "b", steps=6)
    assert history[0]["step"] == 1 and len(history) == 6  # the history survived the kill
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_checkpoint_of_another_run_is_ignored(shards, tmp_path, capsys):
    model, loss, train_cfg = _setup(shards)
    _fit(model, loss, train_cfg, tmp_path, steps=4)  # leaves a step-3 checkpoint
    model, loss, _ = _setup(shards)
    _, history = _fit(model, loss, train_cfg, tmp_path, steps=4, run_id="other")
    assert "another configuration" in capsys.readouterr().out and len(history) == 4


def test_nan_loss_stops_training(shards, tmp_path):
    model, _, train_cfg = _setup(shards)
    nan = lambda m, gen: m(torch.zeros(1, 3, 32, 32), torch.ones(1), _cond()).sum() * float("nan")  # noqa: E731
    with pytest.raises(FloatingPointError, match="loss is nan at step 0"):
        _fit(model, nan, train_cfg, tmp_path, steps=3)


def _cond():
    return Cond(torch.zeros(1, 24, 384), torch.zeros(1, 384), None)


def test_ema_tracks_a_moving_average(shards, tmp_path):
    model, loss, train_cfg = _setup(shards, ema=0.5)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    final, _ = _fit(model, loss, train_cfg, tmp_path, steps=2)
    assert final is not model
    k = "transformer.proj_out.weight"
    # two updates of decay 0.5: ema = 0.25 start + 0.25 w1 + 0.5 w2, strictly between start and w2
    assert not torch.equal(final.state_dict()[k], start[k]) and not torch.equal(final.state_dict()[k], model.state_dict()[k])


def test_condition_dropout_uses_the_null_text(shards):
    tensors = data.load_tensors(shards, ["local_edit"], "train")
    cfg = dataclasses.replace(tiny_cfg().train, batch_size=16, drop_text=1.0, drop_source=1.0)
    null = data.read_null(shards)
    seen = {}

    def spy(x, t, cond):
        seen["cond"] = cond
        return torch.zeros_like(x, requires_grad=True)

    train.flow_matching_loss(tensors, cfg, null, torch.device("cpu"))(spy, torch.Generator().manual_seed(0))
    assert torch.equal(seen["cond"].text, null[0].expand(16, -1, -1))
    assert torch.equal(seen["cond"].source, torch.zeros(16, 3, 32, 32))


def test_generate_is_seeded_and_guidance_needs_null(shards):
    model, _, _ = _setup(shards)
    x, cond = data.load_tensors(shards, ["t2i"], "test").batch(torch.arange(3))
    a = sample.generate(model, cond, steps=4, shift=3.0, seed=7)
    assert a.shape == x.shape and torch.equal(a, sample.generate(model, cond, steps=4, shift=3.0, seed=7))
    with pytest.raises(ValueError, match="null"):
        sample.generate(model, cond, steps=4, shift=3.0, seed=7, guidance=2.0)


def test_sft_plan_names():
    cfg = repo_cfg()
    assert train.sft_plan(cfg, "base") == (["t2i"], cfg.train.base_steps, cfg.train.t_sampling)
    assert train.sft_plan(cfg, "edit")[1:] == (cfg.experts["edit"].steps, cfg.train.finetune_t_sampling)
    assert train.sft_plan(cfg, "edit")[0] == ["local_edit", "global_edit"]
    assert train.sft_plan(cfg, "joint")[0] == ["t2i", "local_edit", "global_edit"]
    with pytest.raises(ValueError, match="unknown model 'bogus'"):
        train.sft_plan(cfg, "bogus")
