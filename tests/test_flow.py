"""pipeline.flow: closed-form checks and a step-for-step cross-check against diffusers."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from pipeline.core.flow import (
    Trajectory,
    euler_sample,
    interpolate,
    sample_t,
    shift_time,
    target_velocity,
    time_grid,
)

SHAPE = (3, 2, 4, 4)  # (B, C, H, W)


def nonlinear_field(x, t, cond):
    """A field that depends on x, t and cond, so any misplaced argument shows."""
    return torch.tanh(x) * t.view(-1, 1, 1, 1) + torch.sin(3 * t).view(-1, 1, 1, 1) + cond


@pytest.fixture
def noise():
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "steps, shift", [(16, 3.0), (4, 1.0), (1, 3.0), (2, 3.0), (28, 3.0), (50, 1.5), (7, 6.0)]
)
def test_time_grid_is_diffusers_sigmas(steps, shift):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    grid = time_grid(steps, shift)
    assert grid.dtype == torch.float32 and grid.shape == (steps + 1,)
    assert torch.equal(grid, scheduler.sigmas)
    assert grid[0] == 1 and grid[-1] == 0 and (grid.diff() < 0).all()


def test_time_grid_rejects_zero_steps():
    with pytest.raises(ValueError, match="steps"):
        time_grid(0)


def test_euler_matches_diffusers_scheduler_step_for_step(noise):
    steps, shift = 16, 3.0
    cond = torch.linspace(-1, 1, SHAPE[0]).view(-1, 1, 1, 1)  # per-sample offset
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    x, reference = noise, []
    for i, timestep in enumerate(scheduler.timesteps):
        reference.append(x)
        t = scheduler.sigmas[i].expand(len(x))  # the field sees t = timestep / 1000
        x = scheduler.step(nonlinear_field(x, t, cond), timestep, x).prev_sample
    ours = euler_sample(nonlinear_field, noise, cond, time_grid(steps, shift), keep_states=True)
    for i, state in enumerate(reference):
        torch.testing.assert_close(ours.states[i], state, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.final, x, rtol=1e-6, atol=1e-6)


def test_constant_field_is_integrated_exactly(noise):
    # dx/dt = v from t=1 to t=0: x(0) = x(1) + (0 - 1) v = noise - v, on any grid.
    v = torch.full(SHAPE, 0.7)
    x = euler_sample(lambda x, t, cond: v, noise, None, time_grid(16, 3.0))
    torch.testing.assert_close(x, noise - v)


def test_straight_path_velocity_maps_noise_to_data(noise):
    x_data = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    field = lambda x, t, cond: target_velocity(x_data, noise)  # noqa: E731
    x = euler_sample(field, noise, None, time_grid(8, 3.0))
    torch.testing.assert_close(x, x_data)


def test_interpolate_ends_and_velocity(noise):
    x_data = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    ones = torch.ones(SHAPE[0])
    torch.testing.assert_close(interpolate(x_data, noise, 0 * ones), x_data)
    torch.testing.assert_close(interpolate(x_data, noise, ones), noise)
    # d/dt x_t by central difference (exact for a linear path up to rounding), in float64.
    x_data, noise = x_data.double(), noise.double()
    t, h = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64), 1e-4
    dx = (interpolate(x_data, noise, t + h) - interpolate(x_data, noise, t - h)) / (2 * h)
    torch.testing.assert_close(dx, target_velocity(x_data, noise))


def test_interpolate_broadcasts_t_per_sample(noise):
    x_data = torch.zeros(SHAPE)
    t = torch.tensor([0.0, 0.5, 1.0])
    x_t = interpolate(x_data, noise, t)
    for b in range(SHAPE[0]):
        torch.testing.assert_close(x_t[b], t[b] * noise[b])


def test_shift_time():
    t = torch.linspace(0, 1, 11)
    torch.testing.assert_close(shift_time(t, 1.0), t)
    shifted = shift_time(t, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and (shifted[1:-1] > t[1:-1]).all()


def test_sample_t():
    g = torch.Generator().manual_seed(0)
    for mode in ("logit_normal", "uniform"):
        t = sample_t(20_000, mode, generator=g)
        assert t.shape == (20_000,) and t.dtype == torch.float32
        assert (t >= 0).all() and (t <= 1).all()
    t = sample_t(20_000, generator=g)
    assert abs(t.median().item() - 0.5) < 0.02
    assert sample_t(20_000, mean=1.0, generator=g).median() > 0.6  # mean shifts towards noise
    assert torch.equal(
        sample_t(5, generator=torch.Generator().manual_seed(3)),
        sample_t(5, generator=torch.Generator().manual_seed(3)),
    )
    with pytest.raises(ValueError, match="beta"):
        sample_t(4, "beta")


def test_trajectory(noise):
    steps = 6
    grid = time_grid(steps, 3.0)
    model = torch.nn.Conv2d(SHAPE[1], SHAPE[1], 1)  # a field with parameters
    field = lambda x, t, cond: model(x) * t.view(-1, 1, 1, 1)  # noqa: E731
    with torch.no_grad():  # as callers roll out
        traj = euler_sample(field, noise, None, grid, keep_states=True)
        final = euler_sample(field, noise, None, grid)
    assert isinstance(traj, Trajectory)
    assert traj.states.shape == (steps, *SHAPE)
    assert torch.equal(traj.states[0], noise)
    assert torch.equal(traj.t, grid[:-1])
    assert not traj.states.requires_grad and not traj.final.requires_grad
    assert torch.equal(traj.final, final)
    assert not any(torch.equal(s, final) for s in traj.states)  # the clean state is not a state


def test_batched_equals_per_sample(noise):
    cond = torch.linspace(-1, 1, SHAPE[0]).view(-1, 1, 1, 1)
    grid = time_grid(10, 3.0)
    batched = euler_sample(nonlinear_field, noise, cond, grid, keep_states=True)
    for b in range(SHAPE[0]):
        one = slice(b, b + 1)
        single = euler_sample(nonlinear_field, noise[one], cond[one], grid, keep_states=True)
        torch.testing.assert_close(batched.states[:, one], single.states)
        torch.testing.assert_close(batched.final[one], single.final)


def test_field_receives_per_sample_t(noise):
    seen = []

    def field(x, t, cond):
        seen.append(t.clone())
        return torch.zeros_like(x)

    grid = time_grid(4, 3.0)
    euler_sample(field, noise, None, grid)
    assert len(seen) == 4
    for t, expected in zip(seen, grid[:-1]):
        assert t.shape == (SHAPE[0],) and t.dtype == torch.float32 and (t == expected).all()
