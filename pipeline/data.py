"""Data on disk: webdataset shards, the pandera-validated manifest, and external-data ingest.

Pixels: float tensors in [-1, 1], NCHW, in memory; PNG uint8 on disk.

A shard is `<shards>/<bucket>/<split>-NNNN.tar`; each sample in it holds
  `<key>.png`         the target image
  `<key>.src.png`     the source image (edits only)
  `<key>.json`        the sample record (world.Sample.to_dict() + bucket, split, uid)
  `<key>.text.npy`    float16 (max_tokens, D) token embeddings of the prompt, padding zeroed
  `<key>.pooled.npy`  float16 (D,) pooled prompt embedding
Tar members carry fixed metadata (mtime 0, fixed owner) and sorted names, so the same params give
byte-identical shards and DVC sees no spurious change.

External edit data is a CSV with columns uid,task,prompt,source_image,target_image (image paths
relative to the CSV); it becomes the bucket `external`, split by a hash of uid.
"""
from __future__ import annotations

import hashlib
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

from pipeline import world
from pipeline.fields import Cond

EXTERNAL = "external"
BUCKETS = world.BUCKETS + (EXTERNAL,)
SPLITS = ("train", "test")
NULL_FILE = "null.npz"  # the empty prompt's embedding, the null condition of CFG
EXTERNAL_COLUMNS = ["uid", "task", "prompt", "source_image", "target_image"]

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

EXTERNAL_SCHEMA = pa.DataFrameSchema(
    {
        "uid": pa.Column(str, pa.Check.str_length(min_value=1), unique=True),
        "task": pa.Column(str, pa.Check.isin(["local_edit", "global_edit"])),
        "prompt": pa.Column(str, pa.Check.str_length(min_value=1)),
        "source_image": pa.Column(str, pa.Check.str_length(min_value=1)),
        "target_image": pa.Column(str, pa.Check.str_length(min_value=1)),
    },
    strict=True,
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


def world_items(bucket: str, split: str, n: int, size: int) -> list[tuple[dict, np.ndarray, np.ndarray | None]]:
    """Render `n` ShapesEdit samples of a bucket/split as (record, image, source) items."""
    items = []
    for sample in world.make_bucket(bucket, split, n):
        record = sample.to_dict() | dict(zip(RECORD_EXTRAS, (bucket, split, sample.key)))
        source = None if sample.source is None else world.render(sample.source, size)
        items.append((record, world.render(sample.target, size), source))
    return items


def validate_manifest(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Validate the manifest with pandera; errors name `where`, the row and the column."""
    try:
        return MANIFEST_SCHEMA.validate(df, lazy=True)
    except pa.errors.SchemaErrors as err:
        raise DataError(f"{where}: {_describe_failures(err)}") from err


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


@dataclass
class TensorSet:
    """Records of one or more buckets as stacked tensors, for sampling training batches."""

    image: torch.Tensor  # (N, 3, H, W) uint8 targets
    source: torch.Tensor  # (N, 3, H, W) uint8 sources (anything for T2I rows: masked out)
    has_source: torch.Tensor  # (N,) bool
    text: torch.Tensor  # (N, L, D) float16
    pooled: torch.Tensor  # (N, D) float16
    task: torch.Tensor  # (N,) long index into world.TASKS
    records: list[Record]

    def __len__(self) -> int:
        return len(self.records)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, Cond]:
        """Images (B, 3, H, W) in [-1, 1] and their condition, for the indices `idx`."""
        x = self.image[idx].float() / 127.5 - 1.0
        keep = self.has_source[idx].view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        # A T2I row's source is exactly 0.0, what the backbone feeds for `source=None`.
        source = torch.where(keep, self.source[idx].float() / 127.5 - 1.0, 0.0)  # (B, 3, H, W)
        cond = Cond(text=self.text[idx].float(), pooled=self.pooled[idx].float(), source=source,
                    route=self.task[idx])
        return x, cond


def load_tensors(root: str | Path, buckets: list[str], split: str, limit: int | None = None) -> TensorSet:
    """Stack the records of `buckets` (the first `limit` of each, if given)."""
    records = [r for b in buckets for r in read_records(root, b, split)[:limit]]
    image = np.stack([r.image for r in records])
    source = np.stack([r.source if r.source is not None else np.zeros_like(r.image) for r in records])
    return TensorSet(
        image=torch.from_numpy(image).permute(0, 3, 1, 2).contiguous(),
        source=torch.from_numpy(source).permute(0, 3, 1, 2).contiguous(),
        has_source=torch.tensor([r.source is not None for r in records]),
        text=torch.from_numpy(np.stack([r.text for r in records])),
        pooled=torch.from_numpy(np.stack([r.pooled for r in records])),
        task=torch.tensor([world.TASKS.index(r.task) for r in records]),
        records=records,
    )


# --- external data ------------------------------------------------------------------------------

def _describe_failures(err: pa.errors.SchemaErrors, row_offset: int = 0) -> str:
    lines = []
    for case in err.failure_cases.head(5).itertuples():
        column = case.column if isinstance(case.column, str) else "(table)"
        row = "" if pd.isna(case.index) else f"row {int(case.index) + row_offset}, "
        lines.append(f"{row}column {column!r}: {case.check} failed (value {case.failure_case!r})")
    more = len(err.failure_cases) - len(lines)
    return "; ".join(lines) + (f"; and {more} more" if more > 0 else "")


def _read_external_csv(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: cannot read CSV: {err}") from err
    df.index = df.index + 1  # rows are numbered from 1, as a person counts data rows
    missing = [c for c in EXTERNAL_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r} (expected {EXTERNAL_COLUMNS})")
    try:
        return EXTERNAL_SCHEMA.validate(df, lazy=True)
    except pa.errors.SchemaErrors as err:
        raise DataError(f"{path}: {_describe_failures(err)}") from err


def _load_image(path: Path, size: int, where: str) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BICUBIC)
            return np.asarray(img)
    except (OSError, ValueError) as err:
        raise DataError(f"{where}: cannot read image {str(path)!r}: {err}") from err


def _external_split(uid: str, test_fraction: float) -> str:
    digest = int(hashlib.sha256(uid.encode()).hexdigest()[:8], 16)
    return "test" if digest / 0xFFFFFFFF < test_fraction else "train"


def external_items(csv: str | Path, size: int, test_fraction: float) -> dict[str, list]:
    """Validate an external edit CSV and load all its images; {split: [(record, image, source)]}.

    Everything is read and checked before anything is written, so a bad row leaves no output.
    """
    csv = Path(csv)
    df = _read_external_csv(csv)
    items: dict[str, list] = {split: [] for split in SPLITS}
    for row in df.itertuples():
        where = f"{csv}: row {row.Index}"
        source = _load_image(csv.parent / row.source_image, size, f"{where}, column 'source_image'")
        target = _load_image(csv.parent / row.target_image, size, f"{where}, column 'target_image'")
        split = _external_split(row.uid, test_fraction)
        record = {
            "key": f"{EXTERNAL}-{split}-{len(items[split]):06d}", "uid": row.uid, "bucket": EXTERNAL,
            "split": split, "task": row.task, "category": EXTERNAL, "prompt": row.prompt,
            "source_image": row.source_image, "target_image": row.target_image, "seed": -1,
            "source": None, "target": None, "spec": None,  # scenes are unknown for external data
        }
        items[split].append((record, target, source))
    return items


def curate(cfg_world, cfg_data, encoder, shards: Path, manifest: Path) -> pd.DataFrame:
    """Write every bucket's shards and the manifest; nothing is left half-written on error."""
    external = {}
    if cfg_data.external_csv:  # read and check it all before writing anything
        external = external_items(cfg_data.external_csv, cfg_world.size, cfg_data.external_test_fraction)
    tmp = shards.with_name(shards.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        rows = []
        for bucket in world.BUCKETS:
            for split, n in (("train", cfg_data.train_per_bucket), ("test", cfg_data.test_per_bucket)):
                items = world_items(bucket, split, n, cfg_world.size)
                rows += write_bucket(items, encoder, tmp, bucket, split, cfg_data.shard_size)
        for split, items in external.items():
            if items:
                rows += write_bucket(items, encoder, tmp, EXTERNAL, split, cfg_data.shard_size)
        validate_manifest(pd.DataFrame(rows, columns=list(MANIFEST_SCHEMA.columns)), str(manifest))
        text, pooled = encoder.null()
        np.savez(tmp / NULL_FILE, text=text.astype(np.float16), pooled=pooled.astype(np.float16))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, shards)
    return write_manifest(rows, manifest)
