"""DanceOPD's distillation step: student rollout, query-state selection and the field-matching loss.

One step (DESIGN §6, PAPER §1): draw a batch (x, cond); roll the **current student** out from
noise with no grad and no guidance, ``rollout_steps`` (R) Euler steps on the SD3-shifted grid of
``flow.time_grid``; pick K of its R pre-step states per sample (``query_indices``: index 0 is the
noise, R-1 the last state before the final step; the clean end state is never a candidate);
evaluate the sample's routed teacher field there under no grad; regress the student's velocity at
the same state, t and condition onto it with a plain MSE (no timestep weighting). Time, path and
velocity follow ``pipeline.flow`` (t = 1 is noise); fields follow ``pipeline.fields``.

A method (``Method``) is the ``distill`` params plus ``routing.mode``, with the per-method overrides
of ``distill.methods.<name>``: DanceOPD itself, the off-policy baseline (forward-noised data at the
same query t), dense DiffusionOPD-style queries and soft routing are all the same code.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from pipeline import flow, world
from pipeline.data import TensorSet, load_tensors, read_null
from pipeline.fields import Cond, Field, GuidedField, ModelField, RoutedField
from pipeline.train import LossFn

# u ~ Beta(a, b) over the high-to-low-noise rollout list, index = floor(R u): "low" is the
# low-noise (late) end. Beta(1, 1) is the uniform distribution.
QUERY_BETA = {"low": (5, 2), "mid": (5, 5), "high": (2, 5), "uniform": (1, 1)}
CHOICES = {
    "query": tuple(QUERY_BETA),
    "weighting": ("mean", "diffusionopd"),
    "states": ("on_policy", "off_policy"),
    "routing_mode": ("hard", "soft"),
}
POSITIVE_INTS = ("rollout_steps", "queries", "steps", "batch_size")
RETRIES = 50  # per query, the reference's budget of Beta draws for K distinct indices


@dataclasses.dataclass(frozen=True)
class Method:
    """One distillation recipe: the ``distill`` keys plus the routing mode."""

    init: str  # the model the student starts from
    rollout_steps: int  # R: Euler steps of the student rollout (= query candidates)
    query: str  # low | mid | high | uniform
    queries: int  # K states per rollout
    weighting: str  # K>1: mean of the K losses, or diffusionopd: 0.5/R^2 * their sum
    states: str  # on_policy | off_policy
    routing_mode: str  # hard | soft
    steps: int
    batch_size: int
    lr: float


def resolve_method(cfg, name: str) -> Method:
    """The method ``name``: the ``distill`` defaults (and ``routing.mode``) with its overrides."""
    methods = cfg.distill.methods
    if name not in methods:
        raise ValueError(f"distill.methods.{name}: unknown method (expected one of {sorted(methods)})")
    overrides = methods[name] or {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"distill.methods.{name}: expected a mapping of overrides, got {overrides!r}")
    keys = [f.name for f in dataclasses.fields(Method)]
    values = {k: getattr(cfg.distill, k) for k in keys if k != "routing_mode"}
    values["routing_mode"] = cfg.routing.mode
    where = {k: f"distill.{k}" for k in keys} | {"routing_mode": "routing.mode"}
    for key, value in overrides.items():
        if key not in keys:
            raise ValueError(f"distill.methods.{name}.{key}: unknown key (expected one of {keys})")
        values[key], where[key] = value, f"distill.methods.{name}.{key}"
    values = {k: _checked(values[k], k, where[k]) for k in keys}
    if values["queries"] > values["rollout_steps"]:
        raise ValueError(f"{where['queries']}: {values['queries']} queries but only "
                         f"{values['rollout_steps']} rollout states ({where['rollout_steps']})")
    return Method(**values)


def _checked(value, key: str, where: str):
    """``value`` of Method key ``key``, validated; errors name ``where``."""
    if key in CHOICES and value not in CHOICES[key]:
        raise ValueError(f"{where}: expected one of {list(CHOICES[key])}, got {value!r}")
    if key in POSITIVE_INTS and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{where}: expected a positive integer, got {value!r}")
    if key == "lr":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{where}: expected a positive number, got {value!r}")
        return float(value)
    if key == "init" and not (isinstance(value, str) and value):
        raise ValueError(f"{where}: expected a model name, got {value!r}")
    return value


def query_indices(n_states: int, batch: int, k: int, query: str,
                  generator: torch.Generator | None = None) -> Tensor:
    """(batch, k) long rollout indices, floor(n_states u) with u ~ the query's Beta; distinct, sorted per row.

    For k > 1 a row takes the first k distinct values of up to 50 k draws (the reference's
    resampling), then random unused indices if that budget ran out.
    """
    if query not in QUERY_BETA:
        raise ValueError(f"distill.query: expected one of {list(QUERY_BETA)}, got {query!r}")
    if not 1 <= k <= n_states:
        raise ValueError(f"distill.queries: {k} queries need 1..{n_states} rollout states")
    if k == n_states:  # every state: nothing to draw
        return torch.arange(n_states).expand(batch, k).clone()
    if k == 1:
        return _beta_indices(n_states, (batch, 1), query, generator)
    draws = _beta_indices(n_states, (batch, RETRIES * k), query, generator)  # (B, 50K)
    rows = []
    for row in draws.tolist():
        chosen = list(dict.fromkeys(row))[:k]  # first occurrences, in draw order
        if len(chosen) < k:
            unused = [i for i in range(n_states) if i not in chosen]
            chosen += [unused[i] for i in torch.randperm(len(unused), generator=generator)[:k - len(chosen)]]
        rows.append(sorted(chosen))
    return torch.tensor(rows, dtype=torch.long)  # (B, K)


def _beta_indices(n_states: int, shape: tuple[int, int], query: str, generator) -> Tensor:
    """floor(n_states u), u ~ Beta(a, b) as the a-th smallest of a + b - 1 uniforms (integer a, b)."""
    a, b = QUERY_BETA[query]
    u = torch.rand(*shape, a + b - 1, generator=generator).sort(dim=-1).values[..., a - 1]  # shape
    return (u * n_states).long().clamp_(max=n_states - 1)


@torch.no_grad()
def rollout(student: nn.Module | Field, noise: Tensor, cond: Cond, steps: int, shift: float) -> flow.Trajectory:
    """The student's own unguided Euler trajectory from ``noise``, batched, with no grad (stop-gradient)."""
    grid = flow.time_grid(steps, shift).to(noise.device)  # (R + 1,) from 1 to exactly 0
    return flow.euler_sample(student, noise, cond, grid, keep_states=True)  # states (R, B, C, H, W)


def bucket_weights(data: TensorSet, weights: Mapping[str, float]) -> Tensor:
    """(N,) sampling weights: bucket m drawn with probability ∝ weights[m], rows uniform within it."""
    buckets = [r.bucket for r in data.records]
    counts = Counter(buckets)
    for bucket in counts:
        if bucket not in weights:
            raise ValueError(f"routing.weights.{bucket}: missing weight for a bucket in the data")
        if weights[bucket] < 0:
            raise ValueError(f"routing.weights.{bucket}: must be >= 0, got {weights[bucket]}")
    out = torch.tensor([weights[b] / counts[b] for b in buckets], dtype=torch.float64)
    if not out.sum() > 0:
        raise ValueError(f"routing.weights: every bucket in the data {sorted(counts)} has weight 0")
    return out


def distill_loss(teacher: Field, data: TensorSet, method: Method, *, shift: float, device: torch.device,
                 route_of: Callable[[Cond], Tensor] | None = None, weights: Tensor | None = None) -> LossFn:
    """The DanceOPD objective as ``loss(student, generator)`` for ``train.fit``.

    ``route_of(cond) -> (B,) long`` replaces the true task label ``cond.route`` (e.g. a router's
    prediction); ``weights`` (N,) are the sampling weights of the rows of ``data`` (``bucket_weights``).
    """
    R, K = method.rollout_steps, method.queries
    grid = flow.time_grid(R, shift)  # (R + 1,)
    scale = 0.5 / R**2 if method.weighting == "diffusionopd" else 1.0 / K  # DiffusionOPD's dt^2 / 2

    def loss(student: nn.Module, gen: torch.Generator) -> Tensor:
        b = method.batch_size
        rows = _draw_rows(len(data), b, gen, weights)
        x, cond = data.batch(rows)  # (B, C, H, W)
        if route_of is not None:
            cond = dataclasses.replace(cond, route=route_of(cond).to("cpu", torch.long))
        idx = query_indices(R, b, K, method.query, gen)  # (B, K)
        owner = torch.arange(b).repeat_interleave(K)  # (B*K,) the sample of each query
        t = grid[idx.flatten()].to(device)  # (B*K,)
        if method.states == "on_policy":
            noise = torch.randn(x.shape, generator=gen).to(device)  # (B, C, H, W)
            trajectory = rollout(student, noise, cond.to(device), R, shift)  # states (R, B, C, H, W)
            x_t = trajectory.states[idx.flatten().to(device), owner.to(device)]  # (B*K, C, H, W)
        else:  # the off-policy baseline: data forward-noised with fresh noise, at the same t
            noise = torch.randn((b * K, *x.shape[1:]), generator=gen).to(device)  # (B*K, C, H, W)
            x_t = flow.interpolate(x[owner].to(device), noise, t)  # (B*K, C, H, W)
        cond = cond[owner].to(device)
        with torch.no_grad():  # the teacher is a fixed target: no graph, whatever it wraps
            target = teacher(x_t, t, cond).detach().float()  # (B*K, C, H, W)
        v = student(x_t, t, cond).float()  # (B*K, C, H, W), with grad
        per_state = (v - target).pow(2).reshape(b, K, -1).mean(dim=(0, 2))  # (K,) MSE of each query slot
        return scale * per_state.sum()

    return loss


def _draw_rows(n: int, batch: int, gen: torch.Generator, weights: Tensor | None) -> Tensor:
    """(batch,) row indices: uniform, or by the per-row sampling weights."""
    if weights is None:
        return torch.randint(n, (batch,), generator=gen)
    return torch.multinomial(weights, batch, replacement=True, generator=gen)


def build_teacher(models: Mapping[str, nn.Module], routes: list[str], mode: str, cfg_scale: float,
                  use_cfg: bool, null: tuple[Tensor, Tensor] | None) -> Field:
    """The routed (and optionally guided) teacher: route k is the frozen field of ``models[routes[k]]``.

    With ``use_cfg`` the target is the guided field (CFG absorption); the student stays unguided.
    A module shared by several routes becomes one ``ModelField``.
    """
    missing = [r for r in routes if r not in models]
    if missing:
        raise ValueError(f"build_teacher: no model for route(s) {missing} (have {sorted(models)})")
    frozen: dict[int, ModelField] = {}
    for r in routes:
        if id(models[r]) not in frozen:
            frozen[id(models[r])] = ModelField(models[r])
    fields = [frozen[id(models[r])] for r in routes]
    teacher: Field = RoutedField(fields, mode)
    if use_cfg:
        if null is None:
            raise ValueError("fields.cfg: CFG absorption needs the null text embedding")
        teacher = GuidedField(teacher, cfg_scale, *null)
    return teacher


# --- the distill stage: teachers from `fields`, the student from `distill.init` -----------------

def routes_of(cfg) -> list[str]:
    """Route k supervises with the field named by fields.<routes[k]>: the tasks, then realism."""
    return list(world.TASKS) + (["realism"] if cfg.fields.realism else [])


def routed_data(cfg, shards: Path) -> TensorSet:
    """The train buckets of every route, each row labelled with its route index."""
    routes = routes_of(cfg)
    data = load_tensors(shards, routes, "train")  # the realism route's bucket is named realism too
    data.task = torch.tensor([routes.index("realism" if r.bucket == "realism" else r.task) for r in data.records])
    return data


def train_student(cfg, name: str, shards: Path, models_root: Path, router_dir: Path, out: Path, on_log=None):
    """Distil every routed field into one student (`distill.methods.<name>`) and save it to `out`."""
    from pipeline import backbone, train
    from pipeline.router import Router
    from pipeline.sample import preview

    method = resolve_method(cfg, name)
    device = train.setup_compute(cfg.compute)
    routes, null = routes_of(cfg), read_null(shards)
    names = {r: getattr(cfg.fields, r) for r in routes}
    if not all(names.values()):
        raise ValueError(f"fields: every route needs a model name, got {names}")
    models = {r: backbone.load(backbone.model_dir(models_root, n, cfg.experts)).to(device) for r, n in names.items()}
    teacher = build_teacher(models, routes, method.routing_mode, cfg.fields.cfg_scale, cfg.fields.cfg, null)
    data = routed_data(cfg, shards)
    route_of = None
    if cfg.routing.source == "router":
        router = Router.load(router_dir)

        def route_of(cond: Cond) -> Tensor:
            # The router reads the task from the prompt; realism rows keep their route (T2I prompts).
            return torch.where(cond.route >= len(world.TASKS), cond.route, router.route(cond).cpu())
    elif cfg.routing.source != "label":
        raise ValueError(f"routing.source: expected router or label, got {cfg.routing.source!r}")
    loss = distill_loss(teacher, data, method, shift=cfg.model.shift, device=device, route_of=route_of,
                        weights=bucket_weights(data, cfg.routing.weights))
    student = backbone.load(backbone.model_dir(models_root, method.init, cfg.experts))
    loop_cfg = dataclasses.replace(cfg.train, batch_size=method.batch_size, ema=0.0)  # no EMA in the paper's code
    run_id = train.fingerprint(name, method, cfg.fields, cfg.routing, cfg.model, sorted(names.items()))
    work = train.work_dir(out)
    student, history = train.fit(student, loss, loop_cfg, steps=method.steps, lr=method.lr, work=work,
                                 run_id=run_id, device=device, on_log=on_log)
    meta = {"name": name, "method": dataclasses.asdict(method), "fields": names, "cfg": cfg.fields.cfg}
    train.save_model(student, out, history, meta, preview(student, shards, null, cfg.eval, cfg.model.shift))
    train.finish(work)
    return student, history
