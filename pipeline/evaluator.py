"""The evaluator every metric is computed with: a scene parser and a domain CLIP (DESIGN.md §7).

Conventions (this module owns them):

- Inputs are (B, 3, S, S) float images in [-1, 1] (`data.to_tensor`), S = `world.size`. Neither
  model normalises further: both are trained from scratch on exactly that range.
- Parser labels: per cell (row-major, as `world`) one of `CONTENTS` (index 0 = empty, then every
  (shape, colour)); the background is an index into `world.BACKGROUNDS` and the style into
  `world.STYLES`. The background is the scene's, not the rendered colour (an inverted white scene
  shows black and is labelled white). `parse` decodes the argmax of each head into a `world.Scene`.
- Realism reward = the parser's probability of style "real". FID features = the parser's
  penultimate layer (`features`, (B, F)), since no Inception weights exist offline.
- CLIP score = 100 * cos(image embed, text embed) of the domain CLIP, per pair (no clamp at 0).
  Its text tower uses the MiniLM WordPiece tokenizer; CLS/SEP serve as CLIP's BOS/EOS, so CLIP's
  pooling takes the [SEP] state (the tower is causal, so [SEP] has seen the whole caption).
- Training data are fresh renders, never the curated shards: scenes come from `random.Random`
  seeded by strings ("parser/<seed>/<step>", "holdout/<seed>", ...) and T2I samples from seeds
  >= 10**12, so none coincides with a `world.make_bucket` seed. Geometry is never augmented (cell
  positions are the labels); pixels get noise, blur and brightness jitter so that slightly
  imperfect generated images still parse.
- A saved evaluator is a folder: `parser.pt` + `parser.json` (its config), `clip/`
  (`save_pretrained`) and `tokenizer/`; it loads without params.yaml and is written atomically.
"""
from __future__ import annotations

import itertools
import json
import math
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from pipeline import world
from pipeline.data import replace_dir, to_tensor
from pipeline.train import setup_compute

CONTENTS = (None,) + tuple(world.Obj(s, c) for s in world.SHAPES for c in world.COLORS)
_CONTENT_INDEX = {c: i for i, c in enumerate(CONTENTS)}
_BACKGROUNDS, _STYLES = list(world.BACKGROUNDS), list(world.STYLES)
# Objects per training scene: the world has 1 to 3; 0 and 4 are rare so broken outputs still parse.
_N_OBJECTS, _N_WEIGHTS = (0, 1, 2, 3, 4), (0.03, 0.31, 0.31, 0.31, 0.04)
CLIP_MAX_TOKENS = 64  # the longest caption (4 objects, describe) is ~45 WordPiece tokens


# ----------------------------------------------------------------------------- scenes and renders

def random_scene(rng: random.Random, n_objects: int | None = None) -> world.Scene:
    """A scene with uniform objects, background and style; `n_objects` None draws 0..4."""
    n = rng.choices(_N_OBJECTS, _N_WEIGHTS)[0] if n_objects is None else n_objects
    cells = [None] * 4
    for cell in rng.sample(range(4), n):
        cells[cell] = world.Obj(rng.choice(world.SHAPES), rng.choice(list(world.COLORS)))
    return world.Scene(tuple(cells), rng.choice(_BACKGROUNDS), rng.choice(_STYLES))


def scene_labels(scenes: list[world.Scene]) -> Tensor:
    """(B, 6) long: four cell contents, background, style."""
    rows = [[_CONTENT_INDEX[c] for c in s.cells] + [_BACKGROUNDS.index(s.background),
                                                     _STYLES.index(s.style)] for s in scenes]
    return torch.tensor(rows, dtype=torch.long)


class TileRenderer:
    """`world.render` for batches, composed from per-cell tiles rendered once by `world.render`.

    Exact because a cell's pixels depend only on its content, the background, the style and its
    position (`world` keeps every shape inside its cell); the constructor verifies it.
    """

    def __init__(self, size: int):
        self.size = size
        half = size // 2
        # tiles[cell, content, background, style] = (half, half, 3) uint8
        self.tiles = np.empty((4, len(CONTENTS), len(_BACKGROUNDS), len(_STYLES), half, half, 3),
                              np.uint8)
        for (k, content), (b, bg), (s, style) in itertools.product(
                enumerate(CONTENTS), enumerate(_BACKGROUNDS), enumerate(_STYLES)):
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


# ----------------------------------------------------------------------------- scene parser

@dataclass(frozen=True)
class ParserConfig:
    """The parser's architecture; saved beside its weights."""
    size: int = 32
    widths: tuple = (32, 64, 96)  # channels after the stem, the 1st and the 2nd downsampling
    hidden: int = 256  # the feature width (FID's feature space)


class SceneParser(nn.Module):
    """CNN: a 2x2-patch stem, two stride-2 stages, then one shared MLP layer feeding the heads."""

    def __init__(self, cfg: ParserConfig):
        super().__init__()
        self.cfg = cfg
        (w0, w1, w2), norm = cfg.widths, nn.BatchNorm2d
        block = lambda i, o, s: [nn.Conv2d(i, o, 3, s, 1, bias=False), norm(o), nn.ReLU()]  # noqa: E731
        self.trunk = nn.Sequential(
            nn.Conv2d(3, w0, 2, 2), nn.ReLU(),  # (B, w0, S/2, S/2): sees every pixel once
            *block(w0, w0, 1), *block(w0, w1, 2), *block(w1, w1, 1), *block(w1, w2, 2))
        cells = (cfg.size // 8) ** 2  # (B, w2, S/8, S/8) flattened keeps where things are
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(w2 * cells, cfg.hidden), nn.ReLU())
        self.cells = nn.Linear(cfg.hidden, 4 * len(CONTENTS))
        self.background = nn.Linear(cfg.hidden, len(_BACKGROUNDS))
        self.style = nn.Linear(cfg.hidden, len(_STYLES))

    def features(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) in [-1, 1] -> (B, hidden)."""
        return self.neck(self.trunk(x))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Logits: cells (B, 4, len(CONTENTS)), background (B, 4), style (B, 5)."""
        h = self.features(x)
        return self.cells(h).view(-1, 4, len(CONTENTS)), self.background(h), self.style(h)


def parser_loss(parser: SceneParser, x: Tensor, labels: Tensor) -> Tensor:
    """Sum of the mean cross-entropies of the cell, background and style heads."""
    cells, bg, style = parser(x)
    return (F.cross_entropy(cells.flatten(0, 1), labels[:, :4].flatten())
            + F.cross_entropy(bg, labels[:, 4]) + F.cross_entropy(style, labels[:, 5]))


def predict(parser: SceneParser, x: Tensor) -> Tensor:
    """(B, 6) long argmax labels, in the layout of `scene_labels`."""
    cells, bg, style = parser(x)
    return torch.cat([cells.argmax(-1), bg.argmax(-1, keepdim=True), style.argmax(-1, keepdim=True)], 1)


def decode(labels: Tensor) -> list[world.Scene]:
    """Inverse of `scene_labels`."""
    return [world.Scene(tuple(CONTENTS[i] for i in row[:4]), _BACKGROUNDS[row[4]], _STYLES[row[5]])
            for row in labels.tolist()]


# ----------------------------------------------------------------------------- domain CLIP

def tokenizer():
    """The MiniLM WordPiece tokenizer the domain CLIP reads captions with."""
    from transformers import AutoTokenizer

    from pipeline.text import encoder_dir

    return AutoTokenizer.from_pretrained(encoder_dir("minilm"), local_files_only=True)


def build_clip(size: int, tok, width: int = 64, layers: int = 2):
    """A small randomly initialised `CLIPModel`: ViT on S x S images (patch 4) + causal text tower."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    common = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                  num_attention_heads=max(1, width // 32))
    text = CLIPTextConfig(vocab_size=tok.vocab_size, max_position_embeddings=CLIP_MAX_TOKENS,
                          bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                          pad_token_id=tok.pad_token_id, **common)
    vision = CLIPVisionConfig(image_size=size, patch_size=4, num_channels=3, **common)
    cfg = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=width)
    return CLIPModel(cfg)


def caption_pair(rng: random.Random) -> tuple[world.Scene, str]:
    """A training pair: a random scene with its full caption, or a T2I sample with its prompt."""
    if rng.random() < 0.5:
        scene = random_scene(rng, rng.randint(1, 3))
        return scene, world.describe(scene)
    bucket = rng.choice(["t2i", "realism"])
    # Seeds >= 10**12 lie far beyond every make_bucket range (< 1.4 * 10**9).
    sample = world.make_sample(bucket, rng.choice(world.T2I_CATEGORIES), 10**12 + rng.randrange(10**12))
    return sample.target, sample.prompt


# ----------------------------------------------------------------------------- the evaluator

class Evaluator:
    """A trained scene parser + domain CLIP; every method takes (B, 3, S, S) in [-1, 1] or uint8."""

    def __init__(self, parser: SceneParser, clip, tok, chunk: int = 512):
        self.parser, self.clip, self.tok, self.chunk = parser.eval(), clip.eval(), tok, chunk
        self.device = next(parser.parameters()).device

    def to(self, device) -> Evaluator:
        """Move both models to `device`."""
        self.parser.to(device), self.clip.to(device)
        self.device = torch.device(device)
        return self

    def _images(self, images) -> Tensor:
        x = to_tensor(images) if isinstance(images, np.ndarray) else images
        size = self.parser.cfg.size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, size, size):
            raise ValueError(f"evaluator: expected images (B, 3, {size}, {size}), got {tuple(x.shape)}")
        return x.float()

    @torch.no_grad()
    def _chunked(self, fn, images, *lists) -> Tensor:
        """fn over chunks of the images (and of `lists` alongside), concatenated on the CPU."""
        x, c = self._images(images), self.chunk
        return torch.cat([fn(x[i:i + c].to(self.device), *(v[i:i + c] for v in lists)).cpu()
                          for i in range(0, max(len(x), 1), c)])  # one empty chunk if no images

    def parse(self, images) -> list[world.Scene]:
        """The argmax scene of each image."""
        return decode(self._chunked(lambda x: predict(self.parser, x), images))

    def realism(self, images) -> Tensor:
        """(B,) the parser's probability that each image is in style "real"."""
        return self._chunked(lambda x: self.parser(x)[2].softmax(-1)[:, _STYLES.index("real")], images)

    def features(self, images) -> Tensor:
        """(B, F) the parser's penultimate activations: FID's feature space."""
        return self._chunked(self.parser.features, images)

    def clip_score(self, images, texts: list[str]) -> Tensor:
        """(B,) 100 * cos(image embed, text embed) of each (image, text) pair."""
        if len(texts) != len(images):
            raise ValueError(f"clip_score: {len(images)} images but {len(texts)} texts")
        return self._chunked(self._clip_pairs, images, list(texts)) if texts else torch.zeros(0)

    def _clip_pairs(self, x: Tensor, texts: list[str]) -> Tensor:
        tokens = self.tok(texts, padding=True, truncation=True, max_length=CLIP_MAX_TOKENS,
                          return_tensors="pt").to(self.device)
        img = self.clip.get_image_features(pixel_values=x).pooler_output
        return 100 * F.cosine_similarity(img, self.clip.get_text_features(**tokens).pooler_output)

    def save(self, folder: str | Path) -> None:
        """Write the self-describing evaluator folder atomically (temp folder, then rename)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            torch.save(self.parser.state_dict(), tmp / "parser.pt")
            (tmp / "parser.json").write_text(json.dumps(asdict(self.parser.cfg), indent=1))
            self.clip.save_pretrained(tmp / "clip")
            self.tok.save_pretrained(tmp / "tokenizer")
            replace_dir(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> Evaluator:
        """Rebuild an evaluator from a folder written by `save` (no params.yaml needed)."""
        from transformers import AutoTokenizer, CLIPModel

        folder = Path(folder)
        for name in ("parser.pt", "parser.json", "clip/config.json", "tokenizer"):
            if not (folder / name).exists():
                raise FileNotFoundError(f"evaluator {folder}: missing {name}; not an evaluator folder")
        raw = json.loads((folder / "parser.json").read_text())
        parser = SceneParser(ParserConfig(**{**raw, "widths": tuple(raw["widths"])}))
        parser.load_state_dict(torch.load(folder / "parser.pt", map_location="cpu", weights_only=True))
        clip = CLIPModel.from_pretrained(folder / "clip", local_files_only=True)
        tok = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        return cls(parser, clip, tok).to(device)


# ----------------------------------------------------------------------------- training

MIN_SCENE_ACCURACY = 0.99  # DESIGN §7: below it the metrics mean nothing and the stage fails


def _fit(model: nn.Module, loss_at, steps: int, lr: float, name: str) -> None:
    """AdamW, warm-up + cosine decay (not `train.fit`: no schedule there, and its EMA skips BN stats)."""
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


def train_parser(cfg, size: int, render: TileRenderer, device: torch.device) -> SceneParser:
    """Train the scene parser on fresh augmented renders (`cfg` = params `eval.evaluator`)."""
    torch.manual_seed(cfg.seed)
    parser = SceneParser(ParserConfig(size=size)).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)

    def loss_at(step: int) -> Tensor:
        rng = random.Random(f"parser/{cfg.seed}/{step}")
        scenes = [random_scene(rng) for _ in range(cfg.batch_size)]
        x = augment(to_tensor(render(scenes)), gen)
        return parser_loss(parser, x.to(device), scene_labels(scenes).to(device))

    _fit(parser, loss_at, cfg.parser_steps, cfg.lr, "parser")
    return parser


def train_clip(cfg, size: int, render: TileRenderer, device: torch.device):
    """Train the domain CLIP contrastively on fresh (render, caption) pairs; return (clip, tok)."""
    torch.manual_seed(cfg.seed)
    tok = tokenizer()
    clip = build_clip(size, tok).to(device)
    gen = torch.Generator().manual_seed(cfg.seed + 1)

    def loss_at(step: int) -> Tensor:
        rng = random.Random(f"clip/{cfg.seed}/{step}")
        scenes, texts = zip(*(caption_pair(rng) for _ in range(cfg.batch_size)))
        tokens = tok(list(texts), padding=True, truncation=True, max_length=CLIP_MAX_TOKENS,
                     return_tensors="pt").to(device)
        x = augment(to_tensor(render(list(scenes))), gen)
        return clip(pixel_values=x.to(device), return_loss=True, **tokens).loss

    _fit(clip, loss_at, cfg.clip_steps, cfg.lr, "clip")
    return clip, tok


@torch.no_grad()
def parse_accuracy(parser: SceneParser, cfg, render: TileRenderer) -> dict:
    """Accuracies on `cfg.holdout` clean renders of held-out scenes with the world's 1..3 objects."""
    rng = random.Random(f"holdout/{cfg.seed}")
    scenes = [random_scene(rng, rng.randint(1, 3)) for _ in range(cfg.holdout)]
    x, device = to_tensor(render(scenes)), next(parser.parameters()).device
    pred = [predict(parser.eval(), x[i:i + 500].to(device)).cpu() for i in range(0, len(x), 500)]
    ok = torch.cat(pred) == scene_labels(scenes)  # (N, 6)
    return {"scene_accuracy": ok.all(1).float().mean().item(),
            "cell_accuracy": ok[:, :4].float().mean().item(),
            "background_accuracy": ok[:, 4].float().mean().item(),
            "style_accuracy": ok[:, 5].float().mean().item()}


def clip_sanity(ev: Evaluator, cfg, render: TileRenderer) -> dict:
    """Mean CLIP score of held-out (render, caption) pairs, matching and shuffled."""
    rng = random.Random(f"clip-holdout/{cfg.seed}")
    pairs = [caption_pair(rng) for _ in range(min(cfg.holdout, 1000))]
    x, texts = to_tensor(render([s for s, _ in pairs])), [c for _, c in pairs]  # shuffled = rolled
    return {"clip_match": ev.clip_score(x, texts).mean().item(),
            "clip_shuffled": ev.clip_score(x, texts[1:] + texts[:1]).mean().item()}


def train_evaluator(cfg, out: Path, min_scene_accuracy: float | None = None) -> dict:
    """Train, check and save the evaluator to `out`; return its metrics (module docstring).

    Raises, writing nothing, once the held-out scene accuracy is below `min_scene_accuracy`
    (None: params `eval.evaluator.min_scene_accuracy` if the config has it, else the module's).
    """
    if min_scene_accuracy is None:
        min_scene_accuracy = getattr(cfg.eval.evaluator, "min_scene_accuracy", MIN_SCENE_ACCURACY)
    device, ev_cfg, size = setup_compute(cfg.compute), cfg.eval.evaluator, cfg.world.size
    tic = time.perf_counter()
    render = TileRenderer(size)
    parser = train_parser(ev_cfg, size, render, device)
    metrics = parse_accuracy(parser, ev_cfg, render)
    if metrics["scene_accuracy"] < min_scene_accuracy:  # checked before the CLIP's longer training
        raise RuntimeError(f"evaluator: held-out scene accuracy {metrics['scene_accuracy']:.4f} < "
                           f"{min_scene_accuracy}, so the metrics would mean nothing (raise "
                           f"eval.evaluator.parser_steps); nothing was written. {metrics}")
    ev = Evaluator(parser, *train_clip(ev_cfg, size, render, device))
    metrics["train_seconds"] = round(time.perf_counter() - tic, 1)
    ev.save(out)
    return metrics | clip_sanity(ev, ev_cfg, render)
