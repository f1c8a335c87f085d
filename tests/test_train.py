"""pipeline.train.loop (fit over a batch stream) and pipeline.train.sft (the flow-matching step, plans)."""
import dataclasses
import json
import math

import pytest
import torch

from pipeline.core import backbone, checkpoint, flow
from pipeline.core.batches import random_batches
from pipeline.core.fields import Cond
from pipeline.eval import sample
from pipeline.train import loop, sft
from tests.conftest import repo_cfg, tiny_cfg


LOOP = loop.Loop(steps=6, lr=1e-3, weight_decay=0.0, grad_clip=1.0, ema=0.0, grad_accum=1, checkpoint_every=3,
                 log_every=1, compile=False)


def _setup(curated, batch_size=8):
    tensors = curated.tensors(["t2i", "local_edit"], "train")
    torch.manual_seed(0)
    model = backbone.build("tiny", 4, 32, tensors.text_dim)
    step = sft.flow_matching_step("logit_normal", 0.1, 0.05, curated.null(), torch.device("cpu"))
    return model, step, tensors


def _fit(model, step, tensors, tmp_path, batch_size=8, seed=0, **loop_kw):
    rng = torch.Generator().manual_seed(seed)
    lp = dataclasses.replace(LOOP, **loop_kw)
    return loop.fit(model, step, random_batches(tensors, batch_size, rng), lp, rng=rng, work=tmp_path / "work",
                    run_id="r", device=torch.device("cpu"))


def test_training_reduces_the_loss(curated, tmp_path):
    result = _fit(*_setup(curated), tmp_path, steps=40, lr=3e-3)
    first, last = result.history[0]["loss"], sum(h["loss"] for h in result.history[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    assert result.samples == 40 * 8 and set(result.history[0]) == {"step", "loss", "grad_norm"}  # no timings


def test_same_seed_same_weights_and_resume_equals_uninterrupted(curated, tmp_path):
    straight = _fit(*_setup(curated), tmp_path / "a").model

    model, step, tensors = _setup(curated)
    calls = {"n": 0}

    def dies_at_step_5(m, batch, gen):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # a kill after the step-3 checkpoint
        return step(m, batch, gen)

    with pytest.raises(KeyboardInterrupt):
        _fit(model, dies_at_step_5, tensors, tmp_path / "b")
    model, step, tensors = _setup(curated)
    resumed = _fit(model, step, tensors, tmp_path / "b")
    assert resumed.history[0]["step"] == 1 and len(resumed.history) == 6  # the history survived the kill
    for (k, a), b in zip(straight.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_checkpoint_of_another_run_is_ignored(curated, tmp_path, capsys):
    _fit(*_setup(curated), tmp_path, steps=4)  # leaves a step-3 checkpoint
    model, step, tensors = _setup(curated)
    rng = torch.Generator().manual_seed(0)
    result = loop.fit(model, step, random_batches(tensors, 8, rng), dataclasses.replace(LOOP, steps=4), rng=rng,
                      work=tmp_path / "work", run_id="other", device=torch.device("cpu"))
    assert "another configuration" in capsys.readouterr().out and len(result.history) == 4


def test_nan_loss_stops_training(curated, tmp_path):
    model, _, tensors = _setup(curated)
    nan = lambda m, batch, gen: m(torch.zeros(1, 3, 32, 32), torch.ones(1), _cond()).sum() * float("nan")  # noqa: E731
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / checkpoint.STATE).write_bytes(b"an earlier state")
    with pytest.raises(FloatingPointError, match=r"loss is nan in steps 0\.\.2"):  # read at the log step
        _fit(model, nan, tensors, tmp_path, steps=3, log_every=3, checkpoint_every=10)
    assert not (tmp_path / "work").exists()  # resuming would replay the NaN: its state is dropped


def test_an_unreadable_checkpoint_falls_back_to_the_previous_then_to_a_fresh_start(curated, tmp_path, capsys):
    straight = _fit(*_setup(curated), tmp_path / "a", steps=6).model
    model, step, tensors = _setup(curated)
    calls = {"n": 0}

    def dies_at_step_6(m, batch, gen):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return step(m, batch, gen)

    with pytest.raises(KeyboardInterrupt):
        _fit(model, dies_at_step_6, tensors, tmp_path / "b", steps=6, checkpoint_every=2)  # states at 2 and 4
    work = tmp_path / "b" / "work"
    assert (work / checkpoint.STATE).exists() and (work / checkpoint.PREVIOUS).exists()
    (work / checkpoint.STATE).write_bytes(b"half a file")  # a disk that filled up mid-save
    resumed = _fit(*_setup(curated), tmp_path / "b", steps=6, checkpoint_every=2)
    assert "unreadable training state" in capsys.readouterr().out and resumed.history[0]["step"] == 1
    for (k, a), b in zip(straight.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k  # resumed from step 2 and still equal to the uninterrupted run
    work.mkdir(parents=True, exist_ok=True)
    (work / checkpoint.STATE).write_bytes(b"x")
    (work / checkpoint.PREVIOUS).write_bytes(b"y")
    assert len(_fit(*_setup(curated), tmp_path / "b", steps=2).history) == 2  # both unreadable: afresh


def _cond():
    return Cond(torch.zeros(1, 24, 384), torch.zeros(1, 384), None)


def test_gradient_accumulation_of_two_halves_equals_one_full_batch(curated, tmp_path):
    """Micro-batches of 4 x 2 take the step of their union: the mean of the two losses' gradients."""
    model, _, tensors = _setup(curated)
    deterministic = lambda m, batch, gen: m(*_noised(batch)).pow(2).mean()  # noqa: E731
    full = _fit(model, deterministic, tensors, tmp_path / "full", batch_size=8, steps=1, grad_clip=1e9).model
    model, _, _ = _setup(curated)
    halves = _fit(model, deterministic, tensors, tmp_path / "halves", batch_size=4, steps=1, grad_clip=1e9,
                  grad_accum=2).model
    for (k, a), b in zip(full.state_dict().items(), halves.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k  # the same 8 rows: 4 + 4 drawn from the same generator


def _noised(batch):
    x, cond = batch
    return x, torch.full((len(x),), 0.5), cond


def test_ema_tracks_a_moving_average(curated, tmp_path):
    """The EMA `fit` returns is the closed form over the weights after each step: two updates of
    decay min(0.5, 1/10) = 0.1 and min(0.5, 2/11), from the initial weights w0."""
    model, step, tensors = _setup(curated)
    seen = []  # the weights each step starts from: w0, then w1

    def recording(m, batch, gen):
        seen.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        return step(m, batch, gen)

    final = _fit(model, recording, tensors, tmp_path, steps=2, ema=0.5).model
    assert final is not model and len(seen) == 2
    (w0, w1), w2 = seen, model.state_dict()
    for k in w0:
        a1 = w0[k] + (1 - 0.1) * (w1[k] - w0[k])
        a2 = a1 + (1 - 2 / 11) * (w2[k] - a1)
        assert torch.allclose(final.state_dict()[k], a2, atol=1e-6), k


def test_condition_dropout_uses_the_null_text(curated):
    tensors = curated.tensors(["local_edit"], "train")
    null = curated.null()
    seen = {}

    def spy(x, t, cond):
        seen["cond"] = cond
        return torch.zeros_like(x, requires_grad=True)

    step = sft.flow_matching_step("uniform", 1.0, 1.0, null, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    step(spy, next(random_batches(tensors, 16, gen)), gen)
    assert torch.equal(seen["cond"].text, null[0].expand(16, -1, -1))
    assert torch.equal(seen["cond"].source, torch.zeros(16, 3, 32, 32))


def test_generate_is_seeded_and_guidance_needs_null(curated):
    model, _, _ = _setup(curated)
    x, cond = curated.tensors(["t2i"], "test").batch(torch.arange(3))
    a = sample.generate(model, cond, steps=4, shift=3.0, seed=7)
    assert a.shape == x.shape and torch.equal(a, sample.generate(model, cond, steps=4, shift=3.0, seed=7))
    with pytest.raises(ValueError, match="null"):
        sample.generate(model, cond, steps=4, shift=3.0, seed=7, guidance=2.0)


def test_plans():
    cfg = repo_cfg()
    train, experts, settings = cfg.train, cfg.experts, cfg.settings
    assert sft.plan("base", train, experts) == sft.Plan("base", ["t2i"], train.base.steps, train.base)
    edit = sft.plan("edit", train, experts)
    assert (edit.buckets, edit.steps, edit.recipe) == (["local_edit", "global_edit"], experts["edit"].steps,
                                                       train.finetune)
    joint = sft.plan("joint", train, experts, settings["t2i_edit"])  # replaces the edit expert (base is the anchor)
    assert (joint.buckets, joint.steps) == (["t2i", "local_edit", "global_edit"], experts["edit"].steps)
    joint = sft.plan("joint", train, experts, settings["local_global"])  # the compute of both experts it replaces
    assert (joint.buckets, joint.steps) == (["local_edit", "global_edit"],
                                            experts["local_edit"].steps + experts["global_edit"].steps)
    with pytest.raises(ValueError, match="needs the setting"):
        sft.plan("joint", train, experts)
    with pytest.raises(ValueError, match="unknown model 'bogus'"):
        sft.plan("bogus", train, experts)


def test_train_model_writes_a_folder_that_is_a_function_of_params_data_and_seed(curated, tmp_path):
    """Two identical trainings write byte-identical model folders: no timing is inside."""
    cfg = tiny_cfg(train={"base": {"steps": 3}, "checkpoint_every": 2, "log_every": 1})
    plan = sft.plan("base", cfg.train, cfg.experts)
    digests = []
    for run in ("a", "b"):
        out = tmp_path / run / "base"
        result = sft.train_model(plan, cfg.train, cfg.model, cfg.compute, data=curated, out=out, init=None)
        digests.append({p.name: p.read_bytes() if p.is_file() else sorted(q.name for q in p.iterdir())
                        for p in out.iterdir()})
        assert result.summary()["seconds"] > 0 and result.summary()["steps"] == 3
        assert not checkpoint.work_dir(out).exists()  # the training state is dropped once the model is saved
    assert digests[0] == digests[1]
    assert sorted(digests[0]) == ["README.md", "config.json", "diffusion_pytorch_model.safetensors", "sampling.json",
                                  "scheduler", "train_log.json"]
    sampling = json.loads(digests[0]["sampling.json"])
    assert sampling["shift"] == cfg.model.shift and sampling["resolution"] == 32
    assert sampling["text_encoder"] == {"encoder": "minilm", "max_tokens": 24, "dim": 384}
    log = json.loads(digests[0][checkpoint.LOG])
    assert log["recipe"]["plan"]["steps"] == 3 and len(log["history"]) == 3
    assert "samples_per_s" not in json.dumps(log) and "seconds" not in json.dumps(log)


def test_grad_checkpointing_trains_the_same_model(curated, tmp_path, monkeypatch):
    """`compute.grad_checkpointing` reaches the model train_model trains, and changes memory, not weights."""
    trained, calls, enable = [], [], backbone.Backbone.checkpoint_activations
    monkeypatch.setattr(backbone.Backbone, "checkpoint_activations", lambda self: calls.append(1) or enable(self))
    for on in (False, True):
        cfg = tiny_cfg(train={"base": {"steps": 3}}, compute={"grad_checkpointing": on})
        out = tmp_path / str(on) / "base"
        sft.train_model(sft.plan("base", cfg.train, cfg.experts), cfg.train, cfg.model, cfg.compute, data=curated,
                        out=out, init=None)
        trained.append(backbone.load(out).state_dict())
    assert calls == [1]  # the checkpointed run only
    for key, value in trained[0].items():
        assert torch.allclose(value, trained[1][key], atol=1e-6), key


def test_ema_with_warm_up_follows_the_trained_weights_not_the_initial_ones(curated, tmp_path):
    """A 0.999 average without warm-up would still be ~97% the random initial weights after 30 steps."""
    model, step, tensors = _setup(curated)
    flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])  # noqa: E731
    initial = flat(model)
    ema = flat(_fit(model, step, tensors, tmp_path, steps=30, lr=3e-3, ema=0.999).model)
    trained = flat(model)
    assert (ema - trained).norm() < 0.25 * (ema - initial).norm()
    assert loop.EMA(model, 0.999).current_decay() == 0.1  # the first update: (1 + 0) / (10 + 0)


def test_the_learning_rate_warms_up_then_follows_a_cosine_to_its_floor():
    lp = dataclasses.replace(LOOP, steps=110, warmup_steps=10, lr_decay="cosine", min_lr_ratio=0.1)
    factors = [loop.lr_factor(s, lp) for s in range(110)]
    assert factors[:10] == [pytest.approx((i + 1) / 10) for i in range(10)]
    assert factors[10] == pytest.approx(1.0) and factors[60] == pytest.approx(0.55)  # halfway down the cosine
    assert factors[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert loop.lr_factor(50, dataclasses.replace(lp, lr_decay="constant")) == 1.0


def test_shifted_t_sampling_moves_t_like_the_sampling_grid(curated):
    seen = {}

    def spy(x, t, cond):
        seen["t"] = t
        return torch.zeros_like(x, requires_grad=True)

    batch = next(random_batches(curated.tensors(["t2i"], "train"), 4000, torch.Generator().manual_seed(0)))
    for mode in ("uniform", "uniform_shifted"):
        sft.flow_matching_step(mode, 0.0, 0.0, curated.null(), torch.device("cpu"), shift=3.0)(
            spy, batch, torch.Generator().manual_seed(1))
        seen[mode] = seen["t"]
    assert torch.allclose(seen["uniform_shifted"], flow.shift_time(seen["uniform"], 3.0))
    assert seen["uniform_shifted"].mean() > 0.6 > seen["uniform"].mean()  # more of the training near noise


def test_a_state_saved_with_other_generators_starts_afresh(curated, tmp_path, capsys):
    """Another device, data.stream or process count saves other generators: the run starts again
    instead of failing on them (or resuming with the wrong ones)."""
    model, step, tensors = _setup(curated)
    _fit(model, step, tensors, tmp_path, steps=2, checkpoint_every=1)  # leaves the state of step 1
    rng = torch.Generator().manual_seed(0)
    lp = dataclasses.replace(LOOP, steps=2, checkpoint_every=1)
    fit = loop.fit(model, step, random_batches(tensors, 8, rng), lp, rng=(rng, torch.Generator()), run_id="r",
                   work=tmp_path / "work", device=torch.device("cpu"))
    assert "starting afresh" in capsys.readouterr().out and [r["step"] for r in fit.history] == [1, 2]
