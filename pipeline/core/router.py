"""The task router: a small MLP that predicts a prompt's task (``world.TASKS``) from its text.

It reads the frozen text encoder's pooled embedding (B, D), already stored in the shards, so it
never runs the encoder; its prediction is the route of a distillation sample when
``routing.source`` is ``router``, and `pipeline.generate`'s task when none is given. A saved router
is a folder holding ``router.json`` (dims, class names) and ``router.safetensors``, written
atomically, so loading never reads params.yaml. It is trained by `pipeline.train.router`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from pipeline.core.batches import TensorSet
from pipeline.core.fields import Cond
from pipeline.data import world
from pipeline.data.outputs import atomic_dir

CONFIG = "router.json"
WEIGHTS = "router.safetensors"
HIDDEN = 128  # far more than 3 classes of templated prompts need; still ~50k parameters


class Router(nn.Module):
    """pooled text embedding (B, D) -> task logits (B, len(classes))."""

    def __init__(self, dim: int, classes: tuple[str, ...] = world.TASKS, hidden: int = HIDDEN):
        super().__init__()
        self.dim, self.classes, self.hidden = dim, tuple(classes), hidden
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, len(self.classes)))

    def forward(self, pooled: Tensor) -> Tensor:
        return self.net(pooled)  # (B, n_classes)

    @torch.no_grad()
    def predict(self, pooled: Tensor) -> Tensor:
        """(B,) long class indices for pooled embeddings (B, D), on the input's device."""
        device = next(self.parameters()).device
        return self(pooled.to(device, torch.float32)).argmax(-1).to(pooled.device)

    def route(self, cond: Cond) -> Tensor:
        """The predicted task (an index into ``classes``) of each sample of a batch."""
        return self.predict(cond.pooled)

    def accuracy(self, tensors: TensorSet) -> float:
        """The share of ``tensors`` whose task is predicted right."""
        return (self.predict(tensors.pooled) == tensors.task).float().mean().item()

    def save(self, folder: str | Path) -> None:
        """Write ``folder`` atomically: weights + the config that rebuilds the router."""
        folder = Path(folder)
        config = {"dim": self.dim, "hidden": self.hidden, "classes": list(self.classes)}
        with atomic_dir(folder) as tmp:
            (tmp / CONFIG).write_text(json.dumps(config, indent=1))
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, tmp / WEIGHTS)

    @classmethod
    def load(cls, folder: str | Path) -> Router:
        """Rebuild a saved router; an error naming the folder if it is not one."""
        folder = Path(folder)
        if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
            raise FileNotFoundError(f"{folder}: not a router (needs {CONFIG} and {WEIGHTS})")
        config = json.loads((folder / CONFIG).read_text())
        router = cls(config["dim"], tuple(config["classes"]), config["hidden"])
        router.load_state_dict(load_file(folder / WEIGHTS))
        return router.eval()
