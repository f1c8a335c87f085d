"""pipeline.data (shards, curation, external ingest, embeddings) and pipeline.core.batches."""
import hashlib
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core import batches
from pipeline.curation import curate
from pipeline.data import embeddings, outputs, shards, world
from tests.conftest import tiny_cfg


def _curate(tmp_path, **data):
    cfg = tiny_cfg()
    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    data_params = cfg.data.model_copy(update=data)  # a CSV outside external/ is the config's to refuse
    return curate.curate(cfg.world, data_params, out / "shards", out / "manifest.parquet"), out


def _digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _write(root, bucket, split, n, shard_size=8):
    """World samples of one bucket/split as shards (and the index) under `root`; their records."""
    items = curate.world_items(bucket, split, n, 32)
    rows = shards.write_bucket(items, root, bucket, split, shard_size)
    index = root / shards.INDEX
    counts = json.loads(index.read_text()) if index.exists() else {}
    shards.write_index(root, [{"shard": s} for s, c in counts.items() for _ in range(c)] + rows)
    return items


@pytest.fixture
def store(tmp_path, encoder):
    """An embeddings store of every world prompt the tests below write."""
    prompts = [s.prompt for b in world.BUCKETS for split in ("train", "test") for s in world.make_bucket(b, split, 12)]
    embeddings.write(prompts, encoder, tmp_path / "embeddings", {"encoder": "minilm", "max_tokens": 24})
    return embeddings.Embeddings.load(tmp_path / "embeddings")


def test_round_trip_is_bit_exact(tmp_path):
    items = _write(tmp_path, "local_edit", "train", 10, shard_size=4)
    records = shards.read_records(tmp_path, "local_edit", "train")
    assert [r.key for r in records] == [rec["key"] for rec, _, _ in items]
    for r, (rec, image, source) in zip(records, items):
        assert np.array_equal(r.image, image) and np.array_equal(r.source, source)
        assert r.meta == json.loads(json.dumps(rec))
        assert shards.world_sample(r.meta) == shards.world_sample(rec)
    assert len(shards.shard_paths(tmp_path, "local_edit", "train")) == 3


def test_t2i_records_have_no_source(tmp_path):
    _write(tmp_path, "t2i", "test", 3)
    assert all(r.source is None and r.task == "t2i" for r in shards.read_records(tmp_path, "t2i", "test"))


def test_curate_is_byte_identical_across_runs(tmp_path):
    df, first = _curate(tmp_path / "a")
    _, second = _curate(tmp_path / "b")
    assert _digests(first) == _digests(second)
    assert set(df["bucket"]) == set(world.BUCKETS)
    counts = df.groupby(["bucket", "split"]).size()
    assert (counts.xs("train", level="split") == 12).all() and (counts.xs("test", level="split") == 6).all()
    assert set(shards.read_manifest(first / "manifest.parquet")["key"]) == set(df["key"])


# The hash of one curated shard, pinned: curate's output is a pure function of params on any
# machine (no floats in a shard), so a DVC remote can serve it and a fresh clone reruns nothing.
PINNED = {"local_edit/train-0000.tar": "9a5495dfef82a257031ec28d1f41aab443ee96e312450c9ae0e1e47c6b324977"}


def test_a_curated_shard_has_the_pinned_hash(tmp_path):
    _, out = _curate(tmp_path)
    digests = _digests(out / "shards")
    assert {name: digests[name] for name in PINNED} == PINNED


def test_a_truncated_or_damaged_shard_is_named(tmp_path):
    _write(tmp_path, "t2i", "train", 6, shard_size=3)
    shard = tmp_path / "t2i" / "train-0001.tar"
    whole = shard.read_bytes()
    offsets = [i for i in range(0, len(whole), 512) if whole[i:i + 10].startswith(b"t2i-train-")]
    cut = next(o for o in offsets if whole[o:o + 30].startswith(b"t2i-train-000005"))
    shard.write_bytes(whole[:cut] + b"\0" * 1024)  # the last sample gone, on a sample boundary
    with pytest.raises(shards.DataError, match=r"train-0001.tar: 2 samples, but index.json says 3"):
        shards.read_records(tmp_path, "t2i", "train")
    shard.write_bytes(whole[: len(whole) // 2])  # cut mid-member
    with pytest.raises(shards.DataError, match=r"train-0001.tar: damaged shard"):
        shards.read_records(tmp_path, "t2i", "train")
    (tmp_path / shards.INDEX).unlink()
    with pytest.raises(shards.DataError, match="no index.json"):
        shards.read_records(tmp_path, "t2i", "train")


def _stream_keys(root, n, **kw):
    """The keys of the first `n` records of a stream over two buckets of two shards each."""
    stream = shards.stream_records(root, ["t2i", "local_edit"], "train", shuffle_buffer=4, **kw)
    return [r.key for r in itertools.islice(stream, n)]


@pytest.fixture
def four_shards(tmp_path):
    """Four shards of two samples (two buckets of two shards); their keys."""
    items = _write(tmp_path, "t2i", "train", 4, shard_size=2) + _write(tmp_path, "local_edit", "train", 4, shard_size=2)
    return tmp_path, {rec["key"] for rec, _, _ in items}


def test_each_rank_streams_its_own_shards_without_end(four_shards):
    root, keys = four_shards
    ranks = [_stream_keys(root, 12, seed=0, rank=rank, world_size=2) for rank in (0, 1)]
    epochs = [[set(stream[i:i + 4]) for i in (0, 4, 8)] for stream in ranks]  # a rank's epoch: 2 shards, 4 samples
    for first, *later in epochs:
        assert len(first) == 4 and all(epoch == first for epoch in later)  # each epoch the same samples again
    assert epochs[0][0].isdisjoint(epochs[1][0]) and epochs[0][0] | epochs[1][0] == keys
    stream = shards.stream_records(root, ["local_edit"], "train", seed=0, shuffle_buffer=4, rank=0, world_size=2)
    record = next(iter(stream))  # decoded as read_records decodes it
    want = next(r for r in shards.read_records(root, "local_edit", "train") if r.key == record.key)
    assert np.array_equal(record.image, want.image) and np.array_equal(record.source, want.source)
    assert record.meta == want.meta


def test_the_rank_comes_from_the_environment_when_not_given(four_shards, monkeypatch):
    root, _ = four_shards
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets them
    assert _stream_keys(root, 8, seed=0) == _stream_keys(root, 8, seed=0, rank=1, world_size=2)
    with pytest.raises(ValueError, match="give both rank and world_size"):
        shards.stream_records(root, ["t2i"], "train", seed=0, shuffle_buffer=4, rank=1)


def test_dataloader_workers_split_the_shards(four_shards):
    root, keys = four_shards
    stream = shards.stream_records(root, ["t2i", "local_edit"], "train", seed=0, shuffle_buffer=4, rank=0, world_size=1)
    loader = iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2))
    epoch = [record.key for record in itertools.islice(loader, len(keys))]  # the workers take turns
    del loader  # stops the workers of the endless stream
    assert sorted(epoch) == sorted(keys)  # each sample once: no worker reads another's shards


def test_the_same_seed_gives_the_same_stream(four_shards):
    root, _ = four_shards
    first = _stream_keys(root, 24, seed=7)
    assert _stream_keys(root, 24, seed=7) == first
    assert _stream_keys(root, 24, seed=8) != first
    assert first[:8] != first[8:16]  # each epoch in its own order


def test_manifest_schema_names_row_and_column(tmp_path):
    items = curate.world_items("t2i", "train", 3, 32)
    rows = [shards._manifest_row(rec, "t2i/train-0000.tar") for rec, _, _ in items]
    rows[1]["task"] = "painting"
    with pytest.raises(shards.DataError, match=r"manifest.parquet: .*row 1, column 'task'.*'painting'"):
        shards.write_manifest(rows, tmp_path / "manifest.parquet")
    assert not (tmp_path / "manifest.parquet").exists()


# --- external edit data ------------------------------------------------------------------------


def _external(tmp_path, rows, header="uid,task,prompt,source_image,target_image"):
    img = np.zeros((40, 40, 3), np.uint8)
    for name in ("a.png", "b.png"):
        Image.fromarray(img).save(tmp_path / name)
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "opaque.png")
    rgba[:10, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "holes.png")
    Image.fromarray(img[:1, :1]).save(tmp_path / "dot.png")  # 1 x 1
    Image.fromarray(img[:, :20]).save(tmp_path / "narrow.png")  # 20 wide, 40 high
    csv = tmp_path / "edits.csv"
    csv.write_text(header + "\n" + "\n".join(rows) + "\n")
    return csv


GOOD = [f"u{i},local_edit,make the circle red,a.png,b.png" for i in range(20)]


def test_external_csv_is_ingested(tmp_path):
    csv = _external(tmp_path, GOOD + ["g0,global_edit,make it grayscale,b.png,opaque.png"])
    df, out = _curate(tmp_path, external_csv=str(csv), external_test_fraction=0.3)
    ext = df[df["bucket"] == "external"]
    assert len(ext) == 21 and set(ext["split"]) == {"train", "test"}
    assert set(ext["uid"]) == {f"u{i}" for i in range(20)} | {"g0"}
    records = shards.read_records(out / "shards", "external", "train")
    assert all(r.image.shape == (32, 32, 3) and r.source.shape == (32, 32, 3) for r in records)


@pytest.mark.parametrize("bad_row,match", [
    ("u1,painting,make it red,a.png,b.png", r"row 2, column 'task'.*'painting'"),
    ("u1,local_edit,,a.png,b.png", r"row 2, column 'prompt': empty or whitespace only"),
    ("u1,local_edit,   ,a.png,b.png", r"row 2, column 'prompt': empty or whitespace only"),
    ("u1,local_edit,NaN,a.png,b.png", r"row 2, column 'prompt': a missing-value marker.*'NaN'"),
    ("u0,local_edit,make it red,a.png,b.png", r"column 'uid'.*'u0'"),
    ("u1 ,local_edit,make it red,a.png,b.png", r"row 2, column 'uid': leading or trailing whitespace"),
    ("u1,local_edit,make it red,missing.png,b.png", r"edits.csv: row 2, column 'source_image': .*missing.png: cannot read it"),
    ("u1,local_edit,make it red,../a.png,b.png", r"edits.csv: row 2, column 'source_image': '../a.png' is outside"),
    ("u1,local_edit,make it red,/etc/hostname,b.png", r"row 2, column 'source_image': '/etc/hostname' is outside"),
    ("u1,local_edit,make it red,a.png,holes.png", r"row 2, column 'target_image': .*holes.png: has transparent"),
    ("u1,local_edit,make it red,dot.png,b.png", r"row 2, column 'source_image': .*dot.png is 1x1, below the "
                                                r"world's 32x32 \(world.resolution\)"),
    ("u1,local_edit,make it red,a.png,narrow.png", r"row 2, column 'target_image': .*narrow.png is 20x40, below"),
])
def test_bad_external_row_is_named_and_nothing_written(tmp_path, bad_row, match):
    csv = _external(tmp_path, [GOOD[0], bad_row])
    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "previous.txt").write_text("a valid earlier output")
    with pytest.raises(shards.DataError, match=match):
        _curate(tmp_path, external_csv=str(csv))
    assert [p.name for p in (out / "shards").iterdir()] == ["previous.txt"]
    assert not (out / "manifest.parquet").exists() and not (out / "shards.tmp").exists()


@pytest.mark.parametrize("linked", ["folder", "image"])
def test_external_data_behind_a_symlink_is_refused(tmp_path, monkeypatch, linked):
    """DVC hashes a link under external/, not its target: the data behind it could change unseen."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _external(elsewhere, GOOD)
    (tmp_path / "external").mkdir()
    if linked == "folder":  # external/x -> elsewhere, the CSV inside it
        (tmp_path / "external" / "x").symlink_to(elsewhere)
        csv = "external/x/edits.csv"
    else:  # the CSV here, one image a link to a file elsewhere
        _external(tmp_path / "external", GOOD)
        (tmp_path / "external" / "a.png").unlink()
        (tmp_path / "external" / "a.png").symlink_to(elsewhere / "a.png")
        csv = "external/edits.csv"
    monkeypatch.chdir(tmp_path)
    where = "external/x" if linked == "folder" else "external/a.png"
    with pytest.raises(shards.DataError, match=rf"{where} is a symbolic link; DVC does not see the data behind it"):
        _curate(tmp_path, external_csv=csv)


@pytest.mark.parametrize("content,match", [
    (b"", r"edits.csv: empty file"),
    (b"uid,task,prompt,source_image,target_image\n", r"edits.csv: a header but no rows"),
    (b"uid,task,prompt,source_image,target_image\nu1,local_edit,caf\xe9,a.png,b.png\n",
     r"edits.csv: line 2 is not UTF-8 \(byte 0xe9"),
    (b"uid,task,prompt,source_image\nu1,local_edit,make it red,a.png\n", r"edits.csv: missing column 'target_image'"),
])
def test_a_bad_external_file_is_named(tmp_path, content, match):
    csv = _external(tmp_path, [])
    csv.write_bytes(content)
    with pytest.raises(shards.DataError, match=match):
        _curate(tmp_path, external_csv=str(csv))


# --- batches and embeddings ----------------------------------------------------------------------


def test_tensor_conversion_round_trip():
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    x = shards.to_tensor(images)
    assert x.shape == (2, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(shards.to_uint8(x), images)


def test_an_unwritable_output_fails_before_any_work(tmp_path):
    outputs.ensure_writable(tmp_path / "new" / "folder" / "model")  # a missing folder is fine...
    assert not (tmp_path / "new").exists()  # ...and is not created by the check
    with pytest.raises(PermissionError, match=r"/proc/danceopd/model: cannot write into /proc"):
        outputs.ensure_writable(Path("/proc/danceopd/model"))  # unwritable even for root


def test_an_existing_output_that_cannot_be_replaced_fails_before_any_work(tmp_path, monkeypatch):
    """What the final move needs is checked up front: writing into an existing output folder (its old
    contents are removed when the new output is complete), and every folder inside it. Root writes
    anywhere, so the refusals are simulated where the probe and the permission check ask."""
    out = tmp_path / "models" / "base"
    (out / "scheduler").mkdir(parents=True)
    outputs.ensure_writable(out)  # writable: passes, and leaves nothing behind
    assert sorted(p.name for p in out.iterdir()) == ["scheduler"]
    write_bytes = Path.write_bytes

    def refused_inside(self, data):
        if self.parent == out:
            raise PermissionError(13, "Permission denied")
        return write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", refused_inside)
    with pytest.raises(PermissionError, match=r"models/base: cannot write into .*models/base \(Permission denied\)"):
        outputs.ensure_writable(out)
    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: not str(path).endswith("scheduler") and access(path, mode))
    with pytest.raises(PermissionError, match=r"models/base: cannot replace it: .*scheduler is read-only"):
        outputs.ensure_writable(out)


def test_an_atomic_folder_replaces_a_file_in_its_way(tmp_path):
    final = tmp_path / "model"
    final.write_text("not a folder")
    with outputs.atomic_dir(final) as tmp:
        (tmp / "weights").write_text("complete")
    assert final.is_dir() and (final / "weights").read_text() == "complete"


def test_an_atomic_folder_is_all_or_nothing(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "valid.txt").write_text("an earlier output")
    with pytest.raises(RuntimeError):
        with outputs.atomic_dir(final) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("killed mid-write")
    assert [p.name for p in final.iterdir()] == ["valid.txt"] and not (tmp_path / "out.tmp").exists()
    with outputs.atomic_dir(final) as tmp:
        (tmp / "new.txt").write_text("complete")
    assert [p.name for p in final.iterdir()] == ["new.txt"]


def test_missing_shards_error_names_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no train shards"):
        shards.shard_paths(tmp_path, "t2i", "train")


def test_the_embeddings_store_holds_each_prompt_once_and_the_null_prompt(tmp_path, encoder, store):
    prompts = [s.prompt for s in world.make_bucket("t2i", "train", 5)]
    text, pooled = store.lookup(prompts)
    want_text, want_pooled = encoder.encode(prompts)
    assert text.dtype == np.float16 and np.array_equal(text, want_text.astype(np.float16))
    assert np.array_equal(pooled, want_pooled.astype(np.float16))
    null_text, null_pooled = store.null()
    assert torch.equal(null_text, torch.from_numpy(encoder.null()[0].astype(np.float16)).float())
    assert store.info == {"encoder": "minilm", "max_tokens": 24, "dim": 384}
    with pytest.raises(KeyError, match="no embedding of the prompt 'a purple dragon'"):
        store.lookup(["a purple dragon"])


def test_tensorset_batches_t2i_source_as_zeros_like_the_backbone(tmp_path, store):
    _write(tmp_path, "t2i", "train", 2)
    _write(tmp_path, "local_edit", "train", 2)
    tensors = batches.load_tensors(tmp_path, ["t2i", "local_edit"], "train", store)
    x, cond = tensors.batch(torch.arange(4))
    assert torch.equal(cond.source[:2], torch.zeros(2, 3, 32, 32))  # Backbone's `source=None`
    assert torch.equal(cond.source[2:], shards.to_tensor(np.stack([r.source for r in tensors.records[2:]])))
    assert cond.route is None and tensors.task.tolist() == [0, 0, 1, 1] and x.min() >= -1
    assert torch.equal(cond.text, torch.from_numpy(store.lookup([r.prompt for r in tensors.records])[0]).float())
    assert len(tensors.text_table) == len({r.prompt for r in tensors.records})  # one row per distinct prompt


def test_the_route_column_is_set_by_bucket_apart_from_the_task(tmp_path, store):
    for bucket in ("t2i", "realism"):
        _write(tmp_path, bucket, "train", 2)
    tensors = batches.load_tensors(tmp_path, ["t2i", "realism"], "train", store,
                                   route_of_bucket={"t2i": 0, "realism": 3})
    _, cond = tensors.batch(torch.arange(4))
    assert tensors.task.tolist() == [0, 0, 0, 0]  # realism prompts are T2I prompts...
    assert cond.route.tolist() == [0, 0, 3, 3]  # ...on a route of their own
    with pytest.raises(ValueError, match=r"no route takes the bucket\(s\) \['realism'\]"):
        batches.load_tensors(tmp_path, ["t2i", "realism"], "train", store, route_of_bucket={"t2i": 0})


def test_random_batches_draw_lazily_from_the_generator(tmp_path, store):
    _write(tmp_path, "t2i", "train", 6)
    tensors = batches.load_tensors(tmp_path, ["t2i"], "train", store)
    gen = torch.Generator().manual_seed(3)
    stream = batches.random_batches(tensors, 4, gen)
    state = gen.get_state()
    first = next(stream)[0]
    gen.set_state(state)  # restoring the generator restores the stream: what a resumed run relies on
    assert torch.equal(next(stream)[0], first)
    rows = torch.randint(6, (4,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, tensors.batch(rows)[0])


def _routed(tmp_path, store):
    for bucket, n in (("t2i", 2), ("local_edit", 3), ("global_edit", 4)):
        _write(tmp_path, bucket, "train", n)
    return batches.load_tensors(tmp_path, ["t2i", "local_edit", "global_edit"], "train", store,
                                route_of_bucket={"t2i": 0, "local_edit": 1, "global_edit": 1})  # t2i and edit


def test_routes_mixed_per_sample_follow_the_weights(tmp_path, store):
    tensors = _routed(tmp_path, store)
    stream = batches.routed_batches(tensors, 4000, torch.Generator().manual_seed(0), [3.0, 1.0], "sample")
    _, cond = next(stream)
    assert abs((cond.route == 0).float().mean().item() - 0.75) < 0.02  # routes mix within one batch


def test_per_step_routing_takes_one_route_for_every_micro_batch_of_a_step(tmp_path, store):
    tensors = _routed(tmp_path, store)
    stream = batches.routed_batches(tensors, 5, torch.Generator().manual_seed(0), [1.0, 3.0], "step", accum=3)
    steps = [[next(stream)[1].route for _ in range(3)] for _ in range(400)]
    for micro in steps:
        assert len({int(r) for m in micro for r in m}) == 1  # one route per optimizer step
    share = sum(int(micro[0][0]) == 1 for micro in steps) / len(steps)
    assert abs(share - 0.75) < 0.07  # routes drawn per step with probability ∝ weight


def test_all_routing_puts_every_route_in_every_step(tmp_path, store):
    tensors = _routed(tmp_path, store)
    stream = batches.routed_batches(tensors, 3, torch.Generator().manual_seed(0), [1.0, 1.0], "all", accum=2)
    routes = [{int(r) for r in next(stream)[1].route} for _ in range(8)]
    assert routes == [{0}, {0}, {1}, {1}] * 2  # each step: accum micro-batches of each route in turn
    with pytest.raises(ValueError, match="no route column"):
        next(batches.routed_batches(batches.load_tensors(tmp_path, ["t2i"], "train", store), 2,
                                    torch.Generator(), [1.0], "step"))
