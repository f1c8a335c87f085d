"""Batches: curated records as stacked tensors, and the seeded batch streams training draws from.

A `TensorSet` holds one or more buckets in memory (uint8 images; the float16 text embeddings of
their distinct prompts from the `pipeline.data.embeddings` store, once each: many rows share a
prompt, and a row's embeddings would otherwise cost 6x its image) and
turns row indices into a batch ``(x, cond)``: x (B, 3, H, W) float in [-1, 1] (the pixel
convention of `pipeline.data.shards`) and a `Cond`. A set loaded in a VAE's latent space (the
`Curated.space` of a model from ``model.pretrained``, `pipeline.core.latents`) holds its targets and
sources as float latents instead, read from the embeddings store, where `embed` encoded every curated
image once (`pipeline.core.latents.encode_records`), or encoded at load when the store holds none of that VAE; its
batches are those latents (B, C, h, w). Each row carries its ``task`` (an index into
`world.TASKS`) and, when the set was loaded for a routed teacher, its ``route`` (an index into
that teacher's routes, `pipeline.core.teacher`), a separate column: the realism bucket's rows are
T2I tasks on their own route.

`random_batches` is the stream SFT iterates: rows drawn with replacement from a `torch.Generator`
(on the generator's device: a set moved to the GPU with `TensorSet.to` gives batches with no copy),
uniformly or by per-row weights; `routed_batches` the stream distillation iterates, with its
routes drawn per sample, per optimizer step, or all in every step. Both draw lazily, one batch
per `next`, so a training loop that checkpoints the generator checkpoints the stream too.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pipeline.core.fields import Cond
from pipeline.core.latents import PIXELS, Space, encode_pixels, unit
from pipeline.data import shards, world
from pipeline.data.embeddings import Embeddings

Batch = tuple[Tensor, Cond]  # x (B, C, H, W) in [-1, 1], its condition


@dataclass
class TensorSet:
    """Records of one or more buckets as stacked tensors, for drawing batches."""

    image: Tensor  # (N, 3, H, W) uint8 targets, or (N, C, h, w) float latents
    source: Tensor  # the same for the sources (anything for T2I rows: masked out)
    has_source: Tensor  # (N,) bool
    prompt: Tensor  # (N,) long: each row's row of the two tables below (rows share a prompt's embedding)
    text_table: Tensor  # (P, L, D) float16, one per distinct prompt
    pooled_table: Tensor  # (P, D) float16
    task: Tensor  # (N,) long index into world.TASKS
    route: Tensor | None  # (N,) long index into a teacher's routes; None when not loaded for one
    records: list[shards.Record]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def pooled(self) -> Tensor:
        """(N, D) float16: each row's pooled prompt embedding."""
        return self.pooled_table[self.prompt]

    @property
    def text_dim(self) -> int:
        return self.text_table.shape[-1]

    @property
    def pooled_dim(self) -> int:
        return self.pooled_table.shape[-1]  # the text width, except for SD3's encoders

    def to(self, device: torch.device | str) -> TensorSet:
        """This set with every tensor on `device`: training keeps the small world resident on the GPU."""
        moved = {k: None if (v := getattr(self, k)) is None else v.to(device)
                 for k in ("image", "source", "has_source", "prompt", "text_table", "pooled_table", "task", "route")}
        return TensorSet(**moved, records=self.records)

    def batch(self, idx: Tensor) -> Batch:
        """Images (B, 3, H, W) in [-1, 1] (or latents (B, C, h, w)) and their condition, for the indices `idx`."""
        x = unit(self.image[idx])
        keep = self.has_source[idx].view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        # A T2I row's source is exactly 0.0, what the backbone feeds for `source=None`.
        source = torch.where(keep, unit(self.source[idx]), 0.0)  # (B, 3, H, W)
        route = None if self.route is None else self.route[idx]
        rows = self.prompt[idx]
        return x, Cond(text=self.text_table[rows].float(), pooled=self.pooled_table[rows].float(), source=source,
                       route=route)


def load_tensors(root: str | Path, buckets: list[str], split: str, embeddings: Embeddings, limit: int | None = None,
                 route_of_bucket: Mapping[str, int] | None = None, space: Space = PIXELS) -> TensorSet:
    """Stack the records of `buckets` (the first `limit` of each, if given) with their prompts' embeddings.

    `route_of_bucket` (bucket -> route index, `teacher.route_index`) fills the route column. In a
    VAE's `space` the targets and the edit sources are encoded here, once (pixels stay uint8).
    """
    records = [r for b in buckets for r in shards.read_records(root, b, split, limit)]
    return stack_records(records, embeddings, route_of_bucket, space)


def stack_records(records: list[shards.Record], embeddings: Embeddings,
                  route_of_bucket: Mapping[str, int] | None = None, space: Space = PIXELS) -> TensorSet:
    """`records` as a `TensorSet`, with their prompts' embeddings (and routes, by `route_of_bucket`;
    in a VAE's `space`, encoded: `load_tensors`)."""
    prompts = sorted({r.prompt for r in records})
    text, pooled = embeddings.lookup(prompts)
    row_of = {p: i for i, p in enumerate(prompts)}
    route = None
    if route_of_bucket is not None:
        if unrouted := sorted({r.bucket for r in records} - set(route_of_bucket)):
            raise ValueError(f"load_tensors: no route takes the bucket(s) {unrouted}")
        route = torch.tensor([route_of_bucket[r.bucket] for r in records])
    image = torch.from_numpy(np.stack([r.image for r in records])).permute(0, 3, 1, 2).contiguous()
    source = np.stack([r.source if r.source is not None else np.zeros_like(r.image) for r in records])
    source = torch.from_numpy(source).permute(0, 3, 1, 2).contiguous()
    has_source = torch.tensor([r.source is not None for r in records])
    if space is not PIXELS and (stored := embeddings.latents_of(space.card())) is not None:
        image, source = stored.lookup([r.key for r in records])  # encoded once, by `embed`
    elif space is not PIXELS:  # a VAE's latents, encoded here (T2I rows' sources: zeros, masked out)
        image, source = encode_pixels(image, space), encode_pixels(source, space, has_source)
    return TensorSet(
        image=image,
        source=source,
        has_source=has_source,
        prompt=torch.tensor([row_of[r.prompt] for r in records]),
        text_table=torch.from_numpy(text),
        pooled_table=torch.from_numpy(pooled),
        task=torch.tensor([world.TASKS.index(r.task) for r in records]),
        route=route,
        records=records,
    )


def draw_rows(n: int, batch: int, generator: torch.Generator, weights: Tensor | None = None) -> Tensor:
    """(batch,) row indices drawn with replacement, uniform or by the per-row weights, on the generator's device."""
    if weights is None:
        return torch.randint(n, (batch,), generator=generator, device=generator.device)
    return torch.multinomial(weights.to(generator.device), batch, replacement=True, generator=generator)


def random_batches(data: TensorSet, batch_size: int, generator: torch.Generator,
                   weights: Tensor | None = None) -> Iterator[Batch]:
    """An endless stream of batches of `data`, rows drawn from `generator` one batch at a time."""
    while True:
        yield data.batch(draw_rows(len(data), batch_size, generator, weights))


@dataclass
class Curated:
    """The curated data a stage reads: the shards folder and its prompts' embeddings store, seen in a
    model's space (pixels, or a VAE's latents: `pipeline.core.latents`)."""

    shards: Path
    embeddings: Embeddings
    space: Space = PIXELS

    @classmethod
    def open(cls, shards_dir: str | Path, embeddings_dir: str | Path, space: Space = PIXELS) -> Curated:
        return cls(Path(shards_dir), Embeddings.load(embeddings_dir), space)

    def seen_in(self, space: Space) -> Curated:
        """The same data, loaded in `space`."""
        return Curated(self.shards, self.embeddings, space)

    def tensors(self, buckets: list[str], split: str, limit: int | None = None,
                route_of_bucket: Mapping[str, int] | None = None) -> TensorSet:
        """`load_tensors` of these shards and embeddings, in this data's space."""
        return load_tensors(self.shards, buckets, split, self.embeddings, limit, route_of_bucket, self.space)

    def null(self) -> tuple[Tensor, Tensor]:
        """The null text (L, D) and pooled (D,) embeddings (float32): the null condition of CFG."""
        return self.embeddings.null()


def routed_batches(data: TensorSet, batch_size: int, generator: torch.Generator, weights: Sequence[float],
                   per: str, accum: int = 1, route_generator: torch.Generator | None = None) -> Iterator[Batch]:
    """An endless stream of batches of a routed `data` (its `route` column set), routes drawn by `weights`.

    - ``sample``: every row drawn independently, its route with probability ∝ weights (routes mix in
      a batch); rows uniform within a route.
    - ``step``: one route per optimizer step (DanceOPD's reference: G = 1): the route is drawn once,
      and all `accum` micro-batches of that step come from its rows.
    - ``all``: every optimizer step holds one micro-batch of each route in turn (DiffusionOPD's and
      Flow-OPD's G = M: both buckets in every update); `accum` is then micro-batches per route.

    ``step`` draws its route from `route_generator` (default: `generator`): one seeded alike in every
    process of a multi-process run gives all of them the same route each step, as the reference's
    broadcast from rank 0.
    """
    if data.route is None:
        raise ValueError("routed_batches: the data has no route column (load it with route_of_bucket)")
    w = torch.as_tensor(weights, dtype=torch.float64)
    rows = [torch.nonzero(data.route == k).flatten() for k in range(len(w))]  # the rows of each route
    if empty := [k for k, r in enumerate(rows) if len(r) == 0 and w[k] > 0]:
        raise ValueError(f"routed_batches: routes {empty} have a weight but no rows")
    if per == "sample":
        counts = torch.tensor([len(r) for r in rows], dtype=torch.float64).clamp(min=1)
        row_weights = (w / counts).to(data.route.device)[data.route]  # (N,)
        yield from random_batches(data, batch_size, generator, row_weights)
    elif per == "step":
        route_generator = route_generator or generator
        w = w.to(route_generator.device)
        while True:  # a device generator syncs once per optimizer step here: the route's rows are chosen on the host
            route = int(torch.multinomial(w, 1, generator=route_generator))
            for _ in range(accum):
                yield data.batch(rows[route][draw_rows(len(rows[route]), batch_size, generator)])
    elif per == "all":
        while True:
            for route in range(len(w)):
                for _ in range(accum):
                    yield data.batch(rows[route][draw_rows(len(rows[route]), batch_size, generator)])
    else:
        raise ValueError(f"routed_batches: per must be sample, step or all, got {per!r}")
