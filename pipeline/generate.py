"""Sample a trained model from the command line: text-to-image, or an edit of an image.

    python -m pipeline.generate --prompt "a red circle above a blue square" --out out.png
    python -m pipeline.generate --task local_edit --image source.png --prompt "make the circle green"

The model folder describes itself (`sampling.json`, `scheduler/`): resolution, shift, text
encoder (MiniLM, or a pretrained SD3-family model's own), its space (pixels, or the latents of a
VAE: the source is encoded and the output decoded through it) and how the source image enters;
params.yaml is never read. Without --task, the router (--router) picks the task from the prompt.
An edit needs --image, an image of the model's size; text-to-image takes none.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.core import backbone, checkpoint
from pipeline.core.fields import Cond
from pipeline.core.router import Router
from pipeline.curation import images, sd3_text
from pipeline.data import outputs, shards, world
from pipeline.eval.sample import generate

DEFAULT_MODEL = Path("data/models/students/t2i_edit/danceopd-s0")  # DanceOPD of Table 2A (T2I + edit)
DEFAULT_ROUTER = Path("data/models/router")


class UsageError(ValueError):
    """A request the model cannot serve; the message says what to change."""


def read_image(path: Path, resolution: int) -> torch.Tensor:
    """(1, 3, S, S) in [-1, 1] from an RGB image file of the model's size."""
    try:
        pixels = images.read_rgb(path)
    except images.ImageError as err:
        raise UsageError(f"--image {err}") from err
    if pixels.shape[:2] != (resolution, resolution):
        raise UsageError(f"--image {path}: is {pixels.shape[1]}x{pixels.shape[0]}; the model takes "
                         f"{resolution}x{resolution} (sampling.json: resolution)")
    return shards.to_tensor(np.array(pixels)[None])


def choose_task(task: str | None, pooled: torch.Tensor, router_dir: Path) -> str:
    """The task asked for, else the router's prediction from the prompt."""
    if task is not None:
        return task
    if not (router_dir / "router.json").is_file():
        raise UsageError(f"no --task given and no router at {router_dir} to choose one; pass --task or --router")
    router = Router.load(router_dir)
    return router.classes[int(router.predict(pooled)[0])]


def run(args: argparse.Namespace) -> dict:
    """Sample one image as the arguments ask; return what was done (also printed as JSON)."""
    if not (args.model / "config.json").is_file():
        raise UsageError(f"--model {args.model}: not a model folder (train it with `dvc repro`, or pass --model)")
    sampling = checkpoint.read_sampling(args.model)
    encoder_info = sampling["text_encoder"]
    encoder = sd3_text.load_encoder(encoder_info["encoder"], encoder_info["max_tokens"],
                                    pretrained=encoder_info.get("folder", ""))  # a pretrained model's own encoders
    token_states, pooled = (torch.from_numpy(a).float() for a in encoder.encode([args.prompt]))
    null = tuple(torch.from_numpy(a).float() for a in encoder.null())
    task = choose_task(args.task, pooled, args.router)
    resolution = sampling["resolution"]
    if task == "t2i" and args.image is not None:
        raise UsageError("--image: text-to-image takes no source image; drop --image or pick an edit --task")
    if task != "t2i" and args.image is None:
        raise UsageError(f"--task {task}: an edit needs --image, the {resolution}x{resolution} image to edit")
    space = checkpoint.space([args.model])  # pixels, or a VAE's latents
    shape = (space.channels, resolution // space.downsample, resolution // space.downsample)
    source = space.encode(read_image(args.image, resolution)) if task != "t2i" else torch.zeros(1, *shape)
    try:
        model = backbone.load(args.model).eval()
    except (OSError, ValueError, KeyError, RuntimeError) as err:  # a damaged folder: diffusers' own words
        raise UsageError(f"--model {args.model}: cannot load its weights ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]}); retrain it (`dvc repro`) or `dvc checkout` it") from err
    cond = Cond(text=token_states, pooled=pooled, source=source)
    out = generate(model, cond, steps=args.steps, shift=sampling["shift"], seed=args.seed, guidance=args.guidance,
                   null=null, image_shape=shape)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(shards.to_uint8(space.decode(out))[0]).save(args.out)
    return {"task": task, "prompt": args.prompt, "model": str(args.model), "steps": args.steps,
            "guidance": args.guidance, "seed": args.seed, "out": str(args.out)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", required=True, help="the text prompt, or the edit instruction")
    p.add_argument("--task", choices=world.TASKS, default=None, help="default: the router's choice")
    p.add_argument("--image", type=Path, default=None, help="edits: the source image (the model's size)")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"a model folder (default {DEFAULT_MODEL})")
    p.add_argument("--router", type=Path, default=DEFAULT_ROUTER, help="the router that picks a missing --task")
    p.add_argument("--steps", type=int, default=16, help="Euler steps (NFE without guidance)")
    p.add_argument("--guidance", type=float, default=1.0, help="CFG scale; 1 = none (a student absorbs it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("out.png"))
    return p


MAX_STEPS = 1000  # far more than any sampler here needs; a typo's 10**8 would run for hours


def check(args: argparse.Namespace) -> None:
    """The arguments that can be checked before anything loads or samples; a `UsageError` naming one."""
    if not 1 <= args.steps <= MAX_STEPS:
        raise UsageError(f"--steps must be between 1 and {MAX_STEPS} (got {args.steps})")
    if not (math.isfinite(args.guidance) and args.guidance > 0):
        raise UsageError(f"--guidance a finite number > 0 (got {args.guidance})")
    if not 0 <= args.seed < 2 ** 63:
        raise UsageError(f"--seed must be between 0 and 2**63 - 1 (got {args.seed})")
    if args.out.suffix.lower() not in Image.registered_extensions():
        raise UsageError(f"--out {args.out}: name an image file (.png, .jpg, ...), so its format is known")
    try:
        outputs.ensure_writable(args.out)
    except PermissionError as err:
        raise UsageError(f"--out {err}") from err


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        check(args)
        print(json.dumps(run(args)))
    except (UsageError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
