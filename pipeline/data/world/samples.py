"""Samples: a pure function of (bucket, category, seed); buckets of them."""
from __future__ import annotations

import random
from dataclasses import dataclass, replace

from pipeline.data.world.scene import (BUCKETS, BUCKET_BASE, BUCKET_TASK, CATEGORIES, SPLIT_BASE, Scene,
                                       TASKS, _check_keys, _check_name)
from pipeline.data.world.prompts import _t2i
from pipeline.data.world.edits import _global_edit, _local_edit


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
