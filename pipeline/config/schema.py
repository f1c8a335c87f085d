"""The schema of params.yaml: one strict, frozen pydantic model per section (`Config` holds them all).

No field has a default: defaults live in params.yaml only. `pipeline.config.loader` validates a
file against it and adds the rules that span sections.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from pipeline.config import trace
from pipeline.data import world

Positive = Annotated[int, Field(gt=0)]
NonNegative = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
# The buckets of curated data: the world's, and "external" (pipeline.curation.external's ingest).
Bucket = Literal[world.BUCKETS + ("external",)]
ModelPreset = Literal["tiny", "S", "S-deep", "S-wide", "M", "B"]  # pipeline.core.backbone.PRESETS (a test keeps them equal)
# The training t density; "_shifted": moved by model.shift like the sampling grid, so training
# spends its samples where sampling spends its steps (more near noise, where layout is decided).
TSampling = Literal["logit_normal", "uniform", "logit_normal_shifted", "uniform_shifted"]
Query = Literal["low", "mid", "high", "uniform"]
Weighting = Literal["mean", "diffusionopd"]
States = Literal["on_policy", "off_policy", "off_policy_data"]
RoutingMode = Literal["hard", "soft"]
RoutingPer = Literal["step", "sample", "all"]
RouteName = Literal[tuple(world.ROUTE_BUCKETS)]  # the routes a teacher can have


class ConfigError(ValueError):
    """A params file that does not match the schema."""



class Section(BaseModel):
    """A params section: strict, frozen, no unknown keys, no NaN or infinite number; records reads while tracing."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)
    _where: str = PrivateAttr(default="")  # this section's dotted key
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)  # field -> the key it came from

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if trace.reads is None or name.startswith("_") or name not in type(self).model_fields:
            return value
        key = type(self).model_fields[name].alias or name  # the params.yaml spelling
        where = self._origins.get(name) or (f"{self._where}.{key}" if self._where else key)
        if isinstance(value, Section):
            return value  # it records its own leaves
        if isinstance(value, dict) and value and all(isinstance(v, Section) for v in value.values()):
            return trace.TracedSections(value, where)
        trace.reads.add(where)
        return value



class World(Section):
    resolution: Positive  # canvas side in pixels; the 2x2 grid of cells scales with it


class Stream(Section):
    """How training reads its data (`pipeline.core.streams`)."""

    enabled: bool  # false: in memory, on the device (the small world); true: streamed from the shards
    workers: NonNegative  # DataLoader workers per process
    buffer: Positive  # shuffle buffer, in samples


class Data(Section):
    train_per_bucket: Positive  # samples per bucket (t2i, local_edit, global_edit, realism) and split
    test_per_bucket: Positive
    shard_size: Positive  # samples per webdataset shard
    external_csv: str  # "" = none; else a CSV (uid,task,prompt,source_image,target_image)
    external_test_fraction: Probability  # share of external rows (by hash of uid) that go to test
    stream: Stream


class Text(Section):
    encoder: str  # "minilm" = the packaged all-MiniLM-L6-v2; "pretrained" = the SD3 text encoders of
    # model.pretrained's folder (pipeline.curation.sd3_text); or a local transformers folder
    max_tokens: Positive  # token embeddings are padded/truncated to this length (SD3: T5's, after 77 CLIP tokens)
    batch_size: Positive


class Model(Section):
    preset: ModelPreset  # a backbone depth/width from the registry
    patch_size: Positive
    prediction: Literal["velocity", "sample"]  # what the network predicts (pipeline.core.backbone); the
    # model returns a velocity either way. A pretrained SD3 model predicts the velocity.
    shift: PositiveFloat  # SD3 time shift of the sampling grid
    pretrained: str  # "" = build from `preset`; else a local diffusers folder: an SD3-family pipeline
    # (its transformer; its VAE's latents when it has a vae/) or a bare transformer folder
    lora_rank: NonNegative  # 0 = full fine-tuning; > 0: the SFT models and students train LoRA adapters of
    # this rank (alpha = rank) on the frozen pretrained weights, and are saved merged


class Recipe(Section):
    """How one kind of SFT model is optimised (the base from scratch; the fine-tunes from base)."""

    lr: PositiveFloat
    warmup_steps: NonNegative  # linear learning-rate warm-up
    lr_decay: Literal["constant", "cosine"]  # after the warm-up
    min_lr_ratio: Probability  # cosine: the final learning rate, as a share of lr
    ema: Annotated[float, Field(ge=0, lt=1)]  # EMA decay (with diffusers' warm-up); 0 = off
    t_sampling: TSampling


class BaseRecipe(Recipe):
    steps: Positive


class Train(Section):
    batch_size: Positive
    grad_accum: Positive  # micro-batches of batch_size per optimizer step
    weight_decay: Annotated[float, Field(ge=0)]
    grad_clip: PositiveFloat
    drop_text: Probability  # condition dropout probabilities (for CFG)
    drop_source: Probability
    checkpoint_every: Positive
    log_every: Positive
    sample_every: NonNegative  # students: validation samples to MLflow every N steps (0 = off)
    seed: int
    base: BaseRecipe  # the T2I base, from scratch
    finetune: Recipe  # the experts and joint, from base


class Expert(Section):
    buckets: Annotated[list[Bucket], Field(min_length=1)]  # the buckets it is fine-tuned on
    steps: Positive  # its fine-tuning budget (edits need ~1500 steps at batch 64; realism ~400)


class Router(Section):
    label_fraction: Annotated[float, Field(gt=0, le=1)]  # share of training prompts whose label it sees
    steps: Positive
    lr: PositiveFloat
    seed: int  # which prompts are labelled, and the router's initial weights


class Fields(Section):
    """The operators on the routed field the students learn."""

    absorb_guidance: bool = Field(alias="cfg")  # teacher target = guided field (CFG absorption)
    guidance_scale: PositiveFloat = Field(alias="cfg_scale")


class Routing(Section):
    mode: RoutingMode  # hard: one field per sample; soft: the weighted average of the setting's fields
    source: Literal["router", "label"]  # the router's prediction, or the true task
    per: RoutingPer  # step: one route per optimizer step; sample: mixed in a batch; all: every route each step
    weights: dict[RouteName, Annotated[float, Field(ge=0)]]  # route sampling (and soft-average) weights


class Setting(Section):
    """One experiment of the paper: its routes (route -> source model), the students' init, the
    methods it runs and the seeds each student is trained with."""

    routes: Annotated[dict[RouteName, str], Field(min_length=1)]
    init: str
    methods: list[str]  # empty: the setting's students are not trained (DVC expands no stage)
    seeds: Annotated[list[int], Field(min_length=1)]


class Run(Section):
    """Which of the costlier rows `dvc repro` trains and evaluates (each list drives a DVC ``foreach``
    or ``matrix``; a row left out costs nothing and is one ``-S`` away)."""

    experts: list[str]  # the experts trained (of ``experts``)
    baselines: list[str]  # settings whose joint-SFT and weight-merge baselines run
    teachers: list[str]  # settings whose routed teachers (plain and guided) are evaluated


class MethodOverrides(Section):
    """What ``distill.methods.<name>`` may override (every key optional)."""

    init: str | None = None  # default: the setting's
    rollout_steps: Positive | None = None
    query: Query | None = None
    queries: Positive | Literal["all"] | None = None  # "all": every rollout state (DiffusionOPD)
    weighting: Weighting | None = None
    states: States | None = None
    routing_mode: RoutingMode | None = None
    routing_per: RoutingPer | None = None
    steps: Positive | None = None
    batch_size: Positive | None = None
    grad_accum: Positive | None = None
    lr: PositiveFloat | None = None


class Distill(Section):
    rollout_steps: Positive  # R: Euler steps of the student rollout (= query candidates)
    query: Query  # low: Beta(5,2) over rollout indices; mid: Beta(5,5); high: Beta(2,5); uniform
    queries: Positive  # K states per rollout
    weighting: Weighting  # K>1: mean of the K losses, or diffusionopd: 0.5/R^2 * their sum
    states: States  # on_policy | off_policy (forward-noised at the query t: edit targets, Gaussian
    # endpoints for prompt-only rows) | off_policy_data (every row's render)
    steps: Positive
    batch_size: Positive
    grad_accum: Positive
    lr: PositiveFloat
    methods: dict[str, MethodOverrides | None]  # method name -> overrides of the keys above


class Method(Section):
    """One distillation recipe, resolved: the ``distill`` keys, ``routing.mode`` and ``routing.per``
    and the setting's init, with the method's overrides."""

    init: str
    rollout_steps: Positive
    query: Query
    queries: Positive
    weighting: Weighting
    states: States
    routing_mode: RoutingMode
    routing_per: RoutingPer
    steps: Positive
    batch_size: Positive
    grad_accum: Positive
    lr: PositiveFloat


class Evaluator(Section):
    parser_steps: Positive  # scene-parser training steps on fresh renders
    clip_steps: Positive  # domain-CLIP contrastive training steps
    batch_size: Positive
    lr: PositiveFloat
    holdout: Positive  # held-out renders that measure scene_accuracy
    reference: Positive  # real T2I test renders whose features are KID's and FID's reference
    seed: int
    min_scene_accuracy: Probability  # held-out scene accuracy below which the stage fails (DESIGN §7)


class Eval(Section):
    count: Positive  # test samples per bucket
    steps: Positive  # Euler steps
    guidance: PositiveFloat  # CFG scale at sampling time
    image_guidance: PositiveFloat  # edits: InstructPix2Pix's source scale (1 = single-scale CFG on the text)
    seed: int
    batch_size: NonNegative  # test images sampled at once; 0 = a whole bucket
    evaluator: Evaluator


class Compute(Section):
    device: Literal["auto", "cpu", "cuda"]  # auto: cuda when available
    threads: NonNegative  # torch intra-op threads; 0 = torch's default
    compile: bool
    nproc: Positive  # training processes per stage (torchrun + DDP); 1 = a plain process
    grad_checkpointing: bool  # recompute each transformer block's activations in backward (memory for compute)


class Config(Section):
    world: World
    data: Data
    text: Text
    model: Model
    train: Train
    experts: dict[str, Expert]
    router: Router
    fields: Fields
    routing: Routing
    distill: Distill
    settings: dict[str, Setting]
    run: Run
    eval: Eval
    compute: Compute
    _methods: dict[tuple[str, str], Method] = PrivateAttr(default_factory=dict)

    def method(self, setting: str, name: str) -> Method:
        """The method ``distill.methods.<name>`` resolved for ``settings.<setting>``."""
        if (setting, name) not in self._methods:
            raise ConfigError(f"settings.{setting}.methods: no method {name!r} "
                              f"(the setting runs {self.settings[setting].methods if setting in self.settings else []})")
        return self._methods[(setting, name)]

    def sources(self) -> list[str]:
        """The names of the source models a field or a student init may name: base and the experts."""
        return ["base", *self.experts]
