"""The evaluator every metric is computed with: a scene parser and a domain CLIP (DESIGN.md §7).

Conventions (this module owns them):

- Inputs are (B, 3, S, S) float images in [-1, 1] (`shards.to_tensor`), S = params `world.resolution`. Neither
  model normalises further: both are trained from scratch on exactly that range.
- Both models measure at the world's grid, side ``G = grid_side(S)``: S itself up to `GRID` (32 px,
  the small world's canvas), else S / k for the largest k <= S / 32 dividing both cells' side, reached
  by k x k box averaging (`to_grid`), for the renders they are trained on and for every image they
  measure alike. So a 512-px model's samples cost the evaluator what 32-px ones do (a ViT with
  patch 4 on 512 px would attend over 16,384 tokens), and the default (S = 32) is untouched.
- Parser labels: per cell (row-major, as `world`) one of `CONTENTS` (index 0 = empty, then every
  (shape, colour)); the background is an index into `world.BACKGROUNDS` and the style into
  `world.STYLES`. The background is the scene's, not the rendered colour (an inverted white scene
  shows black and is labelled white). `parse` decodes the argmax of each head into a `world.Scene`.
- Realism reward = the parser's probability of style "real". KID and FID features = the parser's
  penultimate layer (`features`, (B, F)), since no Inception weights exist offline; the real
  reference is the cached features of `eval.evaluator.reference` real renders of T2I scenes of the
  world's `reference` split (`reference`), disjoint from the test targets and far more than any one
  evaluation samples.
- CLIP score = 100 * cos(image embed, text embed) of the domain CLIP, per pair (no clamp at 0).
  Its text tower uses the MiniLM WordPiece tokenizer; CLS/SEP serve as CLIP's BOS/EOS, so CLIP's
  pooling takes the [SEP] state (the tower is causal, so [SEP] has seen the whole caption).
- How it is trained (fresh renders, never the curated shards) is `pipeline.eval.evaluator_training`;
  this module is only the instrument, so evaluating never imports a training module.
- A saved evaluator is a folder: `parser.pt` + `parser.json` (its config), `clip/`
  (`save_pretrained`), `tokenizer/` and `reference.npy`; it loads without params.yaml and is
  written atomically.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.data import world
from pipeline.data.outputs import atomic_dir
from pipeline.data.shards import to_tensor

CONTENTS = (None,) + tuple(world.Obj(s, c) for s in world.SHAPES for c in world.COLORS)
_CONTENT_INDEX = {c: i for i, c in enumerate(CONTENTS)}
BACKGROUNDS, STYLES = list(world.BACKGROUNDS), list(world.STYLES)
REFERENCE = "reference.npy"  # the real reference features, in the evaluator's folder
CLIP_MAX_TOKENS = 64  # the longest caption (4 objects, describe) is ~45 WordPiece tokens
GRID = 32  # px: the side the evaluator measures at (the small world's canvas); larger images are box-averaged


def grid_side(resolution: int) -> int:
    """The side the evaluator measures images of `resolution` px at: resolution / k for the largest
    k <= resolution / GRID that divides a cell's side (resolution / 2), so every k x k box lies in one cell."""
    k = max(d for d in range(1, max(1, resolution // GRID) + 1) if (resolution // 2) % d == 0)
    return resolution // k


def to_grid(x: Tensor, side: int) -> Tensor:
    """(B, 3, S, S) float -> (B, 3, side, side) by k x k box averaging (k = S / side); as it is when S = side."""
    if x.shape[-1] == side:
        return x
    if x.shape[-1] % side or x.shape[-2] != x.shape[-1]:
        raise ValueError(f"evaluator: images of {tuple(x.shape[-2:])} px do not box-average to its {side}-px grid")
    return F.avg_pool2d(x, x.shape[-1] // side)


# ----------------------------------------------------------------------------- labels

def scene_labels(scenes: list[world.Scene]) -> Tensor:
    """(B, 6) long: four cell contents, background, style."""
    rows = [[_CONTENT_INDEX[c] for c in s.cells] + [BACKGROUNDS.index(s.background),
                                                     STYLES.index(s.style)] for s in scenes]
    return torch.tensor(rows, dtype=torch.long)


# ----------------------------------------------------------------------------- scene parser

@dataclass(frozen=True)
class ParserConfig:
    """The parser's architecture; saved beside its weights."""
    size: int = 32
    widths: tuple = (32, 64, 96)  # channels after the stem, the 1st and the 2nd downsampling
    hidden: int = 256  # the feature width (FID's feature space)


class SceneParser(nn.Module):
    """CNN: a 2x2-patch stem, two stride-2 stages, then one shared MLP layer feeding the heads."""

    def __init__(self, config: ParserConfig):
        super().__init__()
        self.config = config
        (w0, w1, w2), norm = config.widths, nn.BatchNorm2d
        block = lambda i, o, s: [nn.Conv2d(i, o, 3, s, 1, bias=False), norm(o), nn.ReLU()]  # noqa: E731
        self.trunk = nn.Sequential(
            nn.Conv2d(3, w0, 2, 2), nn.ReLU(),  # (B, w0, S/2, S/2): sees every pixel once
            *block(w0, w0, 1), *block(w0, w1, 2), *block(w1, w1, 1), *block(w1, w2, 2))
        cells = (config.size // 8) ** 2  # (B, w2, S/8, S/8) flattened keeps where things are
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(w2 * cells, config.hidden), nn.ReLU())
        self.cells = nn.Linear(config.hidden, 4 * len(CONTENTS))
        self.background = nn.Linear(config.hidden, len(BACKGROUNDS))
        self.style = nn.Linear(config.hidden, len(STYLES))

    def features(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) in [-1, 1] -> (B, hidden)."""
        return self.neck(self.trunk(x))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Logits: cells (B, 4, len(CONTENTS)), background (B, 4), style (B, 5)."""
        h = self.features(x)
        return self.cells(h).view(-1, 4, len(CONTENTS)), self.background(h), self.style(h)


def predict(parser: SceneParser, x: Tensor) -> Tensor:
    """(B, 6) long argmax labels, in the layout of `scene_labels`."""
    cells, bg, style = parser(x)
    return torch.cat([cells.argmax(-1), bg.argmax(-1, keepdim=True), style.argmax(-1, keepdim=True)], 1)


def decode(labels: Tensor) -> list[world.Scene]:
    """Inverse of `scene_labels`."""
    return [world.Scene(tuple(CONTENTS[i] for i in row[:4]), BACKGROUNDS[row[4]], STYLES[row[5]])
            for row in labels.tolist()]


# ----------------------------------------------------------------------------- domain CLIP

def build_clip(size: int, tok, width: int = 64, layers: int = 2):
    """A small randomly initialised `CLIPModel`: ViT on S x S images (patch 4) + causal text tower."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    common = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                  num_attention_heads=max(1, width // 32))
    text = CLIPTextConfig(vocab_size=tok.vocab_size, max_position_embeddings=CLIP_MAX_TOKENS,
                          bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                          pad_token_id=tok.pad_token_id, **common)
    vision = CLIPVisionConfig(image_size=size, patch_size=4, num_channels=3, **common)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=width)
    return CLIPModel(config)


# ----------------------------------------------------------------------------- the evaluator

class Evaluator:
    """A trained scene parser + domain CLIP; every method takes (B, 3, S, S) in [-1, 1] or uint8."""

    def __init__(self, parser: SceneParser, clip, tok, reference: np.ndarray | None = None, chunk: int = 512):
        self.parser, self.clip, self.tok, self.chunk = parser.eval(), clip.eval(), tok, chunk
        self.reference = reference  # (N, F) features of real T2I renders (the reference split): KID's and FID's
        self.device = next(parser.parameters()).device

    def to(self, device) -> Evaluator:
        """Move both models to `device`."""
        self.parser.to(device), self.clip.to(device)
        self.device = torch.device(device)
        return self

    def _images(self, images) -> Tensor:
        x = to_tensor(images) if isinstance(images, np.ndarray) else images
        size = self.parser.config.size
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] < size or x.shape[-2] != x.shape[-1]:
            raise ValueError(f"evaluator: expected images (B, 3, S, S), S = {size} or a multiple, got {tuple(x.shape)}")
        return to_grid(x.float(), size)

    @torch.no_grad()
    def _chunked(self, fn, images, *lists) -> Tensor:
        """fn over chunks of the images (and of `lists` alongside), concatenated on the CPU; each chunk is
        converted and box-averaged to the grid on its own, so a bucket of large images is never held in float."""
        c = self.chunk
        return torch.cat([fn(self._images(images[i:i + c]).to(self.device), *(v[i:i + c] for v in lists)).cpu()
                          for i in range(0, max(len(images), 1), c)])  # one empty chunk if no images

    def parse(self, images) -> list[world.Scene]:
        """The argmax scene of each image."""
        return decode(self._chunked(lambda x: predict(self.parser, x), images))

    def realism(self, images) -> Tensor:
        """(B,) the parser's probability that each image is in style "real"."""
        return self._chunked(lambda x: self.parser(x)[2].softmax(-1)[:, STYLES.index("real")], images)

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
        with atomic_dir(folder) as tmp:
            torch.save(self.parser.state_dict(), tmp / "parser.pt")
            (tmp / "parser.json").write_text(json.dumps(asdict(self.parser.config), indent=1))
            self.clip.save_pretrained(tmp / "clip")
            self.tok.save_pretrained(tmp / "tokenizer")
            if self.reference is not None:
                np.save(tmp / REFERENCE, self.reference.astype(np.float32), allow_pickle=False)

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> Evaluator:
        """Rebuild an evaluator from a folder written by `save` (no params.yaml needed)."""
        from transformers import AutoTokenizer, CLIPModel

        folder = Path(folder)
        for name in ("parser.pt", "parser.json", "clip/config.json", "tokenizer", REFERENCE):
            if not (folder / name).exists():
                raise FileNotFoundError(f"evaluator {folder}: missing {name}; not an evaluator folder")
        raw = json.loads((folder / "parser.json").read_text())
        parser = SceneParser(ParserConfig(**{**raw, "widths": tuple(raw["widths"])}))
        parser.load_state_dict(torch.load(folder / "parser.pt", map_location="cpu", weights_only=True))
        clip = CLIPModel.from_pretrained(folder / "clip", local_files_only=True)
        tok = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        return cls(parser, clip, tok, np.load(folder / REFERENCE)).to(device)


