"""How the evaluator is trained and checked: fresh renders, never the curated shards.

- Scenes come from `random.Random` seeded by strings ("parser/<seed>/<step>", "holdout/<seed>",
  ...) and T2I samples from seeds >= 10**12, so none coincides with a `world.make_bucket` seed.
- Renders are drawn at ``world.resolution`` and box-averaged to the evaluator's grid
  (`pipeline.eval.evaluator.grid_side`) before anything sees them, as every measured image is.
- Geometry is never augmented (cell positions are the labels); pixels get noise, blur and
  brightness jitter so that slightly imperfect generated images still parse.
- The parser must read held-out clean renders with ``eval.evaluator.min_scene_accuracy`` scene
  accuracy (DESIGN §7: 0.99) or the stage fails, writing nothing, before the CLIP is trained.
- Both models train with AdamW and a warm-up + cosine schedule (`_fit`), not `pipeline.train.loop`:
  the evaluator is the measuring instrument and depends on nothing of the model stack (only on
  `pipeline.core.compute` for the device).
"""
from __future__ import annotations

import itertools
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from pipeline.core import compute
from pipeline.data import outputs, world
from pipeline.data.shards import to_tensor
from pipeline.curation.text import encoder_dir
from pipeline.eval.evaluator import (BACKGROUNDS, CLIP_MAX_TOKENS, CONTENTS, STYLES, Evaluator, ParserConfig,
                                     SceneParser, build_clip, grid_side, predict, scene_labels, to_grid)

# Objects per training scene: the world has 1 to 3; 0 and 4 are rare so broken outputs still parse.
N_OBJECTS, N_WEIGHTS = (0, 1, 2, 3, 4), (0.03, 0.31, 0.31, 0.31, 0.04)


# ----------------------------------------------------------------------------- scenes and renders

def random_scene(rng: random.Random, n_objects: int | None = None) -> world.Scene:
    """A scene with uniform objects, background and style; `n_objects` None draws 0..4."""
    n = rng.choices(N_OBJECTS, N_WEIGHTS)[0] if n_objects is None else n_objects
    cells = [None] * 4
    for cell in rng.sample(range(4), n):
        cells[cell] = world.Obj(rng.choice(world.SHAPES), rng.choice(list(world.COLORS)))
    return world.Scene(tuple(cells), rng.choice(BACKGROUNDS), rng.choice(STYLES))




class TileRenderer:
    """`world.render` for batches, composed from per-cell tiles rendered once by `world.render`.

    Exact because a cell's pixels depend only on its content, the background, the style and its
    position (`world` keeps every shape inside its cell); the constructor verifies it.
    """

    def __init__(self, size: int):
        self.size = size
        half = size // 2
        # tiles[cell, content, background, style] = (half, half, 3) uint8
        self.tiles = np.empty((4, len(CONTENTS), len(BACKGROUNDS), len(STYLES), half, half, 3),
                              np.uint8)
        for (k, content), (b, bg), (s, style) in itertools.product(
                enumerate(CONTENTS), enumerate(BACKGROUNDS), enumerate(STYLES)):
            img = world.render(world.Scene((content,) * 4, bg, style), size)
            for cell in range(4):
                y0, y1, x0, x1 = world.cell_box(cell, size)
                self.tiles[cell, k, b, s] = img[y0:y1, x0:x1]
        rng = random.Random("tile-check")
        scenes = [random_scene(rng) for _ in range(50)]
        if not np.array_equal(self(scenes), np.stack([world.render(s, size) for s in scenes])):
            raise AssertionError("TileRenderer: tiles differ from world.render; cells are not local")

    def __call__(self, scenes: list[world.Scene]) -> np.ndarray:
        """(N, S, S, 3) uint8, equal to stacking `world.render` of each scene."""
        lab = scene_labels(scenes).numpy()
        cells = [self.tiles[c, lab[:, c], lab[:, 4], lab[:, 5]] for c in range(4)]  # (N, h, h, 3)
        top, bottom = np.concatenate(cells[:2], axis=2), np.concatenate(cells[2:], axis=2)
        return np.concatenate([top, bottom], axis=1)

    def grid(self, scenes: list[world.Scene]) -> Tensor:
        """(N, 3, G, G) float in [-1, 1]: the renders as the evaluator sees them (its grid, `grid_side`)."""
        return to_grid(to_tensor(self(scenes)), grid_side(self.size))


def augment(x: Tensor, gen: torch.Generator, p: float = 0.75) -> Tensor:
    """Pixel-only jitter of a share `p` of the batch: blur, brightness/contrast, Gaussian noise."""
    b = x.shape[0]
    u = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    on = (u(b) < p).float().view(b, 1, 1, 1)
    # Blur: mix with the 3x3 box mean by a random weight (generated images come out slightly soft).
    box = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    w = on * (u(b, 1, 1, 1) < 0.3).float() * u(b, 1, 1, 1) * 0.6
    x = x + w * (box - x)
    scale = 1 + on * (u(b, 1, 1, 1) - 0.5) * 0.1  # contrast +-5%
    shift = on * (u(b, 1, 1, 1) - 0.5) * 0.1  # brightness +-0.05
    sigma = on * u(b, 1, 1, 1) * 0.1  # noise std up to 0.1 (~13 grey levels)
    return (x * scale + shift + sigma * torch.randn(x.shape, generator=gen)).clamp(-1, 1)




def tokenizer():
    """The MiniLM WordPiece tokenizer the domain CLIP reads captions with."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(encoder_dir("minilm"), local_files_only=True)


def caption_pair(rng: random.Random) -> tuple[world.Scene, str]:
    """A training pair: a random scene with its full caption, or a T2I sample with its prompt."""
    if rng.random() < 0.5:
        scene = random_scene(rng, rng.randint(1, 3))
        return scene, world.describe(scene)
    bucket = rng.choice(["t2i", "realism"])
    # Seeds >= 10**12 lie far beyond every make_bucket range (< 1.4 * 10**9).
    sample = world.make_sample(bucket, rng.choice(world.T2I_CATEGORIES), 10**12 + rng.randrange(10**12))
    return sample.target, sample.prompt




# ----------------------------------------------------------------------------- training

def parser_loss(parser: SceneParser, x: Tensor, labels: Tensor) -> Tensor:
    """Sum of the mean cross-entropies of the cell, background and style heads."""
    cells, bg, style = parser(x)
    return (F.cross_entropy(cells.flatten(0, 1), labels[:, :4].flatten())
            + F.cross_entropy(bg, labels[:, 4]) + F.cross_entropy(style, labels[:, 5]))



def _fit(model: nn.Module, loss_at, steps: int, lr: float, name: str) -> None:
    """AdamW, warm-up + cosine decay (not `loop.fit`: no schedule there, and its EMA skips BN stats)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(  # 50 warm-up steps keep the transformer stable
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    for step in tqdm(range(steps), desc=name, unit="step", mininterval=5.0):
        loss = loss_at(step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"evaluator {name}: loss is {loss.item()} at step {step}; stopping")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()


def train_parser(params, render: TileRenderer, device: torch.device) -> SceneParser:
    """Train the scene parser on fresh augmented renders (`params`: the `eval.evaluator` section)."""
    torch.manual_seed(params.seed)
    parser = SceneParser(ParserConfig(size=grid_side(render.size))).to(device)
    gen = torch.Generator().manual_seed(params.seed)

    def loss_at(step: int) -> Tensor:
        rng = random.Random(f"parser/{params.seed}/{step}")
        scenes = [random_scene(rng) for _ in range(params.batch_size)]
        x = augment(render.grid(scenes), gen)
        return parser_loss(parser, x.to(device), scene_labels(scenes).to(device))

    _fit(parser, loss_at, params.parser_steps, params.lr, "parser")
    return parser


def train_clip(params, render: TileRenderer, device: torch.device):
    """Train the domain CLIP contrastively on fresh (render, caption) pairs; return (clip, tok)."""
    torch.manual_seed(params.seed)
    tok = tokenizer()
    clip = build_clip(grid_side(render.size), tok).to(device)
    gen = torch.Generator().manual_seed(params.seed + 1)

    def loss_at(step: int) -> Tensor:
        rng = random.Random(f"clip/{params.seed}/{step}")
        scenes, texts = zip(*(caption_pair(rng) for _ in range(params.batch_size)))
        tokens = tok(list(texts), padding=True, truncation=True, max_length=CLIP_MAX_TOKENS,
                     return_tensors="pt").to(device)
        x = augment(render.grid(list(scenes)), gen)
        return clip(pixel_values=x.to(device), return_loss=True, **tokens).loss

    _fit(clip, loss_at, params.clip_steps, params.lr, "clip")
    return clip, tok


@torch.no_grad()
def parse_accuracy(parser: SceneParser, params, render: TileRenderer) -> dict:
    """Accuracies on `params.holdout` clean renders of held-out scenes with the world's 1..3 objects."""
    rng = random.Random(f"holdout/{params.seed}")
    scenes = [random_scene(rng, rng.randint(1, 3)) for _ in range(params.holdout)]
    x, device = render.grid(scenes), next(parser.parameters()).device
    pred = [predict(parser.eval(), x[i:i + 500].to(device)).cpu() for i in range(0, len(x), 500)]
    ok = torch.cat(pred) == scene_labels(scenes)  # (N, 6)
    return {"scene_accuracy": ok.all(1).float().mean().item(),
            "cell_accuracy": ok[:, :4].float().mean().item(),
            "background_accuracy": ok[:, 4].float().mean().item(),
            "style_accuracy": ok[:, 5].float().mean().item()}


def clip_sanity(ev: Evaluator, params, render: TileRenderer) -> dict:
    """Mean CLIP score of held-out (render, caption) pairs, matching and shuffled."""
    rng = random.Random(f"clip-holdout/{params.seed}")
    pairs = [caption_pair(rng) for _ in range(min(params.holdout, 1000))]
    x, texts = render.grid([s for s, _ in pairs]), [c for _, c in pairs]  # shuffled = rolled
    return {"clip_match": ev.clip_score(x, texts).mean().item(),
            "clip_shuffled": ev.clip_score(x, texts[1:] + texts[:1]).mean().item()}


@torch.no_grad()
def reference_features(parser: SceneParser, params, render: TileRenderer) -> np.ndarray:
    """(N, F) float32 parser features of `params.reference` real renders of T2I scenes of the world's
    `reference` split: the test set's distribution, disjoint from every evaluated target."""
    scenes = [s.target for s in world.make_bucket("t2i", "reference", params.reference)]
    x, device = render.grid(scenes), next(parser.parameters()).device
    feats = [parser.eval().features(x[i:i + 500].to(device)).cpu() for i in range(0, len(x), 500)]
    return torch.cat(feats).numpy().astype(np.float32)


def train_evaluator(params, resolution: int, compute_params, out: Path) -> tuple[dict, float]:
    """Train, check and save the evaluator (`params` = ``eval.evaluator``) to `out`: (metrics, seconds)."""
    outputs.ensure_writable(out)
    device = compute.setup(compute_params)
    tic = time.perf_counter()
    render = TileRenderer(resolution)  # world.resolution; measured at its grid
    parser = train_parser(params, render, device)
    metrics = parse_accuracy(parser, params, render)
    if metrics["scene_accuracy"] < params.min_scene_accuracy:  # checked before the CLIP's longer training
        raise RuntimeError(f"evaluator: held-out scene accuracy {metrics['scene_accuracy']:.4f} < "
                           f"{params.min_scene_accuracy}, so the metrics would mean nothing (raise "
                           f"eval.evaluator.parser_steps); nothing was written. {metrics}")
    ev = Evaluator(parser, *train_clip(params, render, device), reference_features(parser, params, render))
    seconds = time.perf_counter() - tic
    ev.save(out)
    return metrics | clip_sanity(ev, params, render), seconds
