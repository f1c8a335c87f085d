"""Curation: render the ShapesEdit buckets (and ingest any external edit CSV) into shards + manifest.

The output is a pure function of the `world` and `data` params on any machine: samples come from
`world.make_bucket` (seeded), shards hold no floats and are byte-stable (`pipeline.data.shards`). Everything is
written to a temporary folder and renamed into place only when complete, so a failed or killed
run never leaves a half-written shard folder that reads as valid.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data import outputs, shards, world
from pipeline.curation.external import external_items


def world_items(bucket: str, split: str, n: int, size: int) -> list[tuple[dict, np.ndarray, np.ndarray | None]]:
    """Render `n` ShapesEdit samples of a bucket/split as (record, image, source) items."""
    items = []
    for sample in world.make_bucket(bucket, split, n):
        record = sample.to_dict() | dict(zip(shards.RECORD_EXTRAS, (bucket, split, sample.key)))
        source = None if sample.source is None else world.render(sample.source, size)
        items.append((record, world.render(sample.target, size), source))
    return items


def curate(world_params, data_params, out: Path, manifest: Path) -> pd.DataFrame:
    """Write every bucket's shards to `out` and the manifest; nothing is left half-written on error."""
    external = {}
    if data_params.external_csv:  # read and check it all before writing anything
        external = external_items(data_params.external_csv, world_params.resolution, data_params.external_test_fraction)
    rows = []
    with outputs.atomic_dir(out) as tmp:
        for bucket in world.BUCKETS:
            for split, n in (("train", data_params.train_per_bucket), ("test", data_params.test_per_bucket)):
                items = world_items(bucket, split, n, world_params.resolution)
                rows += shards.write_bucket(items, tmp, bucket, split, data_params.shard_size)
        for split, items in external.items():
            if items:
                rows += shards.write_bucket(items, tmp, shards.EXTERNAL, split, data_params.shard_size)
        shards.validate_manifest(pd.DataFrame(rows, columns=list(shards.MANIFEST_SCHEMA.columns)), str(manifest))
        shards.write_index(tmp, rows)
    return shards.write_manifest(rows, manifest)
