"""Curated data on disk: webdataset shards and the pandera-validated manifest.

Pixels: float tensors in [-1, 1], NCHW, in memory; PNG uint8 on disk.

A shard is `<shards>/<bucket>/<split>-NNNN.tar`; each sample in it holds
  `<key>.png`         the target image
  `<key>.src.png`     the source image (edits only)
  `<key>.json`        the sample record (world.Sample.to_dict() + bucket, split, uid)
  `<key>.text.npy`    float16 (max_tokens, D) token embeddings of the prompt, padding zeroed
  `<key>.pooled.npy`  float16 (D,) pooled prompt embedding
Tar members carry fixed metadata (mtime 0, fixed owner) and sorted names, so the same params give
byte-identical shards and DVC sees no spurious change. Beside the buckets' folders, `null.npz`
holds the empty prompt's embeddings (the null condition of CFG). External edit data
(`pipeline.data.external`) becomes the bucket `external`.
"""
from __future__ import annotations

import io
import json
import os
import shutil
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
NULL_FILE = "null.npz"  # the empty prompt's embedding, the null condition of CFG

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
    text: np.ndarray  # (L, D) float16
    pooled: np.ndarray  # (D,) float16
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


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


# --- writing ------------------------------------------------------------------------------------

def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), 0, 0o444
    info.uname = info.gname = "danceopd"
    tar.addfile(info, io.BytesIO(payload))


def _write_sample(tar: tarfile.TarFile, record: dict, image: np.ndarray, source: np.ndarray | None,
                  text: np.ndarray, pooled: np.ndarray) -> None:
    key = record["key"]
    members = {
        "json": json.dumps(record, sort_keys=True).encode(),
        "png": png_bytes(image),
        "pooled.npy": _npy_bytes(pooled.astype(np.float16)),
        "text.npy": _npy_bytes(text.astype(np.float16)),
    }
    if source is not None:
        members["src.png"] = png_bytes(source)
    for ext in sorted(members):
        _add(tar, f"{key}.{ext}", members[ext])


def write_bucket(items: list[tuple[dict, np.ndarray, np.ndarray | None]], encoder, root: Path,
                 bucket: str, split: str, shard_size: int) -> list[dict]:
    """Write (record, image, source) items as shards of `bucket`/`split`; return manifest rows."""
    text, pooled = encoder.encode([record["prompt"] for record, _, _ in items])
    rows = []
    (root / bucket).mkdir(parents=True, exist_ok=True)
    for start in range(0, len(items), shard_size):
        shard = f"{bucket}/{split}-{start // shard_size:04d}.tar"
        with tarfile.open(root / shard, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(start, min(start + shard_size, len(items))):
                record, image, source = items[i]
                _write_sample(tar, record, image, source, text[i], pooled[i])
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


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written folder into place, so no half-written output is ever `final`."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


# --- reading ------------------------------------------------------------------------------------

def _decode(members: dict[str, bytes]) -> Record:
    meta = json.loads(members["json"])
    load_png = lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))  # noqa: E731
    return Record(
        key=meta["key"], bucket=meta["bucket"], split=meta["split"], task=meta["task"],
        category=meta["category"], prompt=meta["prompt"], image=load_png(members["png"]),
        source=load_png(members["src.png"]) if "src.png" in members else None,
        text=np.load(io.BytesIO(members["text.npy"])), pooled=np.load(io.BytesIO(members["pooled.npy"])),
        meta=meta,
    )


def read_shard(path: str | Path) -> Iterator[Record]:
    """Decode the samples of one shard, in order."""
    with tarfile.open(path) as tar:
        current, members = None, {}
        for info in tar:
            key, ext = info.name.split(".", 1)
            if key != current and members:
                yield _decode(members)
                members = {}
            current = key
            members[ext] = tar.extractfile(info).read()
        if members:
            yield _decode(members)


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


def read_null(root: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The null text (L, D) and pooled (D,) embeddings stored with the shards, as float32."""
    with np.load(Path(root) / NULL_FILE) as null:
        return torch.from_numpy(null["text"]).float(), torch.from_numpy(null["pooled"]).float()


def read_records(root: str | Path, bucket: str, split: str) -> list[Record]:
    """All records of a bucket/split, in shard order."""
    return [r for path in shard_paths(root, bucket, split) for r in read_shard(path)]


