import pytest
import torch
from diffusers import SD3Transformer2DModel

from pipeline.core import backbone
from pipeline.core.fields import Cond


def _cond(b=2, source=True, dim=384):
    g = torch.Generator().manual_seed(1)
    return Cond(text=torch.randn(b, 5, dim, generator=g), pooled=torch.randn(b, dim, generator=g),
                source=torch.rand(b, 3, 16, 16, generator=g) * 2 - 1 if source else None)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return backbone.build("tiny", 4, 16, 384)


def test_forward_shape_and_timestep_scale(model, monkeypatch):
    seen = {}
    forward = model.transformer.forward

    def spy(**kwargs):
        seen.update(kwargs)
        return forward(**kwargs)

    monkeypatch.setattr(model.transformer, "forward", spy)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0.25, 1.0])
    v = model(x, t, _cond())
    assert v.shape == x.shape
    assert torch.equal(seen["timestep"], torch.tensor([250.0, 1000.0]))  # diffusers' SD3 convention
    assert seen["hidden_states"].shape == (2, 6, 16, 16)  # noisy image ⊕ source


def test_t2i_source_is_zeros(model):
    x, t, cond = torch.randn(2, 3, 16, 16), torch.rand(2), _cond(source=False)
    zeros = Cond(cond.text, cond.pooled, torch.zeros(2, 3, 16, 16))
    assert torch.equal(model(x, t, cond), model(x, t, zeros))
    with torch.no_grad():  # as an expert trained on sources has
        model.transformer.pos_embed.proj.weight[:, 3:].normal_()
    assert not torch.equal(model(x, t, cond), model(x, t, _cond()))  # the source matters


def test_checkpoint_round_trip(model, tmp_path):
    model.save(tmp_path / "ckpt")
    loaded = backbone.load(tmp_path / "ckpt")
    x, t, cond = torch.randn(2, 3, 16, 16), torch.rand(2), _cond()
    assert torch.equal(model(x, t, cond), loaded(x, t, cond))
    assert loaded.transformer.config.num_layers == backbone.PRESETS["tiny"]["num_layers"]


def test_load_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        backbone.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.pretrained"):
        backbone.load_pretrained(tmp_path / "nowhere", 384, 384, 3)
    with pytest.raises(ValueError, match="model.preset: unknown preset 'XL'"):
        backbone.build("XL", 4, 32, 384)


def test_pretrained_t2i_transformer_gets_zero_source_channels(tmp_path):
    torch.manual_seed(0)
    t2i = SD3Transformer2DModel(sample_size=16, patch_size=4, in_channels=3, out_channels=3, num_layers=1,
                                attention_head_dim=16, num_attention_heads=2, joint_attention_dim=384,
                                caption_projection_dim=32, pooled_projection_dim=384, pos_embed_max_size=4)
    t2i.save_pretrained(tmp_path / "pipe" / "transformer")
    model = backbone.load_pretrained(tmp_path / "pipe", 384, 384, 3)
    assert model.transformer.config.in_channels == 6
    x, t, cond = torch.randn(2, 3, 16, 16), torch.rand(2), _cond()
    expected = t2i(hidden_states=x, encoder_hidden_states=cond.text, pooled_projections=cond.pooled,
                   timestep=t * 1000).sample
    assert torch.allclose(model(x, t, cond), expected, atol=1e-6)  # starts as the T2I model it was
    with pytest.raises(ValueError, match="joint_attention_dim=384, the text encoder gives 512"):
        backbone.load_pretrained(tmp_path / "pipe", 512, 384, 3)
    with pytest.raises(ValueError, match="model.pretrained: .* pooled_projection_dim=384, the text encoder gives 48"):
        backbone.load_pretrained(tmp_path / "pipe", 384, 48, 3)
    with pytest.raises(ValueError, match="model.pretrained: .* out_channels=3, its inputs have 4 channels"):
        backbone.load_pretrained(tmp_path / "pipe", 384, 384, 4)


def test_average_is_the_parameter_mean(tmp_path):
    folders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = backbone.build("tiny", 4, 16, 384)
        m.save(tmp_path / str(seed))
        folders.append(tmp_path / str(seed))
    merged = backbone.average(folders)
    a, b = backbone.load(folders[0]).state_dict(), backbone.load(folders[1]).state_dict()
    for k, v in merged.state_dict().items():
        assert torch.allclose(v, (a[k] + b[k]) / 2)
    backbone.build("tiny", 8, 16, 384).save(tmp_path / "other")
    with pytest.raises(ValueError, match="do not share one architecture"):
        backbone.average([folders[0], tmp_path / "other"])


def test_a_new_model_ignores_the_source_until_trained_on_it():
    torch.manual_seed(0)
    model = backbone.build("tiny", 4, 32, 8)
    x, t = torch.randn(2, 3, 32, 32), torch.rand(2)
    text, pooled = torch.randn(2, 4, 8), torch.randn(2, 8)
    with torch.no_grad():
        a = model(x, t, Cond(text, pooled, torch.randn(2, 3, 32, 32)))
        b = model(x, t, Cond(text, pooled, None))
    assert torch.equal(a, b)
