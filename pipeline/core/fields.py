"""Velocity fields: the Field contract, the condition they read, and the operators on them.

A field is anything callable as ``field(x, t, cond) -> v`` with ``v.shape == x.shape``, ``x``
(B, C, H, W), ``t`` (B,) float in [0, 1] (time convention: ``pipeline.core.flow``). Every capability
source of DanceOPD is a field: a frozen model (``ModelField``), classifier-free guidance on a field
(``GuidedField``) and a per-sample choice or average of fields (``RoutedField``). Operators take
any field and never inspect which kind it is, so they compose: ``GuidedField(RoutedField(...))``.

CFG convention (DESIGN §2): ``v = v_null + s * (v_cond - v_null)``; ``s = 1`` is the plain
conditional field. The null condition is the empty prompt's embedding; for an edit it keeps the
source image, so guidance strengthens the instruction, not the image conditioning. An edit may
also be guided by its source, InstructPix2Pix's two scales (Brooks et al. 2023, eq. 3):
``v = v(∅, ∅) + s_I (v(src, ∅) - v(∅, ∅)) + s_T (v(src, txt) - v(src, ∅))``, the image null a zero
source (what SFT's source dropout trains); ``s_I = 1`` is the single-scale CFG above.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, Sequence

import torch
from torch import Tensor, nn


class Field(Protocol):
    """The velocity-field contract: v = field(x, t, cond), v.shape == x.shape."""

    def __call__(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor: ...


def _cat(a: Tensor | None, b: Tensor | None, name: str) -> Tensor | None:
    if (a is None) != (b is None):
        raise ValueError(f"Cond.cat: {name} is None on one side only")
    return None if a is None else torch.cat([a, b])


def _batched(value: Tensor, batch: int, dims: int) -> Tensor:
    """Give an unbatched (dims-d) or batch-1 tensor a batch of ``batch`` (a broadcast view)."""
    if value.dim() == dims:
        value = value.unsqueeze(0)
    return value.expand(batch, *value.shape[1:])


@dataclass
class Cond:
    """A batch of conditions: text (and optionally a source image) plus the routing label."""

    text: Tensor  # (B, L, D) per-token text embeddings, padding zeroed
    pooled: Tensor  # (B, Dp) pooled text embedding
    source: Tensor | None  # (B, C, H, W) edit source in the model's space (pixels in [-1, 1]); None for T2I
    route: Tensor | None = None  # (B,) long: which field supervises each sample

    def __post_init__(self):
        # A batch-size mismatch would otherwise surface deep inside a backbone or a scatter.
        for name in ("pooled", "source", "route"):
            value = getattr(self, name)
            if value is not None and len(value) != len(self.text):
                raise ValueError(f"Cond: {name} has batch {len(value)}, text has {len(self.text)}")

    def __len__(self) -> int:
        return len(self.text)

    def has_source(self) -> Tensor:
        """(B,) bool: which samples carry an edit source (a prompt-only row's source is exactly 0.0,
        what the backbone feeds for ``source=None``; `pipeline.core.batches`)."""
        if self.source is None:
            return torch.zeros(len(self), dtype=torch.bool, device=self.text.device)
        return self.source.flatten(1).ne(0).any(dim=1)

    def __getitem__(self, idx) -> Cond:
        """The sub-batch at ``idx`` (bool mask, index tensor, slice; an int keeps the batch dim)."""
        return self._map(lambda v: v[[idx] if isinstance(idx, int) else idx])

    def cat(self, other: Cond) -> Cond:
        """This batch followed by ``other`` (e.g. cond and null, evaluated in one call)."""
        return Cond(
            text=torch.cat([self.text, other.text]),
            pooled=torch.cat([self.pooled, other.pooled]),
            source=_cat(self.source, other.source, "source"),
            route=_cat(self.route, other.route, "route"),
        )

    def with_text(self, text: Tensor, pooled: Tensor) -> Cond:
        """The same samples, other text: (L, D), (1, L, D) or (B, L, D); pooled likewise."""
        text = _batched(text.to(self.text), len(self), dims=2)  # (B, L, D)
        pooled = _batched(pooled.to(self.pooled), len(self), dims=1)  # (B, D)
        return replace(self, text=text, pooled=pooled)

    def to(self, device: torch.device | str) -> Cond:
        """This condition with every tensor on ``device``."""
        return self._map(lambda v: v.to(device))

    def _map(self, fn) -> Cond:
        """Apply ``fn`` to every tensor, keeping None as None."""
        fields = ("text", "pooled", "source", "route")
        return Cond(*(None if (v := getattr(self, k)) is None else fn(v) for k in fields))


class ModelField:
    """A backbone (``forward(x, t, cond) -> v``) frozen for use as a teacher field.

    Deliberately not an ``nn.Module``: a module holding it would otherwise register the teacher's
    weights as its own (optimiser, state_dict, EMA) — a teacher is never stacked on the student.
    """

    def __init__(self, model: nn.Module):
        self.model = model.eval().requires_grad_(False)

    def __call__(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        with torch.no_grad():
            return self.model(x, t, cond)


class GuidedField:
    """Classifier-free guidance on any field: v_null + scale (v_cond - v_null); with `image_scale`
    != 1, InstructPix2Pix's two scales for the edits' source (module docstring)."""

    def __init__(self, field: Field, scale: float, null_text: Tensor, null_pooled: Tensor, image_scale: float = 1.0):
        self.field = field
        self.scale = float(scale)
        self.image_scale = float(image_scale)
        self.null_text = null_text  # (L, D) the empty prompt's token embeddings
        self.null_pooled = null_pooled  # (D,) the empty prompt's pooled embedding

    def __call__(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        two_scale = self.image_scale != 1.0 and cond.source is not None
        if self.scale == 1.0 and not two_scale:  # the guided field *is* the conditional one; save the nulls
            return self.field(x, t, cond)
        # The text null keeps the source image (and route) and drops only the text.
        null = cond.with_text(self.null_text, self.null_pooled)
        if not two_scale:
            v = self.field(torch.cat([x, x]), torch.cat([t, t]), cond.cat(null))  # (2B, C, H, W)
            v_cond, v_null = v.chunk(2)  # (B, C, H, W) each
            return v_null + self.scale * (v_cond - v_null)
        none = replace(null, source=torch.zeros_like(cond.source))  # neither text nor source
        v = self.field(torch.cat([x, x, x]), torch.cat([t, t, t]), cond.cat(null).cat(none))  # (3B, C, H, W)
        v_cond, v_source, v_none = v.chunk(3)  # (B, C, H, W) each
        return v_none + self.image_scale * (v_source - v_none) + self.scale * (v_cond - v_source)


class RoutedField:
    """Per-sample choice of one field by ``cond.route`` (hard) or the weighted average (soft).

    ``weights`` apply to soft mode only (default uniform; normalised to sum 1).
    """

    def __init__(
        self, fields: Sequence[Field], mode: str = "hard", weights: Sequence[float] | None = None
    ):
        if mode not in ("hard", "soft"):
            raise ValueError(f"RoutedField: unknown mode {mode!r}; expected 'hard' or 'soft'")
        if not fields:
            raise ValueError("RoutedField: needs at least one field")
        weights = [1.0] * len(fields) if weights is None else [float(w) for w in weights]
        if len(weights) != len(fields) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"RoutedField: weights {weights}: need one >= 0 per field, not all 0")
        self.fields = list(fields)
        self.mode = mode
        self.weights = [w / sum(weights) for w in weights]

    def __call__(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        if self.mode == "soft":
            return sum(w * field(x, t, cond) for w, field in zip(self.weights, self.fields))
        return self._hard(x, t, cond)

    def _hard(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """Each field evaluated on its own samples only, scattered back into batch order."""
        route = cond.route
        if route is None:
            raise ValueError("RoutedField: hard routing needs cond.route (got None)")
        if len(route) and (route.min() < 0 or route.max() >= len(self.fields)):
            # An unrouted sample would leave its row of the output uninitialised.
            raise ValueError(f"RoutedField: route values must be in [0, {len(self.fields)})")
        v = None  # (B, C, H, W) in the fields' output dtype: bf16 under autocast, whatever x is
        for k, field in enumerate(self.fields):
            mask = route == k  # (B,) bool
            if mask.any():
                out = field(x[mask], t[mask], cond[mask])  # (B_k, C, H, W)
                if v is None:
                    v = x.new_empty(x.shape, dtype=out.dtype)
                v[mask] = out.to(v.dtype)
        return torch.empty_like(x) if v is None else v
