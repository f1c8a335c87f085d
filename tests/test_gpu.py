"""The CUDA path (marked `gpu`, skipped without a GPU): bf16 autocast and torch.compile give the
fp32 CPU step's loss, and a compiled distillation trains. Run by `benchmarks/gpu_check.sh`."""
import copy

import pytest
import torch

from pipeline.core import backbone, compute
from pipeline.core.fields import Cond, ModelField
from pipeline.train import distill
from tests.test_distill import method

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


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
