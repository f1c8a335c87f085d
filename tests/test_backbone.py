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


def _fixed_output(model, out):
    """Make the model's transformer return `out` whatever its inputs (the network's prediction)."""
    model.transformer.forward = lambda **kwargs: (out,)
    return model


def test_sample_prediction_returns_the_velocity_of_its_clean_image():
    # x_t = (1 - t) x0 + t noise: a network that predicts x0 exactly gives the path's velocity noise - x0.
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1, torch.randn(4, 3, 16, 16, generator=g)
    t = torch.tensor([1.0, 0.5, 0.2, backbone.T_MIN])
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
    model = _fixed_output(backbone.build("tiny", 4, 16, 384, prediction="sample"), x0)
    torch.testing.assert_close(model(x_t, t, _cond(4)), noise - x0, rtol=1e-5, atol=1e-5)
    # below T_MIN the division is capped: v = (x_t - x0) / T_MIN = (t / T_MIN) (noise - x0)
    small = torch.full((4,), 0.01)
    x_s = (1 - 0.01) * x0 + 0.01 * noise
    torch.testing.assert_close(model(x_s, small, _cond(4)), (0.01 / backbone.T_MIN) * (noise - x0), rtol=1e-5,
                               atol=1e-5)
    # the velocity model returns the network's output as it is
    velocity = _fixed_output(backbone.build("tiny", 4, 16, 384), x0)
    assert torch.equal(velocity(x_t, t, _cond(4)), x0)


def test_sample_prediction_is_read_back_from_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = backbone.build("tiny", 4, 16, 384, prediction="sample")
    model.save(tmp_path / "x")
    loaded = backbone.load(tmp_path / "x")
    assert loaded.prediction == "sample"
    x, t, cond = torch.randn(2, 3, 16, 16), torch.rand(2), _cond()
    assert torch.equal(model(x, t, cond), loaded(x, t, cond))
    torch.manual_seed(0)
    backbone.build("tiny", 4, 16, 384).save(tmp_path / "v")  # same weights, velocity
    assert backbone.load(tmp_path / "v").prediction == "velocity"
    assert not torch.equal(backbone.load(tmp_path / "v")(x, t, cond), loaded(x, t, cond))
    with pytest.raises(ValueError, match="do not share one architecture"):  # never averaged together
        backbone.average([tmp_path / "x", tmp_path / "v"])
    with pytest.raises(ValueError, match="model.prediction: 'noise'"):
        backbone.build("tiny", 4, 16, 384, prediction="noise")


def test_sampling_a_sample_model_is_diffusers_euler_on_its_velocities():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from pipeline.core import flow

    torch.manual_seed(0)
    model = backbone.build("tiny", 4, 16, 384, prediction="sample").eval()
    with torch.no_grad():  # a random source path would be zero: make the output depend on x, t and text
        model.transformer.proj_out.weight.normal_(0, 0.5)
    cond, noise = _cond(), torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(16)
    x = noise
    with torch.no_grad():
        for i, timestep in enumerate(scheduler.timesteps):
            x = scheduler.step(model(x, scheduler.sigmas[i].expand(2), cond), timestep, x).prev_sample
        ours = flow.euler_sample(model, noise, cond, flow.time_grid(16, 3.0))
    assert torch.equal(ours, x)


def test_gradient_checkpointing_recomputes_each_block_with_the_same_gradients():
    """`compute.grad_checkpointing`: every transformer block goes through the checkpoint function in
    a backward pass (none under no_grad, as in a rollout), and loss and gradients are unchanged."""
    torch.manual_seed(0)
    plain = backbone.build("tiny", 2, 8, 16)
    checkpointed = backbone.build("tiny", 2, 8, 16)
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.checkpoint_activations() is checkpointed
    calls = []
    inner = checkpointed.transformer._gradient_checkpointing_func
    checkpointed.transformer._gradient_checkpointing_func = lambda *a, **kw: calls.append(1) or inner(*a, **kw)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(3, 3, 8, 8, generator=g), torch.rand(3, generator=g)
    cond = Cond(text=torch.randn(3, 4, 16, generator=g), pooled=torch.randn(3, 16, generator=g), source=None)
    with torch.no_grad():
        checkpointed(x, t, cond)
    assert calls == []
    losses = [(m(x, t, cond) ** 2).mean() for m in (plain, checkpointed)]
    for loss in losses:
        loss.backward()
    assert len(calls) == len(checkpointed.transformer.transformer_blocks)
    assert torch.allclose(losses[0], losses[1])
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name
