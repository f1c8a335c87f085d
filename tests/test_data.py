import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core import batches
from pipeline.data import curate, shards, world
from tests.conftest import tiny_cfg


def _curate(tmp_path, encoder, **sections):
    cfg = tiny_cfg(**sections)
    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    return curate.curate(cfg.world, cfg.data, encoder, out / "shards", out / "manifest.parquet"), out


def _digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_round_trip_is_bit_exact(tmp_path, encoder):
    items = curate.world_items("local_edit", "train", 10, 32)
    shards.write_bucket(items, encoder, tmp_path, "local_edit", "train", shard_size=4)
    records = shards.read_records(tmp_path, "local_edit", "train")
    assert [r.key for r in records] == [rec["key"] for rec, _, _ in items]
    text, pooled = encoder.encode([rec["prompt"] for rec, _, _ in items])
    for r, (rec, image, source) in zip(records, items):
        assert np.array_equal(r.image, image) and np.array_equal(r.source, source)
        assert r.meta == json.loads(json.dumps(rec))
        assert shards.world_sample(r.meta) == shards.world_sample(rec)
    assert np.array_equal(np.stack([r.text for r in records]), text.astype(np.float16))
    assert np.array_equal(np.stack([r.pooled for r in records]), pooled.astype(np.float16))
    assert len(shards.shard_paths(tmp_path, "local_edit", "train")) == 3


def test_t2i_records_have_no_source(tmp_path, encoder):
    shards.write_bucket(curate.world_items("t2i", "test", 3, 32), encoder, tmp_path, "t2i", "test", 8)
    assert all(r.source is None and r.task == "t2i" for r in shards.read_records(tmp_path, "t2i", "test"))


def test_curate_is_byte_identical_across_runs(tmp_path, encoder):
    df, first = _curate(tmp_path / "a", encoder)
    _, second = _curate(tmp_path / "b", encoder)
    assert _digests(first) == _digests(second)
    assert set(df["bucket"]) == set(world.BUCKETS)
    counts = df.groupby(["bucket", "split"]).size()
    assert (counts.xs("train", level="split") == 12).all() and (counts.xs("test", level="split") == 6).all()
    assert set(shards.read_manifest(first / "manifest.parquet")["key"]) == set(df["key"])


def test_manifest_schema_names_row_and_column(tmp_path):
    items = curate.world_items("t2i", "train", 3, 32)
    rows = [shards._manifest_row(rec, "t2i/train-0000.tar") for rec, _, _ in items]
    rows[1]["task"] = "painting"
    with pytest.raises(shards.DataError, match=r"manifest.parquet: .*row 1, column 'task'.*'painting'"):
        shards.write_manifest(rows, tmp_path / "manifest.parquet")
    assert not (tmp_path / "manifest.parquet").exists()


def _external(tmp_path, rows, header="uid,task,prompt,source_image,target_image"):
    img = np.zeros((40, 40, 3), np.uint8)
    for name in ("a.png", "b.png"):
        Image.fromarray(img).save(tmp_path / name)
    csv = tmp_path / "edits.csv"
    csv.write_text(header + "\n" + "\n".join(rows) + "\n")
    return csv


GOOD = [f"u{i},local_edit,make the circle red,a.png,b.png" for i in range(20)]


def test_external_csv_is_ingested(tmp_path, encoder):
    csv = _external(tmp_path, GOOD + ["g0,global_edit,make it grayscale,b.png,a.png"])
    df, out = _curate(tmp_path, encoder, data={"external_csv": str(csv), "external_test_fraction": 0.3})
    ext = df[df["bucket"] == "external"]
    assert len(ext) == 21 and set(ext["split"]) == {"train", "test"}
    assert set(ext["uid"]) == {f"u{i}" for i in range(20)} | {"g0"}
    records = shards.read_records(out / "shards", "external", "train")
    assert all(r.image.shape == (32, 32, 3) and r.source.shape == (32, 32, 3) for r in records)


@pytest.mark.parametrize("bad_row,match", [
    ("u1,painting,make it red,a.png,b.png", r"row 2, column 'task'.*'painting'"),
    ("u1,local_edit,,a.png,b.png", r"row 2, column 'prompt'"),
    ("u0,local_edit,make it red,a.png,b.png", r"column 'uid'.*'u0'"),
    ("u1,local_edit,make it red,missing.png,b.png", r"edits.csv: row 2, column 'source_image': cannot read image"),
])
def test_bad_external_row_is_named_and_nothing_written(tmp_path, encoder, bad_row, match):
    csv = _external(tmp_path, [GOOD[0], bad_row])
    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "previous.txt").write_text("a valid earlier output")
    with pytest.raises(shards.DataError, match=match):
        _curate(tmp_path, encoder, data={"external_csv": str(csv)})
    assert [p.name for p in (out / "shards").iterdir()] == ["previous.txt"]
    assert not (out / "manifest.parquet").exists() and not (out / "shards.tmp").exists()


def test_external_csv_missing_column(tmp_path, encoder):
    csv = _external(tmp_path, ["u1,local_edit,make it red,a.png"], header="uid,task,prompt,source_image")
    with pytest.raises(shards.DataError, match=r"edits.csv: missing column 'target_image'"):
        _curate(tmp_path, encoder, data={"external_csv": str(csv)})


def test_tensor_conversion_round_trip():
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    x = shards.to_tensor(images)
    assert x.shape == (2, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(shards.to_uint8(x), images)


def test_missing_shards_error_names_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no train shards"):
        shards.shard_paths(tmp_path, "t2i", "train")


def test_tensorset_batches_t2i_source_as_zeros_like_the_backbone(tmp_path, encoder):
    shards.write_bucket(curate.world_items("t2i", "train", 2, 32), encoder, tmp_path, "t2i", "train", 8)
    shards.write_bucket(curate.world_items("local_edit", "train", 2, 32), encoder, tmp_path, "local_edit", "train", 8)
    tensors = batches.load_tensors(tmp_path, ["t2i", "local_edit"], "train")
    x, cond = tensors.batch(torch.arange(4))
    assert torch.equal(cond.source[:2], torch.zeros(2, 3, 32, 32))  # Backbone's `source=None`
    assert torch.equal(cond.source[2:], shards.to_tensor(np.stack([r.source for r in tensors.records[2:]])))
    assert cond.route is None and tensors.task.tolist() == [0, 0, 1, 1] and x.min() >= -1


def test_the_route_column_is_set_by_bucket_apart_from_the_task(tmp_path, encoder):
    for bucket in ("t2i", "realism"):
        shards.write_bucket(curate.world_items(bucket, "train", 2, 32), encoder, tmp_path, bucket, "train", 8)
    tensors = batches.load_tensors(tmp_path, ["t2i", "realism"], "train", route_of_bucket={"t2i": 0, "realism": 3})
    _, cond = tensors.batch(torch.arange(4))
    assert tensors.task.tolist() == [0, 0, 0, 0]  # realism prompts are T2I prompts...
    assert cond.route.tolist() == [0, 0, 3, 3]  # ...on a route of their own
    with pytest.raises(ValueError, match=r"no route takes the bucket\(s\) \['realism'\]"):
        batches.load_tensors(tmp_path, ["t2i", "realism"], "train", route_of_bucket={"t2i": 0})


def test_random_batches_draw_lazily_from_the_generator(tmp_path, encoder):
    shards.write_bucket(curate.world_items("t2i", "train", 6, 32), encoder, tmp_path, "t2i", "train", 8)
    tensors = batches.load_tensors(tmp_path, ["t2i"], "train")
    gen = torch.Generator().manual_seed(3)
    stream = batches.random_batches(tensors, 4, gen)
    state = gen.get_state()
    first = next(stream)[0]
    gen.set_state(state)  # restoring the generator restores the stream: what a resumed run relies on
    assert torch.equal(next(stream)[0], first)
    rows = torch.randint(6, (4,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, tensors.batch(rows)[0])


def test_bucket_weights_draw_buckets_in_proportion(tmp_path, encoder):
    for bucket, n in (("t2i", 2), ("local_edit", 3), ("global_edit", 4)):
        shards.write_bucket(curate.world_items(bucket, "train", n, 32), encoder, tmp_path, bucket, "train", 8)
    tensors = batches.load_tensors(tmp_path, ["t2i", "local_edit", "global_edit"], "train")
    w = batches.bucket_weights(tensors, {"t2i": 2.0, "local_edit": 1.0, "global_edit": 1.0})
    rows = batches.draw_rows(9, 40_000, torch.Generator().manual_seed(0), w)
    share = torch.bincount(tensors.task[rows], minlength=3).float() / 40_000
    assert torch.allclose(share, torch.tensor([0.5, 0.25, 0.25]), atol=0.01)
    with pytest.raises(ValueError, match=r"routing\.weights: no weight for the bucket\(s\) \['global_edit'\]"):
        batches.bucket_weights(tensors, {"t2i": 1.0, "local_edit": 1.0})
