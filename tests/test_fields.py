"""pipeline.fields: Cond batching, the frozen ModelField, CFG and routing, on tiny toy fields."""

import pytest
import torch
from torch import nn

from pipeline.core.fields import Cond, GuidedField, ModelField, RoutedField

B, C, H, W, L, D = 4, 3, 4, 4, 5, 6


def make_cond(batch=B, source=True, route=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Cond(
        text=torch.randn(batch, L, D, generator=g),
        pooled=torch.randn(batch, D, generator=g),
        source=torch.rand(batch, 3, H, W, generator=g) * 2 - 1 if source else None,
        route=route,
    )


class ToyModel(nn.Module):
    """A backbone-shaped toy: v depends on x, t, pooled text and (if any) the source image."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.text = nn.Linear(D, C)
        self.mix = nn.Conv2d(C, C, 1)

    def forward(self, x, t, cond):
        v = self.mix(x) * t.view(-1, 1, 1, 1) + self.text(cond.pooled).view(-1, C, 1, 1)
        return v if cond.source is None else v + cond.source  # (B, C, H, W); C == 3 here


class Recorder:
    """Wraps a field and records the batch size and condition of every call."""

    def __init__(self, field):
        self.field, self.calls = field, []

    def __call__(self, x, t, cond):
        assert len(x) == len(t) == len(cond)
        self.calls.append(cond)
        return self.field(x, t, cond)


@pytest.fixture
def x():
    return torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def t():
    return torch.tensor([0.9, 0.5, 0.3, 0.1])


@pytest.fixture
def null():
    return torch.zeros(L, D), torch.full((D,), 0.1)


# --- Cond ---------------------------------------------------------------------------------------


def test_cond_subset_cat_len():
    cond = make_cond(route=torch.tensor([0, 1, 0, 2]))
    assert len(cond) == B
    mask = cond.route == 0
    sub = cond[mask]
    assert len(sub) == 2 and torch.equal(sub.text, cond.text[mask])
    assert torch.equal(sub.source, cond.source[mask])
    assert torch.equal(sub.route, torch.tensor([0, 0]))
    picked = cond[torch.tensor([3, 1])]
    assert torch.equal(picked.pooled, cond.pooled[[3, 1]])
    assert torch.equal(picked.route, torch.tensor([2, 1]))
    assert len(cond[2]) == 1 and torch.equal(cond[2].text, cond.text[2:3])
    both = cond.cat(cond[:2])
    assert len(both) == B + 2 and torch.equal(both.text[B:], cond.text[:2])
    assert torch.equal(both.route, torch.tensor([0, 1, 0, 2, 0, 1]))


def test_cond_keeps_none():
    cond = make_cond(source=False)
    assert cond[:2].source is None and cond[:2].route is None
    assert cond.cat(cond).source is None and cond.cat(cond).route is None
    with pytest.raises(ValueError, match="source"):
        cond.cat(make_cond(source=True))


def test_cond_checks_batch_sizes():
    with pytest.raises(ValueError, match="pooled"):
        Cond(text=torch.zeros(2, L, D), pooled=torch.zeros(3, D), source=None)


def test_cond_with_text_broadcasts_and_keeps_source_and_route(null):
    cond = make_cond(route=torch.tensor([1, 0, 1, 0]))
    for text, pooled in (null, (null[0][None], null[1][None])):
        other = cond.with_text(text, pooled)
        assert other.text.shape == (B, L, D) and other.pooled.shape == (B, D)
        assert torch.equal(other.text[3], null[0]) and torch.equal(other.pooled[2], null[1])
        assert other.source is cond.source and other.route is cond.route
    per_sample = make_cond(seed=5)
    other = cond.with_text(per_sample.text, per_sample.pooled)
    assert torch.equal(other.text, per_sample.text) and torch.equal(other.pooled, per_sample.pooled)


# --- ModelField ---------------------------------------------------------------------------------


def test_model_field_freezes(x, t):
    model = ToyModel().train()
    field = ModelField(model)
    assert field.model is model and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    cond = make_cond()
    v = field(x.requires_grad_(), t, cond)
    assert v.shape == x.shape and not v.requires_grad and v.grad_fn is None
    torch.testing.assert_close(v, model(x, t, cond))


# --- GuidedField --------------------------------------------------------------------------------


def test_guided_scale_one_is_the_conditional_field(x, t, null):
    model, cond = ToyModel(), make_cond()
    inner = Recorder(model)
    v = GuidedField(inner, 1.0, *null)(x, t, cond)
    torch.testing.assert_close(v, model(x, t, cond))
    assert [len(c) for c in inner.calls] == [B]


@pytest.mark.parametrize("source", [True, False])
def test_guided_matches_formula_in_one_call(x, t, null, source):
    model, cond, scale = ToyModel(), make_cond(source=source), 4.5
    inner = Recorder(model)
    v = GuidedField(inner, scale, *null)(x, t, cond)
    assert v.shape == x.shape
    assert [len(c) for c in inner.calls] == [2 * B]  # cond and null batched into one call
    # By hand, from two separate calls; the null keeps the source image.
    null_cond = Cond(null[0].expand(B, L, D), null[1].expand(B, D), cond.source)
    v_cond, v_null = model(x, t, cond), model(x, t, null_cond)
    torch.testing.assert_close(v, v_null + scale * (v_cond - v_null))


def test_guided_null_keeps_source_and_drops_text(x, t, null):
    cond = make_cond(route=torch.tensor([0, 1, 1, 0]))
    inner = Recorder(ToyModel())
    GuidedField(inner, 3.0, *null)(x, t, cond)
    (seen,) = inner.calls
    assert torch.equal(seen.source, torch.cat([cond.source, cond.source]))
    assert torch.equal(seen.route, torch.cat([cond.route, cond.route]))
    assert torch.equal(seen.text[:B], cond.text) and (seen.text[B:] == 0).all()
    assert torch.equal(seen.pooled[B:], null[1].expand(B, D))


def test_two_scale_guidance_is_instructpix2pix_s_formula(x, t, null):
    model, cond = ToyModel(), make_cond()
    inner = Recorder(model)
    v = GuidedField(inner, 4.0, *null, image_scale=1.5)(x, t, cond)
    assert [len(c) for c in inner.calls] == [3 * B]  # cond, text null, text+source null in one call
    text_null = Cond(null[0].expand(B, L, D), null[1].expand(B, D), cond.source)
    none = Cond(null[0].expand(B, L, D), null[1].expand(B, D), torch.zeros_like(cond.source))
    v_cond, v_src, v_none = model(x, t, cond), model(x, t, text_null), model(x, t, none)
    torch.testing.assert_close(v, v_none + 1.5 * (v_src - v_none) + 4.0 * (v_cond - v_src))
    # ToyModel adds the source: the image term is exactly 1.5 x source, the text term CFG's
    text_term = model(x, t, Cond(cond.text, cond.pooled, None)) - model(x, t, Cond(*null_pair(null), None))
    torch.testing.assert_close(v, model(x, t, Cond(*null_pair(null), None)) + 1.5 * cond.source + 4.0 * text_term)
    # image scale 1 is single-scale CFG, and a T2I batch (no source) ignores the image scale
    torch.testing.assert_close(GuidedField(model, 4.0, *null, image_scale=1.0)(x, t, cond),
                               GuidedField(model, 4.0, *null)(x, t, cond))
    t2i = make_cond(source=False)
    torch.testing.assert_close(GuidedField(model, 4.0, *null, image_scale=1.5)(x, t, t2i),
                               GuidedField(model, 4.0, *null)(x, t, t2i))


def null_pair(null):
    return null[0].expand(B, L, D), null[1].expand(B, D)


# --- RoutedField --------------------------------------------------------------------------------


def toy_fields(n=3):
    return [ToyModel(seed=k) for k in range(n)]


@pytest.mark.parametrize("k", [0, 1, 2])
def test_hard_route_all_k_is_field_k(x, t, k):
    fields = toy_fields()
    cond = make_cond(route=torch.full((B,), k))
    with torch.no_grad():
        torch.testing.assert_close(RoutedField(fields)(x, t, cond), fields[k](x, t, cond))


def test_hard_route_is_per_sample_and_each_field_sees_only_its_samples(x, t):
    models = toy_fields()
    recorders = [Recorder(m) for m in models]
    route = torch.tensor([2, 0, 2, 2])
    cond = make_cond(route=route)
    with torch.no_grad():
        v = RoutedField(recorders, "hard")(x, t, cond)
        for b in range(B):
            expected = models[route[b]](x[b : b + 1], t[b : b + 1], cond[b])
            torch.testing.assert_close(v[b : b + 1], expected)
    assert v.shape == x.shape
    assert [[len(c) for c in r.calls] for r in recorders] == [[1], [], [3]]
    assert (recorders[2].calls[0].route == 2).all()


def test_hard_route_errors(x, t):
    with pytest.raises(ValueError, match="route"):
        RoutedField(toy_fields())(x, t, make_cond())
    with pytest.raises(ValueError, match="route"):
        RoutedField(toy_fields())(x, t, make_cond(route=torch.tensor([0, 1, 3, 0])))
    with pytest.raises(ValueError, match="fuzzy"):
        RoutedField(toy_fields(), mode="fuzzy")


def test_soft_is_the_weighted_mean(x, t):
    fields, cond = toy_fields(), make_cond(source=False)
    with torch.no_grad():
        vs = [f(x, t, cond) for f in fields]
        torch.testing.assert_close(RoutedField(fields, "soft")(x, t, cond), sum(vs) / 3)
        weighted = RoutedField(fields, "soft", weights=[2, 0, 2])(x, t, cond)
        torch.testing.assert_close(weighted, (vs[0] + vs[2]) / 2)
        assert weighted.shape == x.shape


def test_guided_over_routed_composes(x, t, null):
    models, route = toy_fields(2), torch.tensor([1, 0, 0, 1])
    cond, scale = make_cond(route=route), 2.0
    with torch.no_grad():
        v = GuidedField(RoutedField(models), scale, *null)(x, t, cond)
        for b in range(B):
            single = GuidedField(models[route[b]], scale, *null)
            expected = single(x[b : b + 1], t[b : b + 1], cond[b])
            torch.testing.assert_close(v[b : b + 1], expected)
