"""DanceOPD's distillation step, as pure pieces: rollout, query states, routed target, loss.

One step (DESIGN §6, PAPER §1) on a batch (x, cond) whose ``cond.route`` names each sample's
route: roll the **current student** out from noise with no grad and no guidance,
``rollout_steps`` (R) Euler steps on the SD3-shifted grid of ``flow.time_grid`` (`rollout`); pick
K of its R pre-step states per sample (`query_indices`: index 0 is the noise, R-1 the last state
before the final step; the clean end state is never a candidate) — or, for the off-policy
baseline, forward-noise the data to the same t (`query_states`); evaluate the routed teacher
field there under no grad (`routed_target`); regress the student's velocity at the same state,
t and condition onto it with a plain MSE, no timestep weighting (`field_loss`). `distill_step`
composes them into a step function for `pipeline.train.loop.fit`. Time, path and velocity follow
``pipeline.core.flow`` (t = 1 is noise); fields follow ``pipeline.core.fields``.

A method (`pipeline.config.Method`: the ``distill`` params, ``routing.mode``/``per`` and the
setting's init with the overrides of ``distill.methods.<name>``, resolved by the config) selects
among these: DanceOPD itself (one low-noise query, one route per optimizer step), the off-policy
baseline, DiffusionOPD (all R states, weight 0.5/R², every route in every update), soft routing
and the query and K ablations are all the same code; `train_student` runs one for a setting.

The student lives in its init's space (pixels, or the VAE latents of a pretrained SD3-family model:
`pipeline.core.latents`), which its teachers share. With ``model.lora_rank`` > 0 it trains a LoRA
adapter (and its patch embedding) on its init's frozen weights and is saved merged; the teachers are
the sources' merged checkpoints, frozen, never adapters stacked on the student.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from pipeline.core import backbone, checkpoint, compute, flow, streams, teacher
from pipeline.core.batches import Batch, Curated, routed_batches
from pipeline.core.fields import Cond, Field
from pipeline.core.router import Router
from pipeline.data import outputs
from pipeline.eval.evaluator import Evaluator
from pipeline.train import run
from pipeline.train.loop import Fit, Loop, StepFn
from pipeline.train.validation import Validation

# u ~ Beta(a, b) over the high-to-low-noise rollout list, index = floor(R u): "low" is the
# low-noise (late) end. Beta(1, 1) is the uniform distribution.
QUERY_BETA = {"low": (5, 2), "mid": (5, 5), "high": (2, 5), "uniform": (1, 1)}
RETRIES = 50  # per query, the reference's budget of Beta draws for K distinct indices
ROUTE_SEED = 2**32  # + seed: the route generator shared by all processes (not rank 0's own stream)


def query_indices(n_states: int, batch: int, k: int, query: str,
                  generator: torch.Generator | None = None) -> Tensor:
    """(batch, k) long rollout indices, floor(n_states u) with u ~ the query's Beta; distinct, sorted per row.

    Drawn on the generator's device. For 1 < k < n_states a row takes the first k distinct values
    of up to 50 k draws (the reference's resampling), then random unused indices if that budget ran
    out: host-side work, a device sync per step on a GPU (the K ablation only).
    """
    device = None if generator is None else generator.device
    if query not in QUERY_BETA:
        raise ValueError(f"distill.query: expected one of {list(QUERY_BETA)}, got {query!r}")
    if not 1 <= k <= n_states:
        raise ValueError(f"distill.queries: {k} queries need 1..{n_states} rollout states")
    if k == n_states:  # every state: nothing to draw
        return torch.arange(n_states, device=device).expand(batch, k).clone()
    if k == 1:
        return _beta_indices(n_states, (batch, 1), query, generator)
    draws = _beta_indices(n_states, (batch, RETRIES * k), query, generator)  # (B, 50K)
    rows = []
    for row in draws.tolist():
        chosen = list(dict.fromkeys(row))[:k]  # first occurrences, in draw order
        if len(chosen) < k:
            unused = [i for i in range(n_states) if i not in chosen]
            chosen += [unused[i] for i in torch.randperm(len(unused), generator=generator, device=device)
                       [:k - len(chosen)].tolist()]
        rows.append(sorted(chosen))
    return torch.tensor(rows, dtype=torch.long, device=device)  # (B, K)


def _beta_indices(n_states: int, shape: tuple[int, int], query: str, generator) -> Tensor:
    """floor(n_states u), u ~ Beta(a, b) as the a-th smallest of a + b - 1 uniforms (integer a, b)."""
    a, b = QUERY_BETA[query]
    device = None if generator is None else generator.device
    u = torch.rand(*shape, a + b - 1, generator=generator, device=device).sort(dim=-1).values[..., a - 1]  # shape
    return (u * n_states).long().clamp_(max=n_states - 1)


@functools.cache
def _grid(steps: int, shift: float, device: torch.device) -> Tensor:
    """`flow.time_grid` on `device`, made once (a copy to the GPU in every step would sync it)."""
    return flow.time_grid(steps, shift).to(device)


@torch.inference_mode()
def rollout(student: nn.Module | Field, noise: Tensor, cond: Cond, steps: int, shift: float) -> flow.Trajectory:
    """The student's own unguided Euler trajectory from ``noise``, batched, with no grad (stop-gradient).

    Under inference mode: the states are inference tensors, which an index outside it copies into
    ordinary ones (`query_states`).
    """
    grid = _grid(steps, shift, noise.device)  # (R + 1,) from 1 to exactly 0
    return flow.euler_sample(student, noise, cond, grid, keep_states=True)  # states (R, B, C, H, W)


def query_states(student: nn.Module, x: Tensor, cond: Cond, method, shift: float, gen: torch.Generator,
                 device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(x_t (B*K, C, H, W), t (B*K,), owner (B*K,)): K query states per sample, and the sample of each.

    On-policy: the student's own rollout states at the drawn indices; off-policy: an endpoint
    forward-noised with fresh noise to the same t, the row's target for an edit and a random Gaussian
    latent for a prompt-only row (the reference's baseline; PAPER §2); off_policy_data: the row's
    target (its render) for every row. Draws the indices, the noise, then any endpoints from ``gen``.
    """
    b, R, K, on = len(x), method.rollout_steps, method.queries, gen.device
    idx = query_indices(R, b, K, method.query, gen).flatten().to(device)  # (B*K,)
    owner = torch.arange(b, device=device).repeat_interleave(K)  # (B*K,) the sample of each query
    t = _grid(R, shift, device)[idx]  # (B*K,)
    if method.states == "on_policy":
        noise = torch.randn(x.shape, generator=gen, device=on).to(device)  # (B, C, H, W)
        trajectory = rollout(student, noise, cond.to(device), R, shift)  # states (R, B, C, H, W)
        return trajectory.states[idx, owner], t, owner  # (B*K, C, H, W)
    noise = torch.randn((b * K, *x.shape[1:]), generator=gen, device=on).to(device)  # (B*K, C, H, W)
    x0 = x.to(device)  # off_policy_data: every row's target, its render for a prompt-only row
    if method.states == "off_policy":  # the reference: a prompt-only row's endpoint is a random Gaussian latent
        endpoint = torch.randn(x.shape, generator=gen, device=on).to(device)  # (B, C, H, W)
        x0 = torch.where(cond.has_source().to(device)[:, None, None, None], x0, endpoint)
    return flow.interpolate(x0[owner], noise, t), t, owner  # (B*K, C, H, W)


@torch.no_grad()  # not inference mode: the target enters the loss's graph (as a constant)
def routed_target(teacher: Field, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
    """The teacher's velocity at the query states: a fixed target, no graph whatever the teacher wraps."""
    return teacher(x_t, t, cond).detach().float()  # (B*K, C, H, W)


def loss_scale(method) -> float:
    """The weight of the sum over the K query slots: 1/K (mean), or DiffusionOPD's dt^2/2 = 0.5/R^2."""
    return 0.5 / method.rollout_steps**2 if method.weighting == "diffusionopd" else 1.0 / method.queries


def field_loss(v: Tensor, target: Tensor, queries: int, scale: float) -> Tensor:
    """scale * sum over the K query slots of the slot's MSE; v, target (B*K, C, H, W), sample-major."""
    per_state = (v.float() - target).pow(2).reshape(-1, queries, v[0].numel()).mean(dim=(0, 2))  # (K,)
    return scale * per_state.sum()


def distill_step(teacher: Field, method, shift: float, device: torch.device) -> StepFn:
    """The distillation loss of one routed batch, as a step function for `fit`."""
    scale = loss_scale(method)

    def step(student: nn.Module, batch: Batch, gen: torch.Generator) -> Tensor:
        x, cond = batch  # (B, C, H, W)
        x_t, t, owner = query_states(student, x, cond, method, shift, gen, device)
        cond = cond[owner].to(device)  # the condition of each query's sample
        target = routed_target(teacher, x_t, t, cond)
        return field_loss(student(x_t, t, cond), target, method.queries, scale)  # student: with grad

    return step


def relabelled(batches: Iterator[Batch], route_of: Callable[[Cond], Tensor]) -> Iterator[Batch]:
    """The batches with each sample's route replaced by ``route_of(cond)`` (e.g. a router's prediction)."""
    for x, cond in batches:
        yield x, dataclasses.replace(cond, route=route_of(cond).to(torch.long))


def router_routes(router: Router, routes: Sequence[teacher.Route],
                  device: torch.device = torch.device("cpu")) -> Callable[[Cond], Tensor]:
    """Each sample's route from the router's predicted task. A sample keeps its labelled route when
    its route is not one the router predicts (a realism route: its prompts are T2I prompts) or when
    the predicted task has no route in this setting (t2i in Local + Global). `device`: the batches'."""
    index = teacher.route_index(routes)
    task_route = torch.tensor([index.get(task, -1) for task in router.classes], device=device)  # class -> route
    predicted = torch.tensor([any(b in router.classes for b in r.buckets) for r in routes], device=device)

    def route_of(cond: Cond) -> Tensor:
        guess = task_route[router.route(cond)]  # (B,), -1 where the setting has no such route
        return torch.where(predicted[cond.route] & (guess >= 0), guess, cond.route)

    return route_of


def train_student(method, setting, fields, routing, train, shift: float, compute_params, *, data: Curated, base: Path,
                  experts: Path, router_dir: Path, out: Path, name: str, seed: int, lora_rank: int = 0,
                  stream=None, on_log=None, evaluator: Path | None = None, tracker=None) -> Fit:
    """Distil a setting's routed fields into one student by `method` (with `seed`) and save it to `out`.

    `base` and `experts` (the experts' root) hold the source checkpoints the routes and the init name;
    `lora_rank` > 0 (``model.lora_rank``) trains a LoRA of the init instead of all its weights;
    `stream` (``data.stream``) with `enabled` streams the batches from the shards (`pipeline.core.streams`);
    ``train.sample_every`` > 0 logs validation samples scored by `evaluator` to `tracker`, the stage's MLflow run
    (`pipeline.train.validation`).
    """
    outputs.ensure_writable(out)
    device = compute.setup(compute_params)
    routes, null = teacher.routes(setting), tuple(v.to(device) for v in data.null())  # moved once, not per call
    weights = [routing.weights[r.name] for r in routes]
    sources = checkpoint.source_folders(base, experts, [r.source for r in routes] + [method.init])
    target_field = teacher.load_teacher(routes, sources, device, method.routing_mode,
                                        fields.guidance_scale if fields.absorb_guidance else None, null, weights,
                                        compile=compute_params.compile)
    space = checkpoint.space(sources.values(), device)  # the init's and its teachers': pixels or a VAE's latents
    curated, (rank, processes) = data.seen_in(space), compute.world()
    rng = torch.Generator(device).manual_seed(seed + rank)  # each process its own rows, noise and query indices
    route_rng = rng if processes == 1 else torch.Generator().manual_seed(ROUTE_SEED + seed)  # all: one route a step
    batch_size, index = compute.per_rank(method.batch_size, "distill.batch_size", device), teacher.route_index(routes)
    if stream is not None and stream.enabled:  # streamed, one stream per route; one row gives the shapes
        route_rng = torch.Generator().manual_seed(ROUTE_SEED + seed)
        tensors = curated.tensors(teacher.buckets(routes)[:1], "train", limit=1, route_of_bucket=index)
        batches = streams.routed_streamed_batches(
            curated, [list(r.buckets) for r in routes], batch_size, route_rng, weights, method.routing_per,
            method.grad_accum, seed=seed, device=device, workers=stream.workers, buffer=stream.buffer)
    else:  # resident on the device: a batch is a gather, drawn from rng
        tensors = curated.tensors(teacher.buckets(routes), "train", route_of_bucket=index).to(device)
        batches = routed_batches(tensors, batch_size, rng, weights, method.routing_per, method.grad_accum,
                                 route_generator=route_rng)
    if routing.source == "router":
        batches = relabelled(batches, router_routes(Router.load(router_dir).to(device), routes, device))
    student = run.ready(backbone.load(sources[method.init]), compute_params.grad_checkpointing, lora_rank, seed)
    micro = method.grad_accum * (len(routes) if method.routing_per == "all" else 1)  # "all": each route each step
    loop = Loop(steps=method.steps, lr=method.lr, weight_decay=train.weight_decay, grad_clip=train.grad_clip,
                ema=0.0, grad_accum=micro, checkpoint_every=train.checkpoint_every,  # no EMA for students,
                log_every=train.log_every, compile=compute_params.compile)  # as the paper's code
    recipe = {"method": method.model_dump(), "routes": [dataclasses.asdict(r) for r in routes],
              "absorb_guidance": fields.absorb_guidance, "guidance_scale": fields.guidance_scale,
              "routing": {"source": routing.source, "weights": weights}, "shift": shift, "seed": seed,
              "loop": dataclasses.asdict(loop)}
    if lora_rank:
        recipe["lora_rank"] = lora_rank
    validate = train.sample_every and Validation(Evaluator.load(evaluator, device), curated, teacher.buckets(routes),
                                                 method.rollout_steps, shift, device, tracker, index)
    return run.fit_and_save(student, distill_step(target_field, method, shift, device), batches, loop,
                            rng=rng if route_rng is rng else (rng, route_rng), out=out, name=name, recipe=recipe,
                            run_id=checkpoint.fingerprint(recipe), shift=shift, data=data, space=space,
                            side=tensors.image.shape[-1], device=device, on_log=on_log,
                            on_sample=(train.sample_every, validate) if validate else None)
