"""Curated data on disk: webdataset shards and the pandera-validated manifest.

Pixels: float tensors in [-1, 1], NCHW, in memory; PNG uint8 on disk.

A shard is `<shards>/<bucket>/<split>-NNNN.tar`; each sample in it holds
  `<key>.png`         the target image
  `<key>.src.png`     the source image (edits only)
  `<key>.json`        the sample record (world.Sample.to_dict() + bucket, split, uid)
Tar members carry fixed metadata (mtime 0, fixed owner) and sorted names, and there are no
floats in a shard (the prompts' embeddings are `pipeline.data.embeddings`), so the same params
give byte-identical shards on any machine and DVC sees no spurious change. `index.json` beside the
buckets' folders counts each shard's samples: a shard truncated on a sample boundary, which tar
reads without complaint, is caught by its count. External edit data (`pipeline.data.external`)
becomes the bucket `external`.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import torch
from PIL import Image

from pipeline.data import world

EXTERNAL = "external"
BUCKETS = world.BUCKETS + (EXTERNAL,)
SPLITS = ("train", "test")
INDEX = "index.json"  # shard (relative path) -> its number of samples

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

def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), 0, 0o444
    info.uname = info.gname = "danceopd"
    tar.addfile(info, io.BytesIO(payload))


def _write_sample(tar: tarfile.TarFile, record: dict, image: np.ndarray, source: np.ndarray | None) -> None:
    key = record["key"]
    members = {"json": json.dumps(record, sort_keys=True).encode(), "png": png_bytes(image)}
    if source is not None:
        members["src.png"] = png_bytes(source)
    for ext in sorted(members):
        _add(tar, f"{key}.{ext}", members[ext])


def write_bucket(items: list[tuple[dict, np.ndarray, np.ndarray | None]], root: Path, bucket: str, split: str,
                 shard_size: int) -> list[dict]:
    """Write (record, image, source) items as shards of `bucket`/`split`; return manifest rows."""
    rows = []
    (root / bucket).mkdir(parents=True, exist_ok=True)
    for start in range(0, len(items), shard_size):
        shard = f"{bucket}/{split}-{start // shard_size:04d}.tar"
        with tarfile.open(root / shard, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(start, min(start + shard_size, len(items))):
                record, image, source = items[i]
                _write_sample(tar, record, image, source)
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

def _decode(members: dict[str, bytes]) -> Record:
    meta = json.loads(members["json"])
    load_png = lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))  # noqa: E731
    return Record(
        key=meta["key"], bucket=meta["bucket"], split=meta["split"], task=meta["task"],
        category=meta["category"], prompt=meta["prompt"], image=load_png(members["png"]),
        source=load_png(members["src.png"]) if "src.png" in members else None, meta=meta,
    )


def _members(path: Path) -> Iterator[dict[str, bytes]]:
    """The members of each sample of a shard, grouped by key, in order."""
    with tarfile.open(path) as tar:
        current, members = None, {}
        for info in tar:
            key, ext = info.name.split(".", 1)
            if key != current and members:
                yield members
                members = {}
            current = key
            members[ext] = tar.extractfile(info).read()
        if members:
            yield members


def read_shard(path: str | Path, expected: int | None = None) -> list[Record]:
    """Decode the samples of one shard, in order; a damaged shard, or one without `expected`
    samples, is a `DataError` naming it."""
    path = Path(path)
    try:
        records = [_decode(members) for members in _members(path)]
    except (tarfile.TarError, OSError, KeyError, ValueError) as err:  # truncated tar, bad PNG or JSON
        raise DataError(f"{path}: damaged shard ({type(err).__name__}: {err}); rerun `dvc repro curate` "
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


def read_records(root: str | Path, bucket: str, split: str) -> list[Record]:
    """All records of a bucket/split, in shard order, each shard checked against `INDEX`."""
    root = Path(root)
    if not (root / INDEX).is_file():
        raise DataError(f"{root}: no {INDEX}; not a complete shard folder (rerun `dvc repro curate`)")
    counts = json.loads((root / INDEX).read_text())
    paths = shard_paths(root, bucket, split)
    if missing := [p.name for p in paths if p.relative_to(root).as_posix() not in counts]:
        raise DataError(f"{root}: shards {missing} are not in {INDEX}")
    if len(paths) != sum(1 for k in counts if k.startswith(f"{bucket}/{split}-")):
        raise DataError(f"{root}/{bucket}: {len(paths)} {split} shards, but {INDEX} lists more; one is missing")
    return [r for path in paths for r in read_shard(path, counts[path.relative_to(root).as_posix()])]


