"""pipeline.train.router: the text -> task classifier on pooled prompt embeddings."""
import dataclasses
from types import SimpleNamespace

import pytest
import torch

from pipeline.core.batches import TensorSet
from pipeline.core.router import Router
from pipeline.data import world
from pipeline.train.router import labelled_subset, train_router

TASK_BUCKETS = ("t2i", "local_edit", "global_edit")


def prompt_set(encoder, split: str, per_bucket: int) -> TensorSet:
    """ShapesEdit prompts of every task bucket, encoded by the real frozen encoder (pixels unused)."""
    samples = [s for b in TASK_BUCKETS for s in world.make_bucket(b, split, per_bucket)]
    text, pooled = encoder.encode([s.prompt for s in samples])
    n = len(samples)
    return TensorSet(
        image=torch.zeros(n, 3, 1, 1, dtype=torch.uint8), source=torch.zeros(n, 3, 1, 1, dtype=torch.uint8),
        has_source=torch.tensor([s.task != "t2i" for s in samples]), prompt=torch.arange(n), text_table=torch.from_numpy(text).half(),
        pooled_table=torch.from_numpy(pooled).half(),
        task=torch.tensor([world.TASKS.index(s.task) for s in samples]), route=None,
        records=[SimpleNamespace(bucket=s.task) for s in samples],
    )


@pytest.fixture(scope="module")
def prompts(encoder):
    return prompt_set(encoder, "train", 400), prompt_set(encoder, "test", 60)


@pytest.fixture(scope="module")
def trained(prompts):
    return train_router(prompts[0], label_fraction=0.05, steps=300, lr=1e-3, seed=0)


def test_router_learns_the_task_from_5_percent_of_the_labels(prompts, trained):
    router, info = trained
    assert info["labelled"] == 60  # 5% of 1200
    assert info["train_accuracy"] >= 0.95
    accuracy = router.accuracy(prompts[1])
    assert accuracy >= 0.95, accuracy
    predicted = router.predict(prompts[1].pooled[:5].float())
    assert predicted.dtype == torch.long and predicted.shape == (5,)


def test_router_as_a_route_of(prompts, trained):
    router, _ = trained
    x, cond = prompts[1].batch(torch.arange(0, 180, 30))
    assert torch.equal(router.route(cond), router.predict(cond.pooled))


def test_label_fraction_picks_a_seeded_subset_of_the_right_size():
    picked = labelled_subset(1000, 0.05, seed=3)
    assert len(picked) == 50 and len(set(picked.tolist())) == 50 and picked.max() < 1000
    assert torch.equal(picked, labelled_subset(1000, 0.05, seed=3))
    assert not torch.equal(picked, labelled_subset(1000, 0.05, seed=4))
    assert len(labelled_subset(7, 1.0, seed=0)) == 7
    for bad in (0.0, 1.5, 0.01):  # 0.01 of 7 samples labels none
        with pytest.raises(ValueError, match="router.label_fraction"):
            labelled_subset(7, bad, seed=0)


def test_training_uses_only_the_labelled_samples(prompts):
    train_set = prompts[0]
    picked = labelled_subset(len(train_set.task), 0.05, seed=0)
    scrambled = dataclasses.replace(train_set, pooled_table=train_set.pooled_table.clone(),
                                    task=train_set.task.clone())
    unlabelled = torch.ones(len(scrambled.task), dtype=torch.bool)
    unlabelled[picked] = False
    scrambled.task[unlabelled] = 0  # wrong labels on the unlabelled samples must change nothing
    scrambled.pooled_table[unlabelled] = 0  # one table row per sample in this set
    a, _ = train_router(train_set, 0.05, steps=20, lr=1e-3, seed=0)
    b, _ = train_router(scrambled, 0.05, steps=20, lr=1e-3, seed=0)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_save_load_round_trip(tmp_path, prompts, trained):
    router, _ = trained
    router.save(tmp_path / "router")
    assert not (tmp_path / "router.tmp").exists()
    loaded = Router.load(tmp_path / "router")
    assert loaded.classes == world.TASKS and loaded.dim == router.dim
    pooled = prompts[1].pooled.float()
    assert torch.equal(loaded(pooled), router(pooled))
    router.save(tmp_path / "router")  # overwriting an existing router works too
    with pytest.raises(FileNotFoundError, match="not a router"):
        Router.load(tmp_path)
