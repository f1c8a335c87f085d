"""Flow-matching SFT: the base, the experts and the joint baseline, as one step function.

The step (DESIGN §2): velocity MSE on forward-noised data, ``x_t = (1 - t) x + t noise``, target
``noise - x``, t drawn by the model's t-sampling, with condition dropout (the null text, a zero
source) so that every model also learns the null field CFG needs at sampling time.

What each model trains on is its `Plan` (`plan`): the base on the t2i bucket from scratch with
the ``train.base`` recipe (steps, learning rate and schedule, EMA, t sampling); an expert on its
``experts.<name>`` buckets for its steps; a setting's joint baseline on the buckets of all its
routes for the sum of the steps of the experts it replaces (matched compute); the last two
fine-tuned from base with the ``train.finetune`` recipe.

A pretrained base (``model.pretrained``): the base starts from that SD3-family transformer instead
of from scratch (adapted to take a source image) and sees its VAE's latents when the folder has one
(`pipeline.core.latents`; a fine-tune sees its init's space, from its card). With
``model.lora_rank`` > 0 every SFT model trains a LoRA adapter (and the patch embedding) on its
init's frozen weights and is saved merged (`backbone.add_lora`): the base, too, is then a LoRA of
the pretrained T2I model on the t2i bucket with the ``train.base`` recipe (the pretrained model
adapted to the data's prompts and resolution), and the experts and the joint baseline LoRAs of it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.core import backbone, checkpoint, compute, flow, latents, streams
from pipeline.core.teacher import ROUTE_BUCKETS
from pipeline.core.batches import Batch, Curated, TensorSet, random_batches
from pipeline.data import outputs, shards
from pipeline.train import run
from pipeline.train.loop import Fit, Loop, StepFn


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one SFT model trains on, for how long, and how (its `train.base` or `train.finetune` recipe)."""

    name: str
    buckets: list[str]
    steps: int
    recipe: object  # pipeline.config.Recipe: lr, schedule, EMA, t sampling


def plan(name: str, train, experts, setting=None) -> Plan:
    """The plan of the SFT model `name`: base, an expert name, or a setting's joint baseline."""
    if name == "base":
        return Plan(name, ["t2i"], train.base.steps, train.base)
    if name == "joint":  # multi-task SFT on the setting's buckets, with the compute of the experts it replaces
        if setting is None:
            raise ValueError("train joint: needs the setting whose sources it replaces (--setting)")
        buckets = list(dict.fromkeys(b for route in setting.routes for b in ROUTE_BUCKETS[route]))
        replaced = sorted({source for source in setting.routes.values() if source != "base"})
        return Plan(name, buckets, sum(experts[s].steps for s in replaced), train.finetune)
    if (expert := experts.get(name)) is None:
        raise ValueError(f"train: unknown model {name!r}; expected base, joint or one of experts {sorted(experts)}")
    return Plan(name, list(expert.buckets), expert.steps, train.finetune)


def flow_matching_step(t_sampling: str, drop_text: float, drop_source: float, null: tuple[Tensor, Tensor],
                       device: torch.device, shift: float = 1.0) -> StepFn:
    """The SFT loss of one batch, drawing noise, t and the dropout masks from the generator.

    A ``*_shifted`` t sampling moves t by the SD3 ``shift`` of the sampling grid (`flow.shift_time`).
    """
    null_text, null_pooled = (v.to(device) for v in null)  # (L, D), (D,)
    density, shifted = t_sampling.removesuffix("_shifted"), t_sampling.endswith("_shifted")

    def step(model: nn.Module, batch: Batch, gen: torch.Generator) -> Tensor:
        x, cond = batch[0].to(device), batch[1].to(device)  # (B, C, H, W); no copy when already there
        b, on = len(x), gen.device
        noise = torch.randn(x.shape, generator=gen, device=on)
        t = flow.sample_t(b, density, generator=gen)  # (B,)
        if shifted:
            t = flow.shift_time(t, shift)
        no_text = torch.rand(b, generator=gen, device=on) < drop_text  # (B,)
        no_source = torch.rand(b, generator=gen, device=on) < drop_source
        noise, t, no_text, no_source = (v.to(device) for v in (noise, t, no_text, no_source))
        cond = dataclasses.replace(  # the null condition CFG needs at sampling time
            cond, text=torch.where(no_text.view(-1, 1, 1), null_text, cond.text),
            pooled=torch.where(no_text.view(-1, 1), null_pooled, cond.pooled),
            source=torch.where(no_source.view(-1, 1, 1, 1), 0.0, cond.source))
        v = model(flow.interpolate(x, noise, t), t, cond)
        return F.mse_loss(v.float(), flow.target_velocity(x, noise))

    return step


def new_model(model_params, seed: int, tensors: TensorSet) -> backbone.Backbone:
    """A backbone for `tensors` (images, text) from `model.pretrained` or, when that is empty, the preset registry."""
    if model_params.pretrained:
        return backbone.load_pretrained(model_params.pretrained, tensors.text_dim, tensors.pooled_dim,
                                        tensors.image.shape[1])
    torch.manual_seed(seed)  # initial weights are part of "same seed, same result"
    return backbone.build(model_params.preset, model_params.patch_size, tensors.image.shape[-1], tensors.text_dim,
                          prediction=model_params.prediction)


def train_model(plan: Plan, train, model_params, compute_params, *, data: Curated, out: Path,
                init: Path | None, stream=None, on_log=None) -> Fit:
    """Train the SFT model of `plan` (from `init`, or from scratch) on `data` and save it to `out`.

    `stream` (``data.stream``): with `enabled`, batches are streamed from the shards
    (`pipeline.core.streams`) instead of drawn from the data held in memory.
    """
    outputs.ensure_writable(out)
    device = compute.setup(compute_params)
    # The model's space: its init's (from its card), else pixels or model.pretrained's VAE latents.
    space = checkpoint.space([init], device) if init else latents.space(model_params.pretrained, device)
    curated, rank = data.seen_in(space), compute.world()[0]
    rng = torch.Generator(device).manual_seed(train.seed + rank)  # each process its own rows, noise, t, dropout
    batch_size = compute.per_rank(train.batch_size, "train.batch_size", device)
    if stream is not None and stream.enabled:  # streamed; one row gives the shapes
        tensors = curated.tensors(plan.buckets[:1], "train", limit=1)
        batches = streams.streamed_batches(curated, plan.buckets, batch_size, seed=train.seed, device=device,
                                           workers=stream.workers, buffer=stream.buffer)
    else:  # resident on the device: a batch is a gather, drawn from rng
        tensors = curated.tensors(plan.buckets, "train").to(device)
        batches = random_batches(tensors, batch_size, rng)
    model = backbone.load(init) if init else new_model(model_params, train.seed, tensors)
    model = run.ready(model, compute_params.grad_checkpointing, model_params.lora_rank, train.seed)
    r = plan.recipe
    step = flow_matching_step(r.t_sampling, train.drop_text, train.drop_source, data.null(), device, model_params.shift)
    loop = Loop(steps=plan.steps, lr=r.lr, weight_decay=train.weight_decay, grad_clip=train.grad_clip, ema=r.ema,
                grad_accum=train.grad_accum, checkpoint_every=train.checkpoint_every, log_every=train.log_every,
                compile=compute_params.compile, warmup_steps=r.warmup_steps, lr_decay=r.lr_decay,
                min_lr_ratio=r.min_lr_ratio)
    recipe = {"plan": {"name": plan.name, "buckets": plan.buckets, "steps": plan.steps, "t_sampling": r.t_sampling},
              "loop": dataclasses.asdict(loop), "batch_size": train.batch_size,
              "drop_text": train.drop_text, "drop_source": train.drop_source, "seed": train.seed,
              "init": str(init) if init else  # a fine-tune's architecture is its init's; a new model's is params'
              {key: getattr(model_params, key) for key in ("preset", "patch_size", "prediction", "pretrained")}}
    if model_params.lora_rank:
        recipe["lora_rank"] = model_params.lora_rank
    return run.fit_and_save(model, step, batches, loop, rng=rng, out=out, name=plan.name, recipe=recipe,
                            run_id=checkpoint.fingerprint(recipe, _shard_digest(data.shards, plan.buckets)),
                            shift=model_params.shift, data=data, space=space, side=tensors.image.shape[-1],
                            device=device, on_log=on_log)


def _shard_digest(shards_dir: Path, buckets: list[str]) -> list[tuple[str, int]]:
    return [(p.name, p.stat().st_size) for b in buckets for p in shards.shard_paths(shards_dir, b, "train")]
