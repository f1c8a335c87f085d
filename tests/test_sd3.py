"""SD3-family pieces against diffusers/peft themselves, on a tiny random SD3 folder loaded from disk."""
import pytest
import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel, StableDiffusion3Pipeline

from pipeline.core import lora
from pipeline.core.latents import Latents
from pipeline.curation.sd3_text import SD3TextEncoder
from tests.sd3_tiny import make_tiny_sd3

PROMPTS = ["a red cat", "dog", "", "a red cat", "Red dog, cat! " * 30]  # a repeat; one past 77 CLIP tokens


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    return make_tiny_sd3(tmp_path_factory.mktemp("sd3") / "tiny")


@pytest.fixture(scope="module")
def sd3_no_t5(tmp_path_factory):
    return make_tiny_sd3(tmp_path_factory.mktemp("sd3") / "tiny_no_t5", with_t5=False)


def _images(b=3, size=32):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


# --- latents -------------------------------------------------------------------------------------


def test_latents_round_trip_shapes_and_batching(sd3):
    latents = Latents(sd3, batch_size=2)  # 3 images: two chunks
    assert (latents.channels, latents.downsample) == (4, 2)
    z = latents.encode(_images())
    assert z.shape == (3, 4, 16, 16) and z.dtype == torch.float32
    x = latents.decode(z)
    assert x.shape == (3, 3, 32, 32) and x.abs().max() <= 1
    # chunking changes only float32 summation order (conv kernels block by batch on some CPUs)
    assert torch.allclose(z, Latents(sd3, batch_size=8).encode(_images()), rtol=1e-4, atol=1e-5)
    assert torch.equal(z, latents.encode(_images()))  # the posterior's mode: deterministic


def test_latents_follow_diffusers_sd3_convention(sd3):
    latents = Latents(sd3)
    vae = AutoencoderKL.from_pretrained(sd3 / "vae", local_files_only=True).eval()
    scale, shift = vae.config.scaling_factor, vae.config.shift_factor
    assert (scale, shift) == (1.5305, 0.0609)
    with torch.no_grad():
        ref = (vae.encode(_images()).latent_dist.mode() - shift) * scale  # SD3 img2img's encode
        back = vae.decode(ref / scale + shift, return_dict=False)[0].clamp(-1, 1)  # SD3 pipeline's decode
    assert torch.allclose(latents.encode(_images()), ref, atol=1e-6)
    assert torch.allclose(latents.decode(ref), back, atol=1e-6)


def test_latents_without_shift_factor(sd3, tmp_path):
    vae = AutoencoderKL.from_pretrained(sd3 / "vae", local_files_only=True).eval()
    vae.register_to_config(shift_factor=None)  # SD1/SDXL-style configs have none
    vae.save_pretrained(tmp_path / "vae")
    latents = Latents(tmp_path / "vae")
    assert latents.shift_factor == 0.0
    with torch.no_grad():
        ref = vae.encode(_images()).latent_dist.mode() * vae.config.scaling_factor
    assert torch.allclose(latents.encode(_images()), ref, atol=1e-6)


def test_latents_bad_inputs(sd3, tmp_path):
    latents = Latents(sd3)
    with pytest.raises(ValueError, match="downsamples by 2"):
        latents.encode(_images(size=31))
    with pytest.raises(ValueError, match="channels"):
        latents.decode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        Latents(tmp_path)


# --- text encoders -------------------------------------------------------------------------------


@pytest.mark.parametrize("with_t5", [True, False])
def test_sd3_text_equals_diffusers_encode_prompt(sd3, sd3_no_t5, with_t5):
    folder = sd3 if with_t5 else sd3_no_t5
    encoder = SD3TextEncoder(folder, max_tokens=12, batch_size=2)
    assert (encoder.length, encoder.dim, encoder.pooled_dim) == (77 + 12, 64, 16 + 32)
    text, pooled = encoder.encode(PROMPTS)
    assert text.shape == (5, 89, 64) and pooled.shape == (5, 48) and text.dtype == pooled.dtype == "float32"

    no_t5 = {} if with_t5 else dict(text_encoder_3=None, tokenizer_3=None)  # diffusers wants them named
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, local_files_only=True, **no_t5)
    assert (pipe.text_encoder_3 is None) == (not with_t5)
    with torch.no_grad():
        ref_text, _, ref_pooled, _ = pipe.encode_prompt(PROMPTS, None, None, do_classifier_free_guidance=False,
                                                        max_sequence_length=12)
    assert torch.allclose(torch.from_numpy(text), ref_text, atol=1e-5)
    assert torch.allclose(torch.from_numpy(pooled), ref_pooled, atol=1e-5)
    assert (text[:, 77:].any()) == with_t5  # without a T5: zeros, as diffusers
    assert not text[:, :77, 48:].any()  # CLIP-L ⊕ CLIP-G (48 wide) zero-padded to T5's 64


def test_sd3_text_null_cache_and_empty(sd3):
    encoder = SD3TextEncoder(sd3, max_tokens=8)
    text, pooled = encoder.encode(["", "a red cat"])
    null_text, null_pooled = encoder.null()
    assert (null_text == text[0]).all() and (null_pooled == pooled[0]).all()
    assert set(encoder._cache) == {"", "a red cat"}  # each distinct prompt encoded once
    empty_text, empty_pooled = encoder.encode([])
    assert empty_text.shape == (0, 77 + 8, 64) and empty_pooled.shape == (0, 48)
    with pytest.raises(FileNotFoundError, match="SD3"):
        SD3TextEncoder(sd3 / "vae")


# --- LoRA ----------------------------------------------------------------------------------------


def _transformer(folder):
    return SD3Transformer2DModel.from_pretrained(folder / "transformer", local_files_only=True).eval()


def _run(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return model(hidden_states=torch.randn(2, 4, 16, 16, generator=g),
                 encoder_hidden_states=torch.randn(2, 20, 64, generator=g),
                 pooled_projections=torch.randn(2, 48, generator=g),
                 timestep=torch.tensor([250.0, 900.0]), return_dict=False)[0]  # (2, 4, 16, 16)


def _trained(folder, rank=4):
    """A transformer with a LoRA after one optimizer step (so the adapter is no longer zero)."""
    torch.manual_seed(0)
    model = lora.add_lora(_transformer(folder), rank)
    params = [p for p in model.parameters() if p.requires_grad]
    loss = (_run(model) - 1).square().mean()
    loss.backward()
    torch.optim.SGD(params, lr=1.0).step()
    return model


def test_add_lora_trains_only_the_adapter_and_starts_as_base(sd3):
    base, model = _transformer(sd3), lora.add_lora(_transformer(sd3), rank=4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    layers = lora.lora_layers(model)
    assert {t for t in lora.TARGETS if any(n.endswith("." + t) for n in layers)} == set(lora.TARGETS)
    config = model.peft_config[lora.ADAPTER]
    assert (config.r, config.lora_alpha, config.init_lora_weights) == (4, 4, "gaussian")
    with torch.no_grad():
        assert torch.equal(_run(model), _run(base))  # B = 0 at init
    assert lora.add_lora(_transformer(sd3), 4, alpha=8).peft_config[lora.ADAPTER].lora_alpha == 8
    with pytest.raises(ValueError, match="already has an adapter"):
        lora.add_lora(model, 4)


def test_merged_copy_is_a_frozen_plain_teacher(sd3):
    model, base = _trained(sd3), _transformer(sd3)
    teacher = lora.merged_copy(model)
    assert not lora.lora_layers(teacher) and not hasattr(teacher, "peft_config")
    assert set(teacher.state_dict()) == set(base.state_dict())  # plain SD3 weights: save_pretrained-able
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        adapted = _run(model)
        assert not torch.allclose(adapted, _run(base), atol=1e-4)  # the step did change the model
        assert torch.allclose(_run(teacher), adapted, atol=1e-5)
    assert lora.lora_layers(model) and any(p.requires_grad for p in model.parameters())  # student untouched
