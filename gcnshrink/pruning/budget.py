"""Rate semantics: what a rate means, the budget it gives, and the scores methods rank.

``rate`` r is the fraction of the prunable weights *in scope* that are removed. In scope: every
weight tensor the model's unit graph marks prunable (graph convolutions, attention projections,
temporal convolutions, residual projections, the fully connected layer and the classifier), minus
the tensors matched by ``exclude`` glob patterns. Biases, norms and joint-indexed tensors (adjacency,
edge importance) are never in scope. With ``scope="global"`` one budget c = n − round(r·n) is shared by
all tensors in scope (n their total size); with ``scope="layer"`` each tensor t keeps
c_t = n_t − round(r·n_t). The rounding is torch.nn.utils.prune's, so realized rates match it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gcnshrink.errors import GcnshrinkError

SCOPES = ("global", "layer")


@dataclass(frozen=True)
class PruneSpec:
    """What the user asked for: the rate(s), the scope and the tensors kept out of it.

    A single-rate method trains for ``rates[0]``; a multi-rate method trains for all of ``rates``
    and can serve others. ``allow_collapse`` lets magnitude methods empty a whole layer (the
    benchmarks show MP collapsing) instead of refusing.
    """

    rates: tuple[float, ...]
    scope: str = "global"
    exclude: tuple[str, ...] = ()
    allow_collapse: bool = False

    def __post_init__(self) -> None:
        rates = (self.rates,) if isinstance(self.rates, int | float) else tuple(self.rates)
        object.__setattr__(self, "rates", rates)
        object.__setattr__(self, "exclude", tuple(self.exclude))

    @property
    def rate(self) -> float:
        """The one rate of a single-rate request."""
        if len(self.rates) != 1:
            raise GcnshrinkError(f"one rate expected, got {len(self.rates)}")
        return self.rates[0]

    def with_rate(self, rate: float) -> PruneSpec:
        return PruneSpec((rate,), self.scope, self.exclude, self.allow_collapse)

    def validate(self) -> None:
        if not self.rates:
            raise GcnshrinkError("no rate given")
        for rate in self.rates:
            check_rate(rate, "--rate" if len(self.rates) == 1 else "each rate of --rates")
        if len(set(self.rates)) != len(self.rates):
            raise GcnshrinkError(f"rates repeat: {', '.join(f'{r:g}' for r in self.rates)}")
        if self.scope not in SCOPES:
            raise GcnshrinkError(f"--scope must be 'global' or 'layer', got {self.scope!r}")


def check_rate(rate: object, flag: str = "--rate") -> float:
    if (
        isinstance(rate, bool)
        or not isinstance(rate, int | float)
        or math.isnan(rate)
        or not 0.0 < rate < 1.0
    ):
        raise GcnshrinkError(f"{flag} must be a number strictly between 0 and 1, got {rate}")
    return float(rate)


def budget_per_tensor(sizes: dict[str, int], rate: float) -> dict[str, int]:
    return {name: n - round(rate * n) for name, n in sizes.items()}


def global_budget(sizes: dict[str, int], rate: float) -> int:
    total = sum(sizes.values())
    return total - round(rate * total)


def budget(sizes: dict[str, int], rate: float, scope: str) -> int:
    """Kept weights in scope at ``rate``: one global budget, or the sum of per-tensor budgets."""
    if scope == "layer":
        return sum(budget_per_tensor(sizes, rate).values())
    return global_budget(sizes, rate)


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP (Lee et al. 2021): w² over the sum of w'² of the weights of the same tensor at least as
    large. Scale-free across tensors; every tensor's largest weight scores 1."""
    sq = weight.reshape(-1).pow(2)
    order = torch.argsort(sq, descending=True, stable=True)
    denominators = torch.empty_like(sq)
    denominators[order] = torch.cumsum(sq[order], dim=0)
    return (sq / denominators.clamp(min=torch.finfo(sq.dtype).tiny)).view_as(weight)


SCORES = ("magnitude", "lamp")


def score_weights(latent: dict[str, torch.Tensor], score: str) -> dict[str, torch.Tensor]:
    r"""What a magnitude criterion ranks: raw \|w\| on one global scale, or LAMP scores."""
    if score == "lamp":
        return {n: lamp_scores(w.detach()) for n, w in latent.items()}
    return {n: w.detach().abs() for n, w in latent.items()}


def topk_masks(scores: dict[str, torch.Tensor], rate: float, scope: str) -> dict[str, torch.Tensor]:
    """Keep the highest scores: exactly the budget (global or per tensor). Ties broken by position."""
    sizes = {k: v.numel() for k, v in scores.items()}
    if scope == "layer":
        out = {}
        for name, c in budget_per_tensor(sizes, rate).items():
            flat = scores[name].reshape(-1)
            keep = torch.zeros_like(flat, dtype=torch.bool)
            keep[torch.topk(flat, c, sorted=False).indices] = True
            out[name] = keep.view_as(scores[name])
        return out
    c = global_budget(sizes, rate)
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.topk(flat, c, sorted=False).indices] = True
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = keep[start : start + s.numel()].view_as(s)
        start += s.numel()
    return out


def realized_rate(masks: dict[str, torch.Tensor]) -> float:
    """Fraction of in-scope weights removed by these keep-masks."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / max(total, 1)
