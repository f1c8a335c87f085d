"""External edit data: a CSV of edit pairs ingested into the `external` bucket through the manifest's schema.

The CSV has the columns uid,task,prompt,source_image,target_image; image paths are relative to
the CSV; task is local_edit or global_edit. Rows go to train or test by a hash of uid
(`data.external_test_fraction`). Every row and image is read and checked before anything is
written; a bad one is a `DataError` naming the file, the row (counted from 1) and the column.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
from PIL import Image

from pipeline.data.shards import EXTERNAL, SPLITS, DataError, describe_failures

COLUMNS = ["uid", "task", "prompt", "source_image", "target_image"]

SCHEMA = pa.DataFrameSchema(
    {
        "uid": pa.Column(str, pa.Check.str_length(min_value=1), unique=True),
        "task": pa.Column(str, pa.Check.isin(["local_edit", "global_edit"])),
        "prompt": pa.Column(str, pa.Check.str_length(min_value=1)),
        "source_image": pa.Column(str, pa.Check.str_length(min_value=1)),
        "target_image": pa.Column(str, pa.Check.str_length(min_value=1)),
    },
    strict=True,
)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: cannot read CSV: {err}") from err
    df.index = df.index + 1  # rows are numbered from 1, as a person counts data rows
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r} (expected {COLUMNS})")
    try:
        return SCHEMA.validate(df, lazy=True)
    except pa.errors.SchemaErrors as err:
        raise DataError(f"{path}: {describe_failures(err)}") from err


def _load_image(path: Path, size: int, where: str) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BICUBIC)
            return np.asarray(img)
    except (OSError, ValueError) as err:
        raise DataError(f"{where}: cannot read image {str(path)!r}: {err}") from err


def _split(uid: str, test_fraction: float) -> str:
    digest = int(hashlib.sha256(uid.encode()).hexdigest()[:8], 16)
    return "test" if digest / 0xFFFFFFFF < test_fraction else "train"


def external_items(csv: str | Path, size: int, test_fraction: float) -> dict[str, list]:
    """Validate an external edit CSV and load all its images; {split: [(record, image, source)]}."""
    csv = Path(csv)
    df = _read_csv(csv)
    items: dict[str, list] = {split: [] for split in SPLITS}
    for row in df.itertuples():
        where = f"{csv}: row {row.Index}"
        source = _load_image(csv.parent / row.source_image, size, f"{where}, column 'source_image'")
        target = _load_image(csv.parent / row.target_image, size, f"{where}, column 'target_image'")
        split = _split(row.uid, test_fraction)
        record = {
            "key": f"{EXTERNAL}-{split}-{len(items[split]):06d}", "uid": row.uid, "bucket": EXTERNAL,
            "split": split, "task": row.task, "category": EXTERNAL, "prompt": row.prompt,
            "source_image": row.source_image, "target_image": row.target_image, "seed": -1,
            "source": None, "target": None, "spec": None,  # scenes are unknown for external data
        }
        items[split].append((record, target, source))
    return items
