"""pipeline.train.distill: rollout, query selection, query states, routed targets (incl. CFG), the loss."""
import copy
import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from pipeline.config import Method
from pipeline.core import backbone, batches, flow
from pipeline.core.batches import TensorSet
from pipeline.core.fields import Cond, RoutedField
from pipeline.core.teacher import Route, build_teacher
from pipeline.data import world
from pipeline.train import distill, loop
from tests.conftest import ALL_ROWS, repo_cfg, tiny_cfg

N, C, S, L, D = 6, 3, 8, 4, 8  # samples, channels, image side, tokens, text dim
SHIFT = 3.0


def fake_set(n=N, seed=0) -> TensorSet:
    """A random TensorSet: tasks (and routes) cycle through world.TASKS."""
    g = torch.Generator().manual_seed(seed)
    task = torch.arange(n) % len(world.TASKS)
    return TensorSet(
        image=torch.randint(0, 256, (n, C, S, S), generator=g, dtype=torch.uint8),
        source=torch.randint(0, 256, (n, C, S, S), generator=g, dtype=torch.uint8),
        has_source=task != world.TASKS.index("t2i"),
        prompt=torch.arange(n),
        text_table=torch.randn(n, L, D, generator=g).half(),
        pooled_table=torch.randn(n, D, generator=g).half(),
        task=task,
        route=task.clone(),
        records=[SimpleNamespace(bucket=world.TASKS[k]) for k in task],
    )


def method(**kw) -> Method:
    base = dict(init="local_edit", rollout_steps=4, query="low", queries=1, weighting="mean",
                states="on_policy", routing_mode="hard", routing_per="sample", steps=3, batch_size=4, grad_accum=1,
                lr=1e-3)
    return Method(**(base | kw))


def one_step(student, teacher, data, m, gen_seed=0, route_of=None):
    """The loss of one distillation step of method m: a batch from the seeded stream, then the step."""
    gen = torch.Generator().manual_seed(gen_seed)
    stream = batches.random_batches(data, m.batch_size, gen)
    if route_of is not None:
        stream = distill.relabelled(stream, route_of)
    return distill.distill_step(teacher, m, SHIFT, torch.device("cpu"))(student, next(stream), gen)


class Toy(nn.Module):
    """A backbone-shaped field: v depends on x, t, the pooled text and the source."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.mix = nn.Conv2d(C, C, 1)
        self.text = nn.Linear(D, C)

    def forward(self, x, t, cond):
        v = self.mix(x) * t.view(-1, 1, 1, 1) + self.text(cond.pooled).view(-1, C, 1, 1)
        return v + 0.5 * cond.source


class Spy(Toy):
    """A Toy student that records every call: (x, t, cond, grad enabled)."""

    def __init__(self, seed=0):
        super().__init__(seed)
        self.calls = []

    def forward(self, x, t, cond):
        self.calls.append((x.detach().clone(), t.detach().clone(), cond, torch.is_grad_enabled()))
        return super().forward(x, t, cond)


class Probe(nn.Module):
    """A student whose velocity is a zero parameter p: after backward, target = -grad(p) * numel / 2."""

    def __init__(self):
        super().__init__()
        self.p, self.seen = None, None

    def forward(self, x, t, cond):
        if not torch.is_grad_enabled():  # the rollout
            return torch.zeros_like(x)
        self.p, self.seen = nn.Parameter(torch.zeros_like(x)), (x, t, cond)
        return self.p


def probe_target(teacher, data, m, gen_seed=0, **kw):
    """(target the loss regresses onto, the student's inputs) for one step of method m (mean, K=1)."""
    student = Probe()
    one_step(student, teacher, data, m, gen_seed, **kw).backward()
    return -student.p.grad * student.p.numel() / 2, student.seen


# --- rollout ------------------------------------------------------------------------------------


def test_rollout_states_are_the_detached_pre_step_states_at_the_grid_times():
    data, student = fake_set(), Toy(1)
    x, cond = data.batch(torch.arange(4))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    traj = distill.rollout(student, noise, cond, 5, SHIFT)  # called with grad enabled
    assert traj.states.shape == (5, 4, C, S, S)
    assert not traj.states.requires_grad and not traj.final.requires_grad
    assert torch.equal(traj.states[0], noise)
    assert torch.equal(traj.t, flow.time_grid(5, SHIFT)[:-1])
    # Each state is one Euler step of the student from the previous one, at that state's t.
    grid = flow.time_grid(5, SHIFT)
    with torch.no_grad():
        step = traj.states[2] + (grid[3] - grid[2]) * student(traj.states[2], grid[2].expand(4), cond)
    assert torch.allclose(traj.states[3], step, atol=1e-6)
    for i in range(4):  # batched == per sample
        single = distill.rollout(student, noise[i:i + 1], cond[i], 5, SHIFT)
        assert torch.allclose(single.states[:, 0], traj.states[:, i], atol=1e-6)


def test_rollout_of_the_tiny_backbone_is_batched_like_per_sample():
    torch.manual_seed(0)
    student = backbone.build("tiny", 2, S, D)
    data = fake_set()
    x, cond = data.batch(torch.arange(3))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    traj = distill.rollout(student, noise, cond, 3, SHIFT)
    assert any(p.requires_grad for p in student.parameters()) and not traj.states.requires_grad
    for i in range(3):
        single = distill.rollout(student, noise[i:i + 1], cond[i], 3, SHIFT)
        assert torch.allclose(single.states[:, 0], traj.states[:, i], atol=1e-5)


# --- query_indices ------------------------------------------------------------------------------


def expected_floor_mean(a, b, n):
    """E[floor(n u)] for u ~ Beta(a, b), integers a, b: sum_j P(u >= j/n), P(u < x) = P(Bin(a+b-1, x) >= a)."""
    m = a + b - 1
    cdf = lambda x: sum(math.comb(m, i) * x**i * (1 - x) ** (m - i) for i in range(a, m + 1))  # noqa: E731
    return sum(1 - cdf(j / n) for j in range(1, n))


@pytest.mark.parametrize("query,a,b", [("low", 5, 2), ("mid", 5, 5), ("high", 2, 5), ("uniform", 1, 1)])
def test_query_index_means_follow_the_beta_distributions(query, a, b):
    gen = torch.Generator().manual_seed(0)
    big = distill.query_indices(10_000, 20_000, 1, query, gen).float()
    assert abs((big / 10_000).mean().item() - a / (a + b)) < 0.006
    assert abs((big / 10_000).var().item() - a * b / ((a + b) ** 2 * (a + b + 1))) < 0.003
    small = distill.query_indices(16, 20_000, 1, query, gen).float()
    assert small.min() >= 0 and small.max() <= 15
    assert abs(small.mean().item() - expected_floor_mean(a, b, 16)) < 0.05


def test_low_queries_sit_on_the_low_noise_side():
    idx = distill.query_indices(16, 4000, 1, "low", torch.Generator().manual_seed(0))
    t = flow.time_grid(16, SHIFT)[idx]
    assert t.mean() < 0.55 and (idx >= 8).float().mean() > 0.85


@pytest.mark.parametrize("query", ["low", "mid", "high", "uniform"])
def test_multiple_queries_are_distinct_sorted_and_reproducible(query):
    idx = distill.query_indices(16, 300, 8, query, torch.Generator().manual_seed(3))
    assert idx.shape == (300, 8) and idx.dtype == torch.long
    for row in idx.tolist():
        assert len(set(row)) == 8 and row == sorted(row) and 0 <= min(row) and max(row) < 16
    again = distill.query_indices(16, 300, 8, query, torch.Generator().manual_seed(3))
    assert torch.equal(idx, again)
    other = distill.query_indices(16, 300, 8, query, torch.Generator().manual_seed(4))
    assert not torch.equal(idx, other)


def test_dense_queries_fill_every_state_even_when_draws_run_out():
    assert torch.equal(distill.query_indices(16, 2, 16, "uniform"), torch.arange(16).expand(2, 16))
    # low-bias draws almost never reach index 0 of 64 states: the fallback must fill with unused ones
    idx = distill.query_indices(64, 5, 60, "low", torch.Generator().manual_seed(0))
    assert all(len(set(row)) == 60 for row in idx.tolist())
    with pytest.raises(ValueError, match="queries"):
        distill.query_indices(4, 2, 5, "low")
    with pytest.raises(ValueError, match="query"):
        distill.query_indices(4, 2, 1, "lowest")


# --- routing and the teacher ------------------------------------------------------------------


class Tagged:
    """A toy field that returns its constant tag and records which samples (by pooled row) it saw."""

    def __init__(self, tag):
        self.tag, self.seen = float(tag), []

    def __call__(self, x, t, cond):
        self.seen.append(cond.pooled.clone())
        return torch.full_like(x, self.tag)


def sample_ids(pooled, data):
    """Row indices of ``data`` that each pooled embedding came from."""
    table = data.pooled.float()
    return [int((table == row).all(-1).nonzero()[0]) for row in pooled]


@pytest.mark.parametrize("source", ["label", "router"])
def test_hard_routing_supervises_each_sample_with_exactly_its_field(source):
    data, fields = fake_set(), [Tagged(k + 1) for k in range(3)]
    teacher = RoutedField(fields, "hard")
    route_of = (lambda cond: (cond.route + 1) % 3) if source == "router" else None
    target, (_, _, cond) = probe_target(teacher, data, method(batch_size=8), route_of=route_of)
    ids = sample_ids(cond.pooled, data)
    routes = data.task[ids] if route_of is None else (data.task[ids] + 1) % 3
    assert torch.equal(cond.route, routes)
    assert torch.allclose(target, (routes + 1).float().view(-1, 1, 1, 1).expand_as(target))
    seen = [sample_ids(torch.cat(f.seen), data) for f in fields]
    assert sorted(sum(seen, [])) == sorted(ids)  # every sample seen once, by one field
    for k, ids_k in enumerate(seen):
        assert sorted(ids_k) == sorted(i for i, r in zip(ids, routes.tolist()) if r == k)


def test_soft_routing_follows_the_route_weights():
    class Const(nn.Module):
        def __init__(self, tag):
            super().__init__()
            self.tag = float(tag)

        def forward(self, x, t, cond):
            return torch.full_like(x, self.tag)

    data = fake_set()
    models = {k: Const(i + 1) for i, k in enumerate("abc")}
    teacher = build_teacher(models, list("abc"), "soft", weights=[1.0, 0.0, 3.0])  # routing.weights of the routes
    target, _ = probe_target(teacher, data, method(batch_size=8))
    assert torch.allclose(target, torch.full_like(target, (1 * 1 + 3 * 3) / 4))


def test_diffusionopd_queries_every_rollout_state_with_half_over_r_squared():
    student, R = Spy(0), 4
    m = method(queries=R, query="uniform", weighting="diffusionopd", rollout_steps=R, batch_size=3)
    loss = one_step(student, lambda x, t, cond: torch.zeros_like(x), fake_set(), m)
    x_t, t, cond, _ = student.calls[-1]
    grid = flow.time_grid(R, SHIFT)
    assert torch.equal(t, grid[:R].repeat(3))  # every pre-step state of every sample, the clean end never
    with torch.no_grad():
        v = Toy(0)(x_t, t, cond).view(3, R, -1)
    assert torch.allclose(loss, 0.5 / R**2 * sum(v[:, j].pow(2).mean() for j in range(R)), rtol=1e-5)


def test_soft_routing_supervises_with_the_average_field():
    data, fields = fake_set(), [Tagged(k + 1) for k in range(3)]
    teacher = RoutedField(fields, "soft")
    target, _ = probe_target(teacher, data, method(batch_size=8))
    assert torch.allclose(target, torch.full_like(target, 2.0))  # (1 + 2 + 3) / 3
    assert all(len(torch.cat(f.seen)) == 8 for f in fields)


def test_the_router_relabels_task_routes_and_leaves_realism_on_its_own():
    class FixedRouter:  # predicts global_edit for everything
        classes = world.TASKS

        def route(self, cond):
            return torch.full((len(cond),), 2)

    routes = [Route(t, t, (t,)) for t in world.TASKS] + [Route("realism", "realism", ("realism",))]
    route_of = distill.router_routes(FixedRouter(), routes)
    cond = Cond(torch.zeros(4, L, D), torch.zeros(4, D), None, route=torch.tensor([0, 1, 3, 3]))
    assert route_of(cond).tolist() == [2, 2, 3, 3]
    local_global = [Route("local_edit", "local_edit", ("local_edit",))]  # a predicted task without a route here
    FixedRouter.route = lambda self, cond: torch.zeros(len(cond), dtype=torch.long)  # always t2i
    assert distill.router_routes(FixedRouter(), local_global)(cond[:1]).tolist() == [0]


@pytest.mark.parametrize("use_cfg", [True, False])
def test_the_target_is_the_guided_routed_field_with_cfg_and_the_plain_one_without(use_cfg):
    data, scale = fake_set(), 3.5
    null = torch.zeros(L, D), torch.full((D,), 0.3)
    models = {name: Toy(k) for k, name in enumerate(world.TASKS)}
    teacher = build_teacher(models, list(world.TASKS), "hard", scale if use_cfg else None, null)
    target, (x_t, t, cond) = probe_target(teacher, data, method(batch_size=6))
    with torch.no_grad():
        for i in range(len(x_t)):
            model, c = models[world.TASKS[int(cond.route[i])]], cond[i]
            v_cond = model(x_t[i:i + 1], t[i:i + 1], c)
            v_null = model(x_t[i:i + 1], t[i:i + 1], c.with_text(*null))
            want = v_null + scale * (v_cond - v_null) if use_cfg else v_cond
            assert torch.allclose(target[i:i + 1], want, atol=1e-5), i
            assert not torch.allclose(v_cond, v_null)  # the test can tell the two apart


def test_the_teacher_never_carries_gradients():
    class Trainable(nn.Module):  # a teacher field whose weights were (wrongly) left trainable
        def __init__(self):
            super().__init__()
            self.w, self.grad_enabled = nn.Parameter(torch.ones(())), []

        def forward(self, x, t, cond):
            self.grad_enabled.append(torch.is_grad_enabled())
            return self.w * x

    teacher_module, student = Trainable(), Toy(0)
    one_step(student, teacher_module, fake_set(), method()).backward()
    assert teacher_module.w.grad is None and teacher_module.grad_enabled == [False]
    assert all(p.grad is not None for p in student.parameters())
    frozen = Toy(1)  # and through build_teacher's ModelField
    one_step(student, build_teacher({"a": frozen}, ["a"], "soft"), fake_set(), method()).backward()
    assert all(p.grad is None for p in frozen.parameters())


def test_routed_target_is_detached_float_under_no_grad():
    x = torch.randn(3, C, S, S, requires_grad=True)
    cond = Cond(torch.zeros(3, L, D), torch.zeros(3, D), None)
    target = distill.routed_target(lambda x, t, cond: (x * 2).half(), x, torch.rand(3), cond)
    assert target.dtype == torch.float32 and not target.requires_grad
    assert torch.allclose(target, (x * 2).half().float())


# --- query states: on-policy and off-policy ----------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
def test_on_policy_states_are_the_students_own_rollout_states_at_the_query_t(k):
    student, data = Spy(0), fake_set()
    m = method(queries=k, rollout_steps=4, query="uniform")
    one_step(student, Toy(1), data, m)
    rollout_calls, (x_t, t, _, grad) = student.calls[:-1], student.calls[-1]
    assert len(rollout_calls) == 4 and not any(c[3] for c in rollout_calls) and grad
    grid = flow.time_grid(4, SHIFT)
    assert all(torch.equal(c[1], grid[i].expand(4)) for i, c in enumerate(rollout_calls))  # whole batch
    assert len(x_t) == 4 * k and x_t.requires_grad is False
    for j in range(len(x_t)):
        step = int((grid == t[j]).nonzero())  # the rollout step of this query's t
        assert step < 4  # never the final clean state
        assert torch.equal(x_t[j], rollout_calls[step][0][j // k])
    per_sample = t.view(4, k)
    assert all(len(set(row.tolist())) == k for row in per_sample)


@pytest.mark.parametrize("states", ["off_policy", "off_policy_data"])
@pytest.mark.parametrize("k", [1, 2])
def test_off_policy_states_are_forward_noised_endpoints_at_the_query_t(k, states):
    """Edit rows: their target, forward-noised. Prompt-only rows: a fresh Gaussian endpoint (the
    reference's baseline), or their render under off_policy_data."""
    student, data = Spy(0), fake_set(n=12)
    m = method(states=states, queries=k, batch_size=8)
    one_step(student, Toy(1), data, m, gen_seed=7)
    assert len(student.calls) == 1  # no rollout
    x_t, t, cond, _ = student.calls[0]
    gen = torch.Generator().manual_seed(7)  # replay the draws: rows (the stream), query indices, noise (the step)
    rows = torch.randint(len(data), (8,), generator=gen)
    idx = distill.query_indices(4, 8, k, "low", gen)
    noise = torch.randn((8 * k, C, S, S), generator=gen)
    x, _ = data.batch(rows)
    prompt_only = ~data.has_source[rows]
    assert 0 < int(prompt_only.sum()) < 8  # both kinds of row in the batch
    if states == "off_policy":
        endpoint = torch.randn(x.shape, generator=gen)
        x = torch.where(prompt_only[:, None, None, None], endpoint, x)
    owner = torch.arange(8).repeat_interleave(k)
    want_t = flow.time_grid(4, SHIFT)[idx.flatten()]
    assert torch.equal(t, want_t)
    assert torch.allclose(x_t, flow.interpolate(x[owner], noise, want_t), atol=1e-6)
    assert sample_ids(cond.pooled, data) == rows[owner].tolist()  # the condition of the same sample


def test_off_policy_prompt_only_states_do_not_depend_on_the_render():
    """Two data sets that differ only in their prompt-only rows' renders give the same off-policy
    states for those rows (a Gaussian endpoint), and off_policy_data's states differ."""
    data, other = fake_set(n=12), fake_set(n=12)
    prompt_only = ~data.has_source
    other.image[prompt_only] = 255 - data.image[prompt_only]
    for states, same in (("off_policy", True), ("off_policy_data", False)):
        m = method(states=states, batch_size=12)
        got = [distill.query_states(Toy(0), *d.batch(torch.arange(12)), m, SHIFT, torch.Generator().manual_seed(3),
                                    torch.device("cpu"))[0] for d in (data, other)]
        assert torch.equal(got[0][prompt_only], got[1][prompt_only]) is same
        assert torch.equal(got[0][~prompt_only], got[1][~prompt_only])  # edit rows: their targets, unchanged


def test_query_states_alone_equal_the_step_s_states():
    """`query_states` on the step's batch and generator gives exactly the states and times the step's
    student is trained on (its one call with gradients), and the owner of each query."""
    data, m = fake_set(), method(queries=2, query="uniform")
    teacher = build_teacher({k: Toy(i + 1) for i, k in enumerate(world.TASKS)}, list(world.TASKS), "hard")
    spy = Spy(0)
    one_step(spy, teacher, data, m, gen_seed=5)
    trained = [(x, t) for x, t, _, grad in spy.calls if grad]
    assert len(trained) == 1
    gen = torch.Generator().manual_seed(5)  # the step's stream and generator, replayed
    x, cond = next(batches.random_batches(data, m.batch_size, gen))
    x_t, t, owner = distill.query_states(Toy(0), x, cond, m, SHIFT, gen, torch.device("cpu"))
    assert x_t.shape == (8, C, S, S) and t.shape == (8,) and owner.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(trained[0][0], x_t) and torch.equal(trained[0][1], t)


# --- the loss --------------------------------------------------------------------------------------


def test_field_loss_weights_the_query_slots():
    K, B = 3, 2
    v = torch.arange(B * K, dtype=torch.float32).repeat_interleave(4).view(B * K, 1, 2, 2)  # slot j of sample b: b*K+j
    target = torch.zeros_like(v)
    per_slot = [((torch.tensor([b * K + j for b in range(B)], dtype=torch.float32)) ** 2).mean() for j in range(K)]
    assert torch.allclose(distill.field_loss(v, target, K, 1 / K), sum(per_slot) / K)
    assert torch.allclose(distill.field_loss(v, target, K, 0.5 / 16**2), 0.5 / 16**2 * sum(per_slot))
    assert distill.loss_scale(method(queries=K)) == 1 / K
    assert distill.loss_scale(method(queries=K, rollout_steps=16, weighting="diffusionopd")) == 0.5 / 16**2


def test_weightings_of_several_queries():
    data, R, K = fake_set(), 4, 3
    losses = {}
    for weighting in ("mean", "diffusionopd"):
        student = Spy(0)
        losses[weighting] = one_step(student, lambda x, t, cond: torch.zeros_like(x), data,
                                     method(queries=K, rollout_steps=R, weighting=weighting))
        x_t, t, cond, _ = student.calls[-1]
        with torch.no_grad():
            v = Toy(0)(x_t, t, cond).view(4, K, -1)  # (B, K, CHW): the student's velocities
        per_state = [v[:, j].pow(2).mean() for j in range(K)]
        want = sum(per_state) / K if weighting == "mean" else 0.5 / R**2 * sum(per_state)
        assert torch.allclose(losses[weighting], want, rtol=1e-5), weighting
    assert torch.allclose(losses["diffusionopd"], losses["mean"] * K * 0.5 / R**2, rtol=1e-5)


def tiny_backbone(seed):
    torch.manual_seed(seed)
    return backbone.build("tiny", 2, S, D)


@pytest.mark.parametrize("states", ["on_policy", "off_policy"])
def test_a_student_equal_to_its_teacher_has_zero_loss(states):
    student = tiny_backbone(0)
    teacher = build_teacher({k: copy.deepcopy(student) for k in world.TASKS}, list(world.TASKS), "hard")
    assert one_step(student, teacher, fake_set(), method(states=states, queries=2)).item() < 1e-12
    other = build_teacher({"a": tiny_backbone(1)}, ["a"], "hard")
    route_a = lambda cond: torch.zeros(len(cond), dtype=torch.long)  # noqa: E731
    assert one_step(student, other, fake_set(), method(states=states), route_of=route_a).item() > 1e-3


def _fit(student, teacher, data, m, tmp_path, steps, route_of):
    gen = torch.Generator().manual_seed(0)
    stream = distill.relabelled(batches.random_batches(data, m.batch_size, gen), route_of)
    lp = loop.Loop(steps=steps, lr=3e-3, weight_decay=0.0, grad_clip=1.0, ema=0.0, grad_accum=1,
                   checkpoint_every=1000, log_every=1, compile=False)
    return loop.fit(student, distill.distill_step(teacher, m, SHIFT, torch.device("cpu")), stream, lp, rng=gen,
                    work=tmp_path / "w", run_id="r", device=torch.device("cpu"))


def test_a_few_distillation_steps_reduce_the_loss(tmp_path):
    data = fake_set(n=4)
    teacher_model = tiny_backbone(1)
    teacher = build_teacher({"t": teacher_model}, ["t"], "hard")
    route_of = lambda cond: torch.zeros(len(cond), dtype=torch.long)  # noqa: E731
    history = _fit(tiny_backbone(0), teacher, data, method(batch_size=4, rollout_steps=4), tmp_path, 20,
                   route_of).history
    first = sum(h["loss"] for h in history[:3]) / 3
    last = sum(h["loss"] for h in history[-3:]) / 3
    assert last < 0.5 * first, (first, last)
    assert all(p.grad is None for p in teacher_model.parameters())


# --- bf16 autocast (the GPU path's dtype, reproduced on the CPU) ---------------------------------

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def test_a_hard_routed_and_a_guided_teacher_run_under_bf16_autocast():
    """Two routes of bf16 outputs scattered into one batch (an index put into a float32 buffer
    raised "Index put requires the source and destination dtypes match"), plain and guided."""
    models = {k: tiny_backbone(i + 1) for i, k in enumerate(("a", "b"))}
    data = fake_set(n=6)
    x, cond = data.batch(torch.arange(6))
    cond = dataclasses.replace(cond, route=torch.tensor([0, 1, 0, 1, 1, 0]))
    t = torch.full((6,), 0.5)
    null = (torch.zeros(L, D), torch.zeros(D))
    for guidance in (None, 2.0):
        teacher = build_teacher(models, ["a", "b"], "hard", guidance, null)
        with torch.no_grad(), torch.autocast(**BF16):
            v = teacher(x, t, cond)
            alone = [build_teacher(models, [k], "hard", guidance, null)(x, t, dataclasses.replace(
                cond, route=torch.zeros(6, dtype=torch.long))) for k in ("a", "b")]
        assert v.dtype == torch.bfloat16 and v.shape == x.shape
        for k in (0, 1):  # each sample carries exactly its route's velocity
            assert torch.equal(v[cond.route == k], alone[k][cond.route == k])


@pytest.mark.parametrize("name", list(repo_cfg().distill.methods))
def test_every_method_s_step_runs_under_bf16_autocast(name):
    """One full distillation step of each method of params.yaml, multi-route and guided, under bf16
    autocast: a finite float32 loss and a gradient in every trainable weight."""
    cfg = tiny_cfg(run=ALL_ROWS["run"], settings={"diagnostic": {"methods": [name]}})
    m = cfg.method("diagnostic", name).model_copy(update={"batch_size": 4})
    student = tiny_backbone(0)
    teachers = {k: tiny_backbone(i + 1) for i, k in enumerate(world.TASKS)}
    teacher = build_teacher(teachers, list(world.TASKS), m.routing_mode, 2.0, (torch.zeros(L, D), torch.zeros(D)))
    with torch.autocast(**BF16):
        loss = one_step(student, teacher, fake_set(n=12), m)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and loss > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters() if p.requires_grad)
