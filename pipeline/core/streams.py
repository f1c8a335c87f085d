"""Batches streamed from the shards, for data larger than memory (`data.stream: true`).

The small world fits in memory: `pipeline.core.batches` stacks it once (on the training device)
and draws rows with replacement from the training generator, so a resumed run replays its batches
exactly. A stream instead reads the shards through webdataset (`shards.stream_records`): each
process of a multi-process run its own shards, each DataLoader worker (`data.stream.workers`) a
part of those, samples mixed in a shuffle buffer (`data.stream.buffer`), epochs without end. A
batch is the next `batch_size` records, with their prompts' embeddings, moved to the device. The
routing of `routed_batches` is kept: one stream per route, the route of each step (or sample)
drawn by the route weights. A resumed streamed run starts its streams again from their beginning:
the same data distribution, not the batches an uninterrupted run would have drawn.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch.utils.data import DataLoader

from pipeline.core import compute
from pipeline.core.batches import Batch, Curated, stack_records
from pipeline.data import shards


def _records(sample: shards.Record) -> shards.Record:  # the DataLoader's collate: records as they are
    return sample


def record_stream(data: Curated, buckets: list[str], split: str, *, seed: int, workers: int,
                  buffer: int) -> Iterator[shards.Record]:
    """Endless records of `buckets`/`split`: this process's shards, read by `workers` DataLoader workers.

    Every reader (each worker of each process) needs a shard of its own: too few is an error naming
    the keys that set them, before any worker starts."""
    n_shards, processes = sum(len(shards.shard_paths(data.shards, b, split)) for b in buckets), compute.world()[1]
    if n_shards < processes * max(1, workers):
        raise ValueError(f"data.stream: {n_shards} shard(s) of {buckets}/{split} for compute.nproc = {processes} "
                         f"process(es) x data.stream.workers = {workers}: each reader needs one (smaller "
                         f"data.shard_size gives more shards, fewer workers need fewer)")
    dataset = shards.stream_records(data.shards, buckets, split, seed=seed, shuffle_buffer=buffer)
    return iter(DataLoader(dataset, batch_size=None, collate_fn=_records, num_workers=workers,
                           persistent_workers=workers > 0))


def _batch(records: list[shards.Record], data: Curated, device: torch.device,
           route_of_bucket: Mapping[str, int] | None) -> Batch:
    tensors = stack_records(records, data.embeddings, route_of_bucket, data.space).to(device)
    return tensors.batch(torch.arange(len(records), device=device))


def streamed_batches(data: Curated, buckets: list[str], batch_size: int, *, seed: int, device: torch.device,
                     workers: int, buffer: int) -> Iterator[Batch]:
    """SFT's stream: batches of the next `batch_size` records of `buckets`."""
    records = record_stream(data, buckets, "train", seed=seed, workers=workers, buffer=buffer)
    while True:
        yield _batch(list(itertools.islice(records, batch_size)), data, device, None)


def routed_streamed_batches(data: Curated, route_buckets: Sequence[list[str]], batch_size: int,
                            generator: torch.Generator, weights: Sequence[float], per: str, accum: int = 1, *,
                            seed: int, device: torch.device, workers: int, buffer: int) -> Iterator[Batch]:
    """Distillation's stream: `routed_batches`' routing (per step, sample or all) over one record
    stream per route (`route_buckets[k]`: route k's buckets), the routes drawn from `generator`."""
    route_of_bucket = {bucket: k for k, buckets in enumerate(route_buckets) for bucket in buckets}
    streams = [record_stream(data, buckets, "train", seed=seed + k, workers=workers, buffer=buffer)
               for k, buckets in enumerate(route_buckets)]
    w = torch.as_tensor(weights, dtype=torch.float64)

    def take(route: int, n: int) -> list[shards.Record]:
        return list(itertools.islice(streams[route], n))

    while True:
        if per == "step":
            route = int(torch.multinomial(w, 1, generator=generator))
            for _ in range(accum):
                yield _batch(take(route, batch_size), data, device, route_of_bucket)
        elif per == "all":
            for route in range(len(w)):
                for _ in range(accum):
                    yield _batch(take(route, batch_size), data, device, route_of_bucket)
        elif per == "sample":
            counts = torch.bincount(torch.multinomial(w, batch_size, replacement=True, generator=generator),
                                    minlength=len(w))
            yield _batch([r for route, n in enumerate(counts.tolist()) for r in take(route, n)], data, device,
                         route_of_bucket)
        else:
            raise ValueError(f"routed_streamed_batches: per must be sample, step or all, got {per!r}")
