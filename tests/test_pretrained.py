"""A pretrained SD3-family model on disk (`model.pretrained`): its VAE's latents, its text encoders, LoRA.

The tiny random components of `tests/sd3_tiny.py`, saved with save_pretrained, go through the
pipeline's functions as its stages call them, on the CPU: curate -> embed (the SD3 encoders) ->
train base and an expert (LoRA, from the pretrained transformer) -> distill a student (LoRA) ->
evaluate (samples decoded to pixels for the pixel-space evaluator) -> generate.
"""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pipeline import generate
from pipeline.core import backbone, checkpoint, latents, lora, teacher
from pipeline.core.batches import Curated
from pipeline.core.fields import Cond
from pipeline.curation import curate, sd3_text
from pipeline.data import embeddings
from pipeline.eval import evaluation
from pipeline.eval import evaluator as E
from pipeline.eval.sample import generate as sample
from pipeline.train import distill, run, sft
from pipeline.train import evaluator_training as T
from tests.conftest import tiny_cfg
from tests.sd3_tiny import make_tiny_sd3

MAX_TOKENS, RANK = 8, 4
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    return make_tiny_sd3(tmp_path_factory.mktemp("sd3") / "tiny")


@pytest.fixture(scope="module")
def cfg(sd3):
    return tiny_cfg(text={"encoder": "pretrained", "max_tokens": MAX_TOKENS},
                    model={"pretrained": str(sd3), "lora_rank": RANK, "prediction": "velocity"},
                    routing={"source": "label"})


@pytest.fixture(scope="module")
def data(cfg, tmp_path_factory):
    """The tiny world's shards, their prompts embedded by the SD3 encoders as the embed stage does."""
    out = tmp_path_factory.mktemp("world")
    manifest = curate.curate(cfg.world, cfg.data, out / "shards", out / "manifest.parquet")
    encoder = sd3_text.load_encoder(cfg.text.encoder, cfg.text.max_tokens, cfg.text.batch_size, cfg.model.pretrained)
    info = {"encoder": cfg.text.encoder, "max_tokens": cfg.text.max_tokens, "folder": cfg.model.pretrained}
    embeddings.write(manifest["prompt"].tolist(), encoder, out / "embeddings", info)
    return Curated.open(out / "shards", out / "embeddings")


def _is_lora_target(key: str) -> bool:
    """A weight LoRA adapts (merged into it when saved): a projection of the reference's targets."""
    return key.endswith(".weight") and any(key.removesuffix(".weight").endswith("." + t) for t in lora.TARGETS)


PATCH = "transformer.pos_embed.proj."  # the patch embedding, which reads the source channels: trained too


# --- the seams -----------------------------------------------------------------------------------


def test_spaces_pixels_or_the_vae_of_a_pipeline_folder(sd3):
    assert latents.space("") is latents.PIXELS and latents.space(sd3 / "transformer") is latents.PIXELS
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert latents.PIXELS.encode(x) is x and latents.PIXELS.decode(x) is x and latents.PIXELS.card() is None
    space = latents.space(sd3)
    assert isinstance(space, latents.Latents) and space.card() == {
        "vae": str(sd3), "channels": 4, "downsample": 2, "scaling_factor": 1.5305, "shift_factor": 0.0609}


def test_text_encoder_pretrained_needs_the_model_folder():
    with pytest.raises(ValueError, match="model.pretrained"):
        sd3_text.load_encoder("pretrained", 8)


def test_the_sd3_store_records_the_pooled_width(data, sd3):
    info = data.embeddings.info
    assert info == {"encoder": "pretrained", "folder": str(sd3), "max_tokens": MAX_TOKENS, "dim": 64, "pooled_dim": 48}
    null_text, null_pooled = data.null()
    assert null_text.shape == (77 + MAX_TOKENS, 64) and null_pooled.shape == (48,)


def test_latents_are_encoded_once_at_load_and_batches_are_latents(data, sd3):
    space = latents.space(sd3)
    pixels = data.tensors(["t2i", "local_edit"], "train")
    seen = data.seen_in(space).tensors(["t2i", "local_edit"], "train")
    assert pixels.image.dtype == torch.uint8 and seen.image.dtype == torch.float32
    assert seen.image.shape == (len(pixels), 4, 16, 16) and (seen.pooled_dim, seen.text_dim) == (48, 64)
    assert torch.allclose(seen.image, space.encode(pixels.image.float() / 127.5 - 1), atol=1e-6)
    has = pixels.has_source
    assert has.any() and not has.all()
    assert torch.allclose(seen.source[has], space.encode(pixels.source[has].float() / 127.5 - 1), atol=1e-6)
    assert not seen.source[~has].any()  # T2I rows: no source, nothing encoded
    idx = torch.arange(len(seen))
    x, cond = seen.batch(idx)
    assert torch.equal(x, seen.image) and not cond.source[~has].any()
    assert torch.equal(pixels.batch(idx)[0], pixels.image.float() / 127.5 - 1.0)  # pixels: as before


def test_embed_stores_every_image_s_latents_once_and_stages_read_them(data, sd3, tmp_path, monkeypatch):
    """`embed` for a latent-space model encodes every curated image once, into the embeddings store;
    loading then reads them there (the VAE never runs again: its encode is broken here) and they are
    the latents encoding at load gives, to float16's precision; a store of another VAE, or none, is
    encoded at load as before."""
    import sys

    import yaml

    from stages import embed as stage
    from tests.conftest import tiny_raw

    space, pixels = latents.space(sd3), data.tensors(["t2i", "local_edit"], "train")
    at_load = data.seen_in(space).tensors(["t2i", "local_edit"], "train")
    raw = tiny_raw(text={"encoder": "pretrained", "max_tokens": MAX_TOKENS},
                   model={"pretrained": str(sd3), "prediction": "velocity"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "mlruns").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["embed", "--manifest", str(data.shards.parent / "manifest.parquet"),
                                      "--shards", str(data.shards), "--out", "embeddings"])
    stage.main()
    store = embeddings.Embeddings.load(tmp_path / "embeddings")
    assert store.latents.card == space.card() and store.latents.image.dtype == np.float16
    assert len(store.latents.row) == store.latents.image.shape[0] > len(pixels)  # every bucket and split

    def broken(*_):
        raise AssertionError("the VAE ran at load")

    monkeypatch.setattr(latents.Latents, "encode", broken)
    stored = Curated(data.shards, store, space).tensors(["t2i", "local_edit"], "train")
    assert stored.image.dtype == torch.float32 and stored.image.shape == at_load.image.shape
    assert torch.allclose(stored.image, at_load.image, atol=2e-2, rtol=1e-3)  # float16 storage
    assert torch.allclose(stored.source, at_load.source, atol=2e-2, rtol=1e-3)
    assert not stored.source[~pixels.has_source].any()
    assert torch.equal(stored.batch(torch.arange(4))[0], stored.image[:4])
    other = space.card() | {"vae": "elsewhere"}
    assert store.latents_of(other) is None and data.embeddings.latents is None  # no latents: encoded at load
    with pytest.raises(AssertionError, match="the VAE ran"):
        data.seen_in(space).tensors(["t2i"], "train")
    with pytest.raises(KeyError, match="rerun `dvc repro embed`"):
        store.latents.lookup(["no-such-record"])


def test_models_of_different_spaces_are_not_combined(tmp_path, sd3):
    for name, card in (("pixels", None), ("latents", latents.space(sd3).card())):
        (tmp_path / name).mkdir()
        sampling = checkpoint.sampling_card(3.0, 32, {"encoder": "minilm", "max_tokens": 24, "dim": 384}, card)
        (tmp_path / name / checkpoint.SAMPLING).write_text(json.dumps(sampling))
    assert checkpoint.space([tmp_path / "pixels"]) is latents.PIXELS
    assert isinstance(checkpoint.space([tmp_path / "latents"] * 2), latents.Latents)
    with pytest.raises(ValueError, match="different spaces"):
        checkpoint.space([tmp_path / "pixels", tmp_path / "latents"])


def _cond(b=2):
    """A batch of SD3-shaped conditions: text (B, 77 + 8, 64), pooled (B, 48), latent sources (B, 4, 16, 16)."""
    g = torch.Generator().manual_seed(1)
    return Cond(torch.randn(b, 77 + MAX_TOKENS, 64, generator=g), torch.randn(b, 48, generator=g),
                torch.randn(b, 4, 16, 16, generator=g))


def test_a_lora_backbone_trains_its_adapter_and_patch_embedding_and_saves_merged(sd3, tmp_path):
    model = backbone.add_lora(backbone.load_pretrained(sd3, 64, 48, 4), RANK, seed=0)
    assert model.transformer.config.in_channels == 8  # the source channels, added
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert {n for n in trainable if not n.startswith(PATCH)} == {n for n in trainable if ".lora_" in n} != set()
    assert {PATCH + "weight", PATCH + "bias"} <= set(trainable)
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([0.3, 0.8])
    model(x, t, _cond()).square().mean().backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    model.save(tmp_path / "saved")
    saved = load_file(tmp_path / "saved" / "diffusion_pytorch_model.safetensors")
    assert not [k for k in saved if "lora" in k]  # a plain SD3 transformer
    loaded = backbone.load(tmp_path / "saved")
    with torch.no_grad():
        assert torch.allclose(loaded(x, t, _cond()), model(x, t, _cond()), atol=1e-5)
    assert lora.lora_layers(model)  # the trained model itself keeps its adapter


# --- the pipeline through it ---------------------------------------------------------------------


def _untrained_evaluator():
    torch.manual_seed(0)
    tok = T.tokenizer()
    reference = np.random.default_rng(0).normal(size=(50, 256)).astype(np.float32)
    return E.Evaluator(E.SceneParser(E.ParserConfig(size=32)), E.build_clip(32, tok), tok, reference)


def test_train_distill_evaluate_through_the_pretrained_model(cfg, data, sd3, tmp_path, monkeypatch):
    trainable, teachers = {}, []

    def spied_fit(fit):
        def wrapped(model, *args, **kw):
            trainable[kw["work"].name.removesuffix(".partial")] = [n for n, p in model.named_parameters()
                                                                   if p.requires_grad]
            return fit(model, *args, **kw)
        return wrapped

    load_teacher = teacher.load_teacher
    monkeypatch.setattr(run, "fit", spied_fit(run.fit))  # the training run both share
    monkeypatch.setattr(teacher, "load_teacher",
                        lambda *a, **kw: teachers.append(load_teacher(*a, **kw)) or teachers[-1])
    models = tmp_path / "models"
    base, edit, student = models / "base", models / "experts" / "edit", models / "students" / "danceopd-s0"
    for name, out, init in (("base", base, None), ("edit", edit, base)):
        sft.train_model(sft.plan(name, cfg.train, cfg.experts), cfg.train, cfg.model, cfg.compute, data=data, out=out,
                        init=init)
    distill.train_student(cfg.method("t2i_edit", "danceopd"), cfg.settings["t2i_edit"], cfg.fields, cfg.routing,
                          cfg.train, cfg.model.shift, cfg.compute, data=data, base=base, experts=models / "experts",
                          router_dir=models / "router", out=student, name="t2i_edit/danceopd-s0", seed=0,
                          lora_rank=cfg.model.lora_rank)

    # Only the adapters (and the patch embedding) trained; every other weight is its init's exactly.
    assert set(trainable) == {"base", "edit", "danceopd-s0"}
    for names in trainable.values():
        assert {n for n in names if not n.startswith(PATCH)} == {n for n in names if ".lora_" in n} != set()
    pretrained = backbone.load_pretrained(sd3, 64, 48, 4).state_dict()
    for folder, init in ((base, pretrained), (edit, backbone.load(base).state_dict()),
                         (student, backbone.load(edit).state_dict())):
        weights = backbone.load(folder).state_dict()
        assert set(weights) == set(init)  # a plain checkpoint: the adapter merged
        assert all(torch.equal(v, init[k]) for k, v in weights.items() if not _is_lora_target(k) and PATCH not in k)
        assert any(not torch.equal(v, init[k]) for k, v in weights.items() if _is_lora_target(k))
        sampling = checkpoint.read_sampling(folder)
        assert sampling["resolution"] == 32 and sampling["latents"] == latents.space(sd3).card()
        assert sampling["text_encoder"] == data.embeddings.info
        assert json.loads((folder / checkpoint.LOG).read_text())["recipe"]["lora_rank"] == RANK
    # The teachers: the sources' merged checkpoints, frozen, never an adapter.
    for field in teachers[0].fields:
        assert not lora.lora_layers(field.model) and not any(p.requires_grad for p in field.model.parameters())

    # Evaluation: sampled in the latents, decoded to 32x32 pixels for the pixel-space evaluator.
    field, guidance, routes, space = evaluation.load_field("danceopd-s0", cfg.eval, cfg.fields, model=student,
                                                           base=None, experts=None, device=CPU)
    assert isinstance(space, latents.Latents) and routes is None
    test = data.seen_in(space).tensors(["local_edit"], "test", limit=3)
    x, cond = test.batch(torch.arange(3))
    out = space.decode(sample(field, cond, steps=2, shift=cfg.model.shift, seed=0,
                              image_shape=tuple(x.shape[1:])))
    assert x.shape == (3, 4, 16, 16) and out.shape == (3, 3, 32, 32) and -1 <= out.min() <= out.max() <= 1
    result, outcomes, grid = evaluation.evaluate(field, _untrained_evaluator(), data.seen_in(space), cfg.eval,
                                                 cfg.model.shift, guidance, CPU, routes)
    for key in ("geneval", "gedit", "clip_score", "realism", "kid", "fid"):
        assert math.isfinite(result[key]), key
    assert len(outcomes["gedit"]["ok"]) == 2 * cfg.eval.count and grid.size[0] > 0
    *_, teacher_space = evaluation.load_field("teacher", cfg.eval, cfg.fields, cfg.settings["t2i_edit"], model=None,
                                              base=base, experts=models / "experts", device=CPU)
    assert isinstance(teacher_space, latents.Latents)

    # The inference command reads the card: the SD3 encoders, the source encoded, the output decoded.
    source = tmp_path / "source.png"
    Image.fromarray(test.records[0].source).save(source)
    png = tmp_path / "edited.png"
    assert generate.main(["--model", str(student), "--task", "local_edit", "--image", str(source), "--prompt",
                          test.records[0].prompt, "--steps", "2", "--out", str(png)]) == 0
    assert Image.open(png).size == (32, 32)


def test_checkpoints_keep_the_pretrained_weights_dtype(sd3, tmp_path):
    """A bf16 pretrained transformer (SD3.5's own dtype): the model trains in float32, its checkpoints
    are written in bf16 (half the disk) and reload as float32 to train; a frozen copy on the CPU is
    float32 too (bf16 only where a GPU's autocast computes in it). A float32 folder stays float32."""
    from diffusers import SD3Transformer2DModel

    half = tmp_path / "bf16"
    SD3Transformer2DModel.from_pretrained(sd3 / "transformer").to(torch.bfloat16).save_pretrained(half)
    for folder, stored in ((half, "BF16"), (sd3 / "transformer", "F32")):
        model = backbone.load_pretrained(folder, 64, 48, 4)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        out = tmp_path / "saved" / stored
        model.save(out)
        weights = load_file(out / "diffusion_pytorch_model.safetensors")
        assert {str(w.dtype) for w in weights.values()} == {f"torch.{backbone.SAFETENSORS_DTYPES[stored]}"}
        again = backbone.load(out)
        assert again.weights_dtype == model.weights_dtype and all(p.dtype == torch.float32 for p in again.parameters())
        for key, value in again.state_dict().items():  # the float32 weights, rounded once to the stored dtype
            assert torch.equal(value, model.state_dict()[key].to(weights[key.removeprefix("transformer.")].dtype)
                               .float()), key
        assert all(p.dtype == torch.float32 for p in backbone.load(out, frozen_on=CPU).parameters())
