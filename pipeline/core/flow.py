"""Rectified-flow path, training-time sampling and the Euler sampler.

Conventions (this module owns them; DESIGN §2, pinned by tests/test_flow.py):

- time: ``t`` in [0, 1], **t = 1 is pure noise, t = 0 is data** (diffusers / SD3 sigmas).
- path: ``x_t = (1 - t) * x_data + t * noise``.
- velocity: ``v = noise - x_data`` (= dx_t/dt), so sampling integrates t from 1 down to 0.
- Euler step: ``x <- x + (t_next - t) * v`` on the SD3-shifted grid of ``time_grid``, which is
  exactly the sigma schedule of diffusers' ``FlowMatchEulerDiscreteScheduler`` (final 0 included).
- field: any callable ``field(x, t, cond) -> v`` with ``v.shape == x.shape``; ``t`` is a float
  tensor of shape (B,). Nothing here looks inside ``cond``; it is passed through untouched.

No function here switches autograd on or off: callers that roll out without gradients wrap the
call in ``torch.no_grad()``, and then no graph is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from pipeline.core.fields import Field

# diffusers' FlowMatchEulerDiscreteScheduler default; its grid ends depend on it (see time_grid).
NUM_TRAIN_TIMESTEPS = 1000


def _per_sample(t: Tensor, like: Tensor) -> Tensor:
    """Reshape t (B,) to (B, 1, ..., 1) so it broadcasts over the non-batch dims of ``like``."""
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def interpolate(x_data: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """The path point x_t = (1 - t) x_data + t noise; t (B,) broadcasts over C, H, W."""
    t = _per_sample(t, x_data).to(x_data.dtype)  # (B, 1, 1, 1)
    return (1 - t) * x_data + t * noise  # (B, C, H, W)


def target_velocity(x_data: Tensor, noise: Tensor) -> Tensor:
    """The path's velocity dx_t/dt = noise - x_data (constant along a straight path)."""
    return noise - x_data


def sample_t(
    n: int,
    mode: str = "logit_normal",
    *,
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw n training times (n,) in [0, 1]: SD3's logit-normal(mean, std) or uniform, on the generator's device."""
    device = None if generator is None else generator.device
    if mode == "logit_normal":
        # SD3 (Esser et al. 2024, §3.1): mid-path times get the most weight.
        return torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device))
    if mode == "uniform":
        return torch.rand(n, generator=generator, device=device)
    raise ValueError(f"sample_t: unknown mode {mode!r}; expected 'logit_normal' or 'uniform'")


def shift_time(t: Tensor, shift: float) -> Tensor:
    """SD3 time shift t -> shift t / (1 + (shift - 1) t); shift > 1 spends more steps near noise."""
    return shift * t / (1 + (shift - 1) * t)


def time_grid(steps: int, shift: float = 3.0) -> Tensor:
    """The (steps + 1,) float32 grid from 1 down to exactly 0 that diffusers' flow-match Euler uses.

    Reproduces ``FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(steps).sigmas`` bit for
    bit: the scheduler shifts its 1000 training sigmas (in float32) and takes their ends as the
    range, spaces ``steps`` points linearly between them (numpy.linspace arithmetic, float64),
    shifts those **again** and appends 0. So the last non-zero time is ~shift^2/1000, not 1/steps.
    """
    if steps < 1:
        raise ValueError(f"time_grid: steps must be >= 1, got {steps}")
    n = NUM_TRAIN_TIMESTEPS
    # The training sigmas' ends, in the scheduler's float32 arithmetic.
    ends = shift_time(torch.tensor([n, 1], dtype=torch.float32) / n, shift)  # (2,) float32
    start, stop = ends[0].item() * n, ends[1].item() * n  # float64, as _sigma_to_t
    # numpy.linspace(start, stop, steps): arange * step + start, last point pinned to stop.
    step = (stop - start) / (steps - 1) if steps > 1 else 0.0
    ts = torch.arange(steps, dtype=torch.float64) * step + start  # (steps,)
    if steps > 1:
        ts[-1] = stop
    sigmas = shift_time(ts / n, shift).to(torch.float32)  # (steps,)
    return torch.cat([sigmas, torch.zeros(1)])  # (steps + 1,)


@dataclass
class Trajectory:
    """An Euler rollout: the pre-step states (index 0 is the noise) and the end state."""

    states: Tensor  # (steps, B, C, H, W) x at each grid time except the last; detached
    t: Tensor  # (steps,) the time of each state: grid[:-1]
    final: Tensor  # (B, C, H, W) the end state at t = 0 (never a query candidate)


def euler_sample(
    field: Field | Any,
    noise: Tensor,
    cond: Any,
    grid: Tensor,
    *,
    keep_states: bool = False,
) -> Tensor | Trajectory:
    """Integrate dx/dt = field(x, t, cond) from grid[0] (noise) to grid[-1] with Euler, batched.

    Returns the end state (B, C, H, W), or with ``keep_states`` a ``Trajectory`` of the pre-step
    states. Step for step identical to diffusers' ``FlowMatchEulerDiscreteScheduler.step``.
    """
    grid = grid.to(noise.device)
    x = noise  # (B, C, H, W)
    states = []
    for t, t_next in zip(grid[:-1], grid[1:]):
        if keep_states:
            states.append(x.detach())
        v = field(x, t.expand(len(x)), cond)  # (B, C, H, W); t is one shared time, shape (B,)
        x = x + (t_next - t) * v  # t_next < t: a step towards data
    if not keep_states:
        return x
    return Trajectory(states=torch.stack(states), t=grid[:-1].clone(), final=x)
