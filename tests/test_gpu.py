"""The CUDA path (marked `gpu`, skipped without a GPU): bf16 autocast and torch.compile give the
fp32 CPU step's loss, a compiled routed and guided distillation step matches it, and `fit` trains
with per-step routing and the router on the GPU. Run by `benchmarks/gpu_check.sh`; the routed
cases also run on the CPU in the default suite, so the GPU check never runs untested code."""
import copy
from types import SimpleNamespace

import pytest
import torch

from pipeline.core import backbone, compute
from pipeline.core.batches import TensorSet, routed_batches
from pipeline.core.fields import Cond, ModelField
from pipeline.core.router import Router
from pipeline.core.teacher import Route, build_teacher
from pipeline.data import world
from pipeline.train import distill, loop
from tests.test_distill import method

ON_GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA, CPU = torch.device("cuda"), torch.device("cpu")
DEVICES = ["cpu", pytest.param("cuda", marks=ON_GPU)]


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g) * 2 - 1
    cond = Cond(text=torch.randn(n, 24, 384, generator=g), pooled=torch.randn(n, 384, generator=g),
                source=torch.zeros(n, 3, 32, 32), route=torch.zeros(n, dtype=torch.long))
    return x, cond


def _loss(student, teacher, batch, device, compiled=False):
    step = distill.distill_step(ModelField(teacher), method(rollout_steps=8, batch_size=len(batch[0])), 3.0, device)
    forward = torch.compile(student) if compiled else student
    x, cond = batch
    with compute.autocast(device):
        return step(forward, (x.to(device), cond.to(device)), torch.Generator().manual_seed(0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_and_compiled_distillation_steps_match_the_fp32_cpu_step():
    torch.manual_seed(0)
    student = backbone.build("S", 4, 32, 384)
    teacher = copy.deepcopy(student).requires_grad_(False)
    with torch.no_grad():  # a teacher that differs from the student, so the loss is not ~0
        for p in teacher.parameters():
            p.add_(0.02 * torch.randn_like(p))
    batch = _batch()
    ref = _loss(student, teacher, batch, CPU).item()
    eager = _loss(student.to(CUDA), teacher.to(CUDA), batch, CUDA).item()
    compiled = _loss(student, teacher, batch, CUDA, compiled=True).item()
    assert ref > 0
    assert abs(eager - ref) / ref < 0.1, (eager, ref)
    assert abs(compiled - ref) / ref < 0.1, (compiled, ref)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_compiled_bf16_student_learns_its_teacher_on_cuda():
    torch.manual_seed(0)
    student = backbone.build("S", 4, 32, 384).to(CUDA)
    torch.manual_seed(1)
    teacher = backbone.build("S", 4, 32, 384).to(CUDA).requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3, fused=True)
    batch, losses = _batch(32), []
    for _ in range(20):
        opt.zero_grad(set_to_none=True)
        loss = _loss(student, teacher, batch, CUDA, compiled=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses


# --- the method's own teacher: two hard routes, guided, and per-step routing by the router -------

ROUTES = [Route("t2i", "base", ("t2i",)), Route("edit", "edit", ("local_edit", "global_edit"))]
NULL = (torch.zeros(24, 384), torch.zeros(384))


def _sources(seed=1):
    """Two frozen S-size sources that differ from each other and from the student (seed 0)."""
    models = {}
    for i, name in enumerate(("base", "edit")):
        torch.manual_seed(seed + i)
        models[name] = backbone.build("S", 4, 32, 384).requires_grad_(False)
    return models


def _routed_set(n=48, seed=0) -> TensorSet:
    """n rows of the two routes (t2i rows without a source, edit rows with one), S-size tensors."""
    g = torch.Generator().manual_seed(seed)
    task = torch.tensor([world.TASKS.index(("t2i", "local_edit", "global_edit")[i % 3]) for i in range(n)])
    has_source = task != world.TASKS.index("t2i")
    return TensorSet(image=torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                     source=torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                     has_source=has_source, prompt=torch.arange(n),
                     text_table=torch.randn(n, 24, 384, generator=g).half(),
                     pooled_table=torch.randn(n, 384, generator=g).half(),
                     task=task, route=has_source.long(),
                     records=[SimpleNamespace(bucket=world.TASKS[k]) for k in task])


def _routed_guided_loss(device, compiled):
    """One DanceOPD step onto the guided two-route hard teacher (mixed routes in the batch), under the
    device's autocast: the loss and the student."""
    torch.manual_seed(0)
    student = backbone.build("S", 4, 32, 384).to(device)
    models = {k: v.to(device) for k, v in _sources().items()}
    teacher = build_teacher(models, ["base", "edit"], "hard", 3.0, tuple(v.to(device) for v in NULL))
    data = _routed_set(16).to(device)
    x, cond = data.batch(torch.arange(16, device=device))
    step = distill.distill_step(teacher, method(rollout_steps=8, batch_size=16), 3.0, device)
    forward = torch.compile(student) if compiled else student
    with compute.autocast(device):
        loss = step(forward, (x, cond), torch.Generator(device).manual_seed(0))
    return loss, student


@pytest.mark.parametrize("device", DEVICES)
def test_a_routed_guided_distillation_step_matches_the_fp32_cpu_step(device):
    """Compiled under bf16 on CUDA (eager fp32 on the CPU, the reference): a float32 loss within 10%
    of the CPU's, on the same rows, and a finite gradient in every weight. Hard routing scatters the
    two routes' bf16 velocities into one batch, guidance doubles each route's calls."""
    device = torch.device(device)
    loss, student = _routed_guided_loss(device, compiled=device.type == "cuda")
    ref = _routed_guided_loss(CPU, compiled=False)[0].item() if device.type == "cuda" else loss.item()
    loss.backward()
    assert loss.dtype == torch.float32 and ref > 0
    assert abs(loss.item() - ref) / ref < 0.1, (loss.item(), ref)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())


class _TwoTaskRouter(Router):
    """A router whose prediction is the labelled task of its pooled embedding's sign (t2i or local
    edit): real routing, on the device, without training one."""

    def route(self, cond: Cond) -> torch.Tensor:
        index = torch.tensor([world.TASKS.index("t2i"), world.TASKS.index("local_edit")], device=cond.pooled.device)
        return index[(cond.pooled[:, 0] > 0).long()]


@pytest.mark.parametrize("device", DEVICES)
def test_ten_steps_of_fit_route_per_step_through_the_router(device, tmp_path):
    """`fit` over the stage's stream: one route per step (`routing.per: step`), relabelled by a router
    on the device, compiled under bf16 on CUDA. Ten finite steps, every weight moved, the teacher's
    untouched, and every micro-batch of a step on the router's routes."""
    device = torch.device(device)
    torch.manual_seed(0)
    student = backbone.build("S", 4, 32, 384).to(device)
    models = {k: v.to(device) for k, v in _sources().items()}
    before = {k: p.detach().clone() for k, p in student.named_parameters()}
    frozen = [p.detach().clone() for p in models["edit"].parameters()]
    teacher = build_teacher(models, ["base", "edit"], "hard", 3.0, tuple(v.to(device) for v in NULL))
    rng = torch.Generator(device).manual_seed(0)
    stream = routed_batches(_routed_set().to(device), 4, rng, [0.5, 0.5], "step", accum=2)
    router = _TwoTaskRouter(384).to(device)
    seen = []

    def routed(batches):
        for x, cond in distill.relabelled(batches, distill.router_routes(router, ROUTES, device)):
            seen.append(cond.route.detach().cpu())
            yield x, cond

    lp = loop.Loop(steps=10, lr=1e-3, weight_decay=0.0, grad_clip=1.0, ema=0.0, grad_accum=2,
                   checkpoint_every=1000, log_every=1, compile=device.type == "cuda")
    step = distill.distill_step(teacher, method(rollout_steps=4, batch_size=4), 3.0, device)
    result = loop.fit(student, step, routed(stream), lp, rng=rng, work=tmp_path / "w", run_id="r", device=device)
    assert len(result.history) == 10 and all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    assert len(seen) == 20 and all(((r == 0) | (r == 1)).all() for r in seen)
    assert {int(v) for r in seen for v in r.unique()} == {0, 1}  # both routes taken over the ten steps
    moved = dict(result.model.named_parameters())
    still = [k for k, v in before.items() if torch.equal(moved[k].detach().cpu(), v.cpu())]
    assert len(still) < 0.1 * len(before), still  # (a weight may have no gradient path at this size)
    assert all(torch.equal(p, q) for p, q in zip(models["edit"].parameters(), frozen))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_bf16_checkpoint_loads_as_a_bf16_teacher_on_cuda(tmp_path):
    """A checkpoint stored in bf16 (a pretrained SD3.5's dtype) is a bf16 frozen copy on the GPU, whose
    velocity under autocast is the float32 model's within bf16's precision; to train it loads float32."""
    torch.manual_seed(0)
    model = backbone.build("S", 4, 32, 384)
    model.transformer.register_to_config(**{backbone.WEIGHTS_DTYPE: "bfloat16"})
    model.weights_dtype = torch.bfloat16
    model.save(tmp_path / "m")
    frozen = backbone.load(tmp_path / "m", frozen_on=CUDA).to(CUDA)
    assert {p.dtype for p in frozen.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in backbone.load(tmp_path / "m").parameters()} == {torch.float32}
    x, cond = _batch(8)
    t = torch.full((8,), 0.5)
    with torch.no_grad(), compute.autocast(CUDA):
        v = frozen(x.to(CUDA), t.to(CUDA), cond.to(CUDA)).float().cpu()
    ref = backbone.load(tmp_path / "m")(x, t, cond).detach()
    assert (v - ref).norm() / ref.norm() < 0.05
