"""Curated data on disk: webdataset shards and the pandera-validated manifest.

Pixels: float tensors in [-1, 1], NCHW, in memory; PNG uint8 on disk.

A shard is `<shards>/<bucket>/<split>-NNNN.tar`; each sample in it holds
  `<key>.png`         the target image
  `<key>.src.png`     the source image (edits only)
  `<key>.json`        the sample record (world.Sample.to_dict() + bucket, split, uid)
Shards are written by webdataset's `TarWriter` with fixed member metadata (`TAR_METADATA`: mtime 0,
a fixed owner and mode; it adds a sample's members in sorted order), and there are no floats in a
shard (the prompts' embeddings are `pipeline.data.embeddings`), so the same params give
byte-identical shards on any machine and DVC sees no spurious change. `index.json` beside the
buckets' folders counts each shard's samples: a shard truncated on a sample boundary, which tar
reads without complaint, is caught by its count. External edit data (`pipeline.curation.external`)
becomes the bucket `external`.

Two readers, both webdataset pipelines yielding `Record`s: `read_records` loads a bucket/split into
memory, in order, each shard checked against `index.json` (the small world); `stream_records` is
an endless, shuffled stream split across ranks and DataLoader workers, for data larger than memory.
"""
from __future__ import annotations

import io
import itertools
import json
import os
import tarfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import torch
import webdataset as wds
from PIL import Image

from pipeline.data import world

EXTERNAL = "external"
BUCKETS = world.BUCKETS + (EXTERNAL,)
SPLITS = ("train", "test")
INDEX = "index.json"  # shard (relative path) -> its number of samples
TAR_METADATA = {"mtime": 0, "user": "danceopd", "group": "danceopd", "mode": 0o444}  # byte-stable members

MANIFEST_SCHEMA = pa.DataFrameSchema(
    {
        "key": pa.Column(str, pa.Check.str_matches(r"^[A-Za-z0-9_\-]+$"), unique=True),
        "uid": pa.Column(str, pa.Check.str_length(min_value=1)),
        "bucket": pa.Column(str, pa.Check.isin(BUCKETS)),
        "split": pa.Column(str, pa.Check.isin(SPLITS)),
        "task": pa.Column(str, pa.Check.isin(world.TASKS)),
        "category": pa.Column(str, pa.Check.isin(world.T2I_CATEGORIES + world.EDIT_CATEGORIES + (EXTERNAL,))),
        "prompt": pa.Column(str, pa.Check.str_length(min_value=1)),
        "has_source": pa.Column(bool),
        "seed": pa.Column(int, pa.Check.ge(-1)),  # -1: external data has no world seed
        "shard": pa.Column(str),
    },
    checks=pa.Check(lambda df: df["has_source"] == (df["task"] != "t2i"), error="edits have a source, t2i not"),
    strict=True,
    ordered=True,
)


class DataError(ValueError):
    """Bad input data; the message names the file, row and column."""


@dataclass
class Record:
    """One curated sample, decoded: everything a training or evaluation step needs."""

    key: str
    bucket: str
    split: str
    task: str
    category: str
    prompt: str
    image: np.ndarray  # (H, W, 3) uint8 target
    source: np.ndarray | None  # (H, W, 3) uint8, edits only
    meta: dict  # the full JSON record (scenes, spec, seed, uid)


# --- images -------------------------------------------------------------------------------------

def png_bytes(image: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 array as PNG (deterministic: no timestamps)."""
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float tensor in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) tensor in [-1, 1] -> (N, H, W, 3) uint8 (clipped)."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()


# --- writing ------------------------------------------------------------------------------------

def _sample(record: dict, image: np.ndarray, source: np.ndarray | None) -> dict:
    """A webdataset sample of already-encoded members (sorted JSON, PNGs)."""
    sample = {"__key__": record["key"], "json": json.dumps(record, sort_keys=True).encode(), "png": png_bytes(image)}
    if source is not None:
        sample["src.png"] = png_bytes(source)
    return sample


def write_bucket(items: list[tuple[dict, np.ndarray, np.ndarray | None]], root: Path, bucket: str, split: str,
                 shard_size: int) -> list[dict]:
    """Write (record, image, source) items as shards of `bucket`/`split`; return manifest rows."""
    rows = []
    (root / bucket).mkdir(parents=True, exist_ok=True)
    for start in range(0, len(items), shard_size):
        shard = f"{bucket}/{split}-{start // shard_size:04d}.tar"
        # A TarWriter per shard, not a ShardWriter: its `%` file-name pattern would misread a root
        # containing `%`, and it creates its first shard on construction (an empty one, given no items).
        with open(root / shard, "wb") as stream, wds.TarWriter(stream, encoder=False, **TAR_METADATA) as tar:
            for record, image, source in items[start:start + shard_size]:
                tar.write(_sample(record, image, source))
                rows.append(_manifest_row(record, shard))
    return rows


def _manifest_row(record: dict, shard: str) -> dict:
    return {
        "key": record["key"], "uid": record["uid"], "bucket": record["bucket"],
        "split": record["split"], "task": record["task"], "category": record["category"],
        "prompt": record["prompt"], "has_source": record["task"] != "t2i",
        "seed": record["seed"], "shard": shard,
    }


def describe_failures(err: pa.errors.SchemaErrors, row_offset: int = 0) -> str:
    lines = []
    for case in err.failure_cases.head(5).itertuples():
        column = case.column if isinstance(case.column, str) else "(table)"
        row = "" if pd.isna(case.index) else f"row {int(case.index) + row_offset}, "
        lines.append(f"{row}column {column!r}: {case.check} failed (value {case.failure_case!r})")
    more = len(err.failure_cases) - len(lines)
    return "; ".join(lines) + (f"; and {more} more" if more > 0 else "")



def validate_manifest(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Validate the manifest with pandera; errors name `where`, the row and the column."""
    try:
        return MANIFEST_SCHEMA.validate(df, lazy=True)
    except pa.errors.SchemaErrors as err:
        raise DataError(f"{where}: {describe_failures(err)}") from err


def write_manifest(rows: list[dict], path: Path) -> pd.DataFrame:
    """Validate and write the manifest parquet atomically."""
    df = validate_manifest(pd.DataFrame(rows, columns=list(MANIFEST_SCHEMA.columns)), str(path))
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return df


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and validate a manifest."""
    return validate_manifest(pd.read_parquet(path), str(path))


# --- reading ------------------------------------------------------------------------------------

def _record(sample: dict) -> Record:
    """A `Record` from a webdataset sample decoded with "rgb8" (JSON parsed, PNGs as uint8 arrays)."""
    meta = sample["json"]
    return Record(
        key=meta["key"], bucket=meta["bucket"], split=meta["split"], task=meta["task"],
        category=meta["category"], prompt=meta["prompt"], image=sample["png"], source=sample.get("src.png"),
        meta=meta,
    )


def read_shard(path: str | Path, expected: int | None = None) -> list[Record]:
    """Decode the samples of one shard, in order; a damaged shard, or one without `expected`
    samples, is a `DataError` naming it."""
    path = Path(path)
    # The whole shard in this process (no node or worker split); an empty one is for `expected` to judge.
    dataset = wds.WebDataset([str(path)], shardshuffle=False, nodesplitter=None, workersplitter=None,
                             empty_check=False)
    try:
        records = list(dataset.decode("rgb8").map(_record))
    except (tarfile.TarError, OSError, KeyError, ValueError, wds.DecodingError) as err:  # truncated, bad PNG/JSON
        reason = err.__cause__ or err  # webdataset wraps a member it cannot decode in a DecodingError...
        detail = reason.args[0] if reason.args else ""  # ...and appends the stream and url to a tar error's args
        raise DataError(f"{path}: damaged shard ({type(reason).__name__}: {detail}); rerun `dvc repro curate` "
                        f"or `dvc checkout`") from err
    if expected is not None and len(records) != expected:
        raise DataError(f"{path}: {len(records)} samples, but {INDEX} says {expected}: the shard is "
                        f"truncated; rerun `dvc repro curate` or `dvc checkout`")
    return records


def shard_paths(root: str | Path, bucket: str, split: str) -> list[Path]:
    """The shards of a bucket/split, sorted; an error if there are none."""
    paths = sorted(Path(root, bucket).glob(f"{split}-*.tar"))
    if not paths:
        raise FileNotFoundError(f"{Path(root, bucket)}: no {split} shards (run `dvc repro curate`)")
    return paths


RECORD_EXTRAS = ("bucket", "split", "uid")  # what a shard record adds to world.Sample.to_dict()


def world_sample(meta: dict) -> world.Sample:
    """The world.Sample of a ShapesEdit record (external records have none)."""
    if meta["bucket"] == EXTERNAL:
        raise ValueError(f"{meta['key']}: external data has no ShapesEdit scene")
    return world.Sample.from_dict({k: v for k, v in meta.items() if k not in RECORD_EXTRAS})


def write_index(root: Path, rows: list[dict]) -> None:
    """`INDEX`: each shard's number of samples, from the manifest rows."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["shard"]] = counts.get(row["shard"], 0) + 1
    (root / INDEX).write_text(json.dumps(counts, indent=1, sort_keys=True) + "\n")


def read_records(root: str | Path, bucket: str, split: str, limit: int | None = None) -> list[Record]:
    """The records of a bucket/split (the first `limit`, reading only the shards they are in), in
    shard order, each shard read checked against `INDEX`."""
    root = Path(root)
    if not (root / INDEX).is_file():
        raise DataError(f"{root}: no {INDEX}; not a complete shard folder (rerun `dvc repro curate`)")
    counts = json.loads((root / INDEX).read_text())
    paths = shard_paths(root, bucket, split)
    if missing := [p.name for p in paths if p.relative_to(root).as_posix() not in counts]:
        raise DataError(f"{root}: shards {missing} are not in {INDEX}")
    if len(paths) != sum(1 for k in counts if k.startswith(f"{bucket}/{split}-")):
        raise DataError(f"{root}/{bucket}: {len(paths)} {split} shards, but {INDEX} lists more; one is missing")
    records = []
    for path in paths:
        if limit is not None and len(records) >= limit:
            break
        records += read_shard(path, counts[path.relative_to(root).as_posix()])
    return records[:limit]


def _split_by_rank(urls, rank: int, world_size: int):
    """The shards of one rank: every `world_size`-th, from the `rank`-th."""
    return itertools.islice(urls, rank, None, world_size)


def stream_records(root: str | Path, buckets: list[str], split: str, *, seed: int, shuffle_buffer: int,
                   rank: int | None = None, world_size: int | None = None) -> wds.WebDataset:
    """An endless, shuffled stream of the `Record`s of `buckets`/`split`: a torch IterableDataset.

    For data larger than memory, in multi-process training; the small world fits in memory, and
    `read_records` loads it (checking each shard against `INDEX`, which a stream cannot). Each rank
    reads every `world_size`-th shard from its `rank`-th (both given, or neither: then torchrun's
    RANK/WORLD_SIZE, or torch.distributed's when initialised, or all shards), each DataLoader
    worker a disjoint part of its rank's shards, so one epoch of every rank's workers sees each
    sample once. Epochs repeat without end, each in its own shard order (`seed` and the epoch),
    samples mixed in a buffer of `shuffle_buffer`; the same seed gives the same stream.
    """
    if (rank is None) != (world_size is None):
        raise ValueError(f"give both rank and world_size, or neither (rank={rank}, world_size={world_size})")
    urls = [str(path) for bucket in buckets for path in shard_paths(root, bucket, split)]
    nodesplitter = wds.split_by_node if rank is None else partial(_split_by_rank, rank=rank, world_size=world_size)
    dataset = wds.WebDataset(urls, shardshuffle=len(urls), detshuffle=True, seed=seed, nodesplitter=nodesplitter,
                             workersplitter=wds.split_by_worker)
    # detshuffle seeds each epoch's buffer with seed + epoch (`.shuffle(seed=)` would repeat one order).
    return dataset.compose(wds.filters.detshuffle(shuffle_buffer, seed=seed)).decode("rgb8").map(_record).repeat()
