"""pipeline.core.streams: batches streamed from the shards through webdataset (`data.stream`)."""
import itertools
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core import backbone, streams
from pipeline.core.batches import stack_records
from pipeline.data import shards

CPU = torch.device("cpu")


def _by_key(curated, buckets):
    return {r.key: r for b in buckets for r in shards.read_records(curated.shards, b, "train")}


def test_a_streamed_batch_is_the_in_memory_batch_of_its_records(curated):
    batches = streams.streamed_batches(curated, ["t2i", "local_edit"], 5, seed=0, device=CPU, workers=0, buffer=4)
    records = _by_key(curated, ["t2i", "local_edit"])
    seen = []
    for x, cond in itertools.islice(batches, 4):
        assert x.shape == (5, 3, 32, 32) and cond.text.shape[0] == 5 and x.min() >= -1 and x.max() <= 1
        seen.append(x)
    # The first batch, rebuilt in memory from the records the stream gave (the same seed, the same order).
    stream = streams.record_stream(curated, ["t2i", "local_edit"], "train", seed=0, workers=0, buffer=4)
    first = list(itertools.islice(stream, 5))
    assert all(r.key in records for r in first)
    x, cond = stack_records(first, curated.embeddings).batch(torch.arange(5))
    assert torch.equal(x, seen[0])
    text, _ = curated.embeddings.lookup([r.prompt for r in first])
    assert torch.equal(cond.text, torch.from_numpy(text).float())


def test_two_workers_stream_every_sample(curated):
    # Each worker reads its own shards (split_by_worker: tests/test_data.py) and starts its next
    # epoch when it is through them, so a short shard's samples come round sooner.
    keys = set(_by_key(curated, ["t2i"]))
    stream = streams.record_stream(curated, ["t2i"], "train", seed=0, workers=2, buffer=4)
    assert {r.key for r in itertools.islice(stream, 3 * len(keys))} == keys


def test_routed_streams_keep_the_routing_of_each_mode(curated):
    route_buckets = [["t2i"], ["local_edit", "global_edit"]]

    def batches(per, accum=1):
        return streams.routed_streamed_batches(curated, route_buckets, 6, torch.Generator().manual_seed(0), [1.0, 1.0],
                                               per, accum, seed=0, device=CPU, workers=0, buffer=4)

    for x, cond in itertools.islice(batches("step", accum=2), 8):  # one route per batch, the route's buckets
        assert len(set(cond.route.tolist())) == 1
    steps = list(itertools.islice(batches("step", accum=2), 8))
    assert all(torch.equal(a[1].route, b[1].route) for a, b in zip(steps[::2], steps[1::2]))  # accumulated alike
    routes = [cond.route[0].item() for _, cond in itertools.islice(batches("all"), 6)]
    assert routes == [0, 1] * 3
    mixed = torch.cat([cond.route for _, cond in itertools.islice(batches("sample"), 20)])
    assert 0.35 < mixed.float().mean() < 0.65  # routes mixed within batches, by the weights
    for _, cond in itertools.islice(batches("sample"), 3):  # each sample's route is its bucket's
        has_source = cond.source.flatten(1).abs().sum(1) > 0
        assert torch.equal(has_source, cond.route == 1)


def test_sft_and_distillation_train_on_streamed_batches(curated, tmp_path):
    from pipeline.train import distill, sft
    from tests.conftest import TINY, tiny_cfg
    from tests.test_distributed import _sources

    cfg = tiny_cfg(data={"stream": {"enabled": True, "workers": 0, "buffer": 8}}, routing={"source": "label"},
                   train=TINY["train"] | {"log_every": 2}, distill=TINY["distill"] | {"steps": 6})
    base = sft.train_model(sft.plan("base", cfg.train, cfg.experts), cfg.train, cfg.model, cfg.compute, data=curated,
                           out=tmp_path / "base", init=None, stream=cfg.data.stream)
    assert base.samples == cfg.train.base.steps * cfg.train.batch_size and (tmp_path / "base" / "config.json").is_file()
    _sources(tmp_path / "sources", curated.tensors(["t2i"], "train", limit=1).text_dim)
    for name in ("t2i_edit", "realism"):
        method = cfg.method(name, cfg.settings[name].methods[0])
        if name == "t2i_edit":
            (tmp_path / "sources" / "experts" / "edit").symlink_to(tmp_path / "sources" / "experts" / "realism")
        student = distill.train_student(
            method, cfg.settings[name], cfg.fields, cfg.routing, cfg.train, cfg.model.shift, cfg.compute,
            data=curated, base=tmp_path / "sources" / "base", experts=tmp_path / "sources" / "experts",
            router_dir=tmp_path / "router", out=tmp_path / name, name=name, seed=0, stream=cfg.data.stream)
        assert len(student.history) == 3 and all(math.isfinite(row["loss"]) and row["loss"] > 0
                                                  for row in student.history), name
        init = backbone.load(tmp_path / "sources" / ("base" if method.init == "base" else f"experts/{method.init}"))
        moved = [not torch.equal(a, b) for a, b in zip(init.state_dict().values(),
                                                        backbone.load(tmp_path / name).state_dict().values())]
        assert sum(moved) > 0.9 * len(moved), name  # it trained on the streamed batches
        assert (tmp_path / name / "config.json").is_file()


def test_too_few_shards_for_the_readers_is_an_error_naming_the_keys(curated):
    n = len(shards.shard_paths(curated.shards, "t2i", "train"))
    with pytest.raises(ValueError, match=rf"data.stream: {n} shard\(s\).*data.stream.workers = {n + 1}"):
        streams.record_stream(curated, ["t2i"], "train", seed=0, workers=n + 1, buffer=4)


def test_validation_samples_are_logged_and_leave_the_student_s_bytes_alone(curated, tmp_path):
    """`train.sample_every`: the init (step 0) and every N steps are sampled, scored and logged as a
    grid; the student trained with it is the same bytes as without it."""
    from pipeline.eval import evaluator as E
    from pipeline.train import distill, evaluator_training, validation
    from tests.conftest import TINY, tiny_cfg
    from tests.test_distributed import _sources

    class Run:  # what a stage's MLflow run receives
        def __init__(self):
            self.metrics, self.files = [], {}

        def log_metrics(self, metrics, step=None):
            self.metrics.append((step, metrics))

        def log_artifact(self, path, name=None):
            self.files[name or path.name] = Image.open(path).size

    torch.manual_seed(0)
    tok = evaluator_training.tokenizer()
    reference = np.random.default_rng(0).normal(size=(50, 256)).astype(np.float32)  # KID's: unused here
    ev = E.Evaluator(E.SceneParser(E.ParserConfig(size=32)), E.build_clip(32, tok), tok, reference)
    ev.save(tmp_path / "evaluator")
    _sources(tmp_path / "sources", curated.tensors(["t2i"], "train", limit=1).text_dim)
    students, runs = {}, {}
    for every in (0, 2):
        cfg = tiny_cfg(routing={"source": "label"}, train=TINY["train"] | {"sample_every": every},
                       distill=TINY["distill"] | {"steps": 4})
        runs[every] = Run()
        distill.train_student(
            cfg.method("realism", "danceopd"), cfg.settings["realism"], cfg.fields, cfg.routing, cfg.train,
            cfg.model.shift, cfg.compute, data=curated, base=tmp_path / "sources" / "base",
            experts=tmp_path / "sources" / "experts", router_dir=tmp_path / "router", out=tmp_path / f"{every}" / "student",
            name="s", seed=0, evaluator=tmp_path / "evaluator", tracker=runs[every])
        folder = tmp_path / f"{every}" / "student"
        students[every] = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    assert students[0] == students[2]
    assert runs[0].metrics == [] and runs[0].files == {}
    assert [step for step, _ in runs[2].metrics] == [0, 2, 4]
    n = min(validation.PROMPTS, cfg.data.test_per_bucket)
    for _, row in runs[2].metrics:
        assert set(row) == {f"val/t2i/{k}{e}" for k in ("geneval", "realism")
                            for e in ("", "_lo", "_hi")}  # the realism route's bucket
        assert 0 <= row["val/t2i/realism"] <= 1 and row["val/t2i/geneval"] * n == round(row["val/t2i/geneval"] * n)
        assert row["val/t2i/realism_lo"] <= row["val/t2i/realism"] <= row["val/t2i/realism_hi"]
    assert set(runs[2].files) == {f"validation_step_{s:06d}.png" for s in (0, 2, 4)}
    assert all(w > 32 and h > 32 for w, h in runs[2].files.values())  # a labelled grid, not one image
