"""External edit data: a CSV of edit pairs ingested into the `external` bucket through the manifest's schema.

The CSV (UTF-8) has the columns uid,task,prompt,source_image,target_image; task is local_edit or
global_edit; image paths are relative to the CSV and must stay inside its folder (which is then
all a DVC dependency of curate). Rows go to train or test by a hash of uid
(`data.external_test_fraction`). Every row and image is read and checked before anything is
written; a bad one is a `DataError` naming the file, the row (counted from 1) and the column:
an empty, whitespace-only or "NaN"-like value, a duplicate uid, an unknown task, an image that
cannot be read, lies outside the folder or has transparent pixels; an empty, non-UTF-8 or
header-only file.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
from PIL import Image

from pipeline.curation import images
from pipeline.data.shards import EXTERNAL, SPLITS, DataError, describe_failures

COLUMNS = ["uid", "task", "prompt", "source_image", "target_image"]

MISSING_WORDS = {"nan", "none", "null", "n/a", "na"}  # what a spreadsheet or pandas writes for a missing value
_TEXT = pa.Check(lambda s: s.str.strip().str.len() > 0, element_wise=False, error="empty or whitespace only")
_NOT_MISSING = pa.Check(lambda s: ~s.str.strip().str.lower().isin(MISSING_WORDS), element_wise=False,
                        error=f"a missing-value marker ({', '.join(sorted(MISSING_WORDS))})")
_TRIMMED = pa.Check(lambda s: s == s.str.strip(), element_wise=False,
                    error="leading or trailing whitespace ('u1' and 'u1 ' would be two uids)")

SCHEMA = pa.DataFrameSchema(
    {
        "uid": pa.Column(str, [_TEXT, _NOT_MISSING, _TRIMMED], unique=True),
        "task": pa.Column(str, pa.Check.isin(["local_edit", "global_edit"])),
        "prompt": pa.Column(str, [_TEXT, _NOT_MISSING]),
        "source_image": pa.Column(str, [_TEXT, _NOT_MISSING]),
        "target_image": pa.Column(str, [_TEXT, _NOT_MISSING]),
    },
    strict=True,
)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read CSV: {err.strerror or err}") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not UTF-8 (byte {raw[err.start]:#04x} at offset {err.start}); "
                        f"save the CSV as UTF-8") from err
    if not text.strip():
        raise DataError(f"{path}: empty file; expected a header {','.join(COLUMNS)} and one row per edit")
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.ParserError as err:
        raise DataError(f"{path}: cannot parse CSV: {err}") from err
    df.index = df.index + 1  # rows are numbered from 1, as a person counts data rows
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r} (expected {COLUMNS})")
    if df.empty:
        raise DataError(f"{path}: a header but no rows; nothing to ingest")
    try:
        return SCHEMA.validate(df, lazy=True)
    except pa.errors.SchemaErrors as err:
        raise DataError(f"{path}: {describe_failures(err)}") from err


def _inside(folder: Path, name: str, where: str) -> Path:
    """`folder / name`, refused unless `name` is a relative path that stays inside `folder`: an image
    outside the CSV's folder would not be a DVC dependency of curate, so changing it would rerun nothing."""
    if not Path(name).is_absolute():
        _no_link(folder, Path(name).parts, where)
    path = (folder / name).resolve()
    if Path(name).is_absolute() or not path.is_relative_to(folder.resolve()):
        raise DataError(f"{where}: {name!r} is outside the CSV's folder {folder}; image paths must be "
                        f"relative to it and inside it")
    return path


def _no_link(start: Path, parts: tuple[str, ...], where: str) -> None:
    """Refuse a symbolic link on the way from `start` down `parts`: DVC hashes the link, not what it
    points to, so data behind it could change while `dvc status` says up to date."""
    path = start
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise DataError(f"{where}: {path} is a symbolic link; DVC does not see the data behind it change, "
                            f"so put the data itself under external/")


def _load_image(path: Path, size: int, where: str) -> np.ndarray:
    try:
        img = Image.fromarray(images.read_rgb(path))
    except images.ImageError as err:
        raise DataError(f"{where}: {err}") from err
    if img.width < size or img.height < size:  # upscaling would invent the pixels the model learns from
        raise DataError(f"{where}: {path} is {img.width}x{img.height}, below the world's {size}x{size} "
                        f"(world.resolution); give an image at least that large (it is downscaled, never upscaled)")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img)


def _split(uid: str, test_fraction: float) -> str:
    digest = int(hashlib.sha256(uid.encode()).hexdigest()[:8], 16)
    return "test" if digest / 0xFFFFFFFF < test_fraction else "train"


def external_items(csv: str | Path, size: int, test_fraction: float) -> dict[str, list]:
    """Validate an external edit CSV and load all its images; {split: [(record, image, source)]}."""
    csv = Path(csv)
    if not csv.is_absolute():  # data.external_csv: external/... relative to the repository
        _no_link(Path(), csv.parts, str(csv))
    df = _read_csv(csv)
    items: dict[str, list] = {split: [] for split in SPLITS}
    for row in df.itertuples():
        where = f"{csv}: row {row.Index}"
        images = {}
        for column in ("source_image", "target_image"):
            at = f"{where}, column {column!r}"
            images[column] = _load_image(_inside(csv.parent, getattr(row, column), at), size, at)
        source, target = images["source_image"], images["target_image"]
        split = _split(row.uid, test_fraction)
        record = {
            "key": f"{EXTERNAL}-{split}-{len(items[split]):06d}", "uid": row.uid, "bucket": EXTERNAL,
            "split": split, "task": row.task, "category": EXTERNAL, "prompt": row.prompt,
            "source_image": row.source_image, "target_image": row.target_image, "seed": -1,
            "source": None, "target": None, "spec": None,  # scenes are unknown for external data
        }
        items[split].append((record, target, source))
    return items
