"""The masked pruning engine shared by every method.

A method is four things (see DESIGN.md): the parametrization it registers on each prunable weight
(``torch.nn.utils.parametrize``), extra loss terms, a schedule (``on_step``), and the rule that turns
the trained state into hard masks at exactly the requested rate (``final_masks``). Training then needs
no special model code, and the *deliverable* is always a plain zoo model whose weights are the latent
weights times the final hard masks.

Rate semantics
--------------
``rate`` r is the fraction of the prunable weights *in scope* that are removed. In scope: every
weight tensor the model's unit graph marks prunable (graph convolutions, attention projections,
temporal convolutions, residual projections, the fully connected layer and the classifier), minus
the tensors matched by ``exclude`` glob patterns. Biases, norms and joint-indexed tensors (adjacency,
edge importance) are never in scope. With ``scope="global"`` one budget c = n − round(r·n) is shared by
all tensors in scope (n their total size); with ``scope="layer"`` each tensor t keeps
c_t = n_t − round(r·n_t). The rounding is torch.nn.utils.prune's, so realized rates match it.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph import TensorBinding, UnitGraph
from gcnshrink.models import SkeletonModel, create_model


@dataclass
class PruneSpec:
    rate: float
    scope: str = "global"
    exclude: tuple[str, ...] = ()
    allow_collapse: bool = (
        False  # let magnitude methods empty a layer (benchmarks show MP collapsing)
    )

    def validate(self) -> None:
        if (
            not isinstance(self.rate, (int, float))
            or math.isnan(self.rate)
            or not 0.0 < self.rate < 1.0
        ):
            raise GcnshrinkError(
                f"--rate must be a number strictly between 0 and 1, got {self.rate}"
            )
        if self.scope not in ("global", "layer"):
            raise GcnshrinkError(f"--scope must be 'global' or 'layer', got {self.scope!r}")


def split_attr(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_path, _, attr = name.rpartition(".")
    return model.get_submodule(module_path), attr


class HardMask(nn.Module):
    """W -> W ⊙ mask, with the mask a buffer (mp, random, structured)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.float32))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask.to(weight.dtype)


def latent_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The trainable tensor behind ``name``, whether or not it is parametrized."""
    module, attr = split_attr(model, name)
    if parametrize.is_parametrized(module, attr):
        return module.parametrizations[attr].original
    return getattr(module, attr)


def plain_state_dict(
    model: nn.Module, replace: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The model's state dict with parametrization wrappers folded back to plain names."""
    replace = replace or {}
    state = {}
    for key, value in model.state_dict().items():
        if ".parametrizations." in key:
            head, _, tail = key.partition(".parametrizations.")
            attr, _, rest = tail.partition(".")
            if rest != "original":
                continue  # the mask buffers of our parametrizations
            key = f"{head}.{attr}"
        state[key] = replace.get(key, value).detach().clone()
    return state


def budget_per_tensor(sizes: dict[str, int], rate: float) -> dict[str, int]:
    return {name: n - round(rate * n) for name, n in sizes.items()}


def global_budget(sizes: dict[str, int], rate: float) -> int:
    total = sum(sizes.values())
    return total - round(rate * total)


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP (Lee et al. 2021): w² over the sum of w'² of the weights of the same tensor at least as
    large. Scale-free across tensors; every tensor's largest weight scores 1."""
    sq = weight.reshape(-1).pow(2)
    order = torch.argsort(sq, descending=True, stable=True)
    denominators = torch.empty_like(sq)
    denominators[order] = torch.cumsum(sq[order], dim=0)
    return (sq / denominators.clamp(min=torch.finfo(sq.dtype).tiny)).view_as(weight)


SCORES = ("magnitude", "lamp")


def check_score(score: str) -> None:
    if score not in SCORES:
        raise GcnshrinkError(f"--score must be one of {', '.join(SCORES)}, got {score!r}")


def score_weights(latent: dict[str, torch.Tensor], score: str) -> dict[str, torch.Tensor]:
    r"""What a magnitude criterion ranks: raw \|w\| on one global scale, or LAMP scores."""
    if score == "lamp":
        return {n: lamp_scores(w.detach()) for n, w in latent.items()}
    return {n: w.detach().abs() for n, w in latent.items()}


def topk_masks(scores: dict[str, torch.Tensor], spec: PruneSpec) -> dict[str, torch.Tensor]:
    """Keep the highest scores: exactly the budget (global or per tensor). Ties broken by position."""
    sizes = {k: v.numel() for k, v in scores.items()}
    if spec.scope == "layer":
        out = {}
        for name, c in budget_per_tensor(sizes, spec.rate).items():
            flat = scores[name].reshape(-1)
            keep = torch.zeros_like(flat, dtype=torch.bool)
            keep[torch.topk(flat, c, sorted=False).indices] = True
            out[name] = keep.view_as(scores[name])
        return out
    c = global_budget(sizes, spec.rate)
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.topk(flat, c, sorted=False).indices] = True
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = keep[start : start + s.numel()].view_as(s)
        start += s.numel()
    return out


@dataclass
class MethodResult:
    """What a method reports beyond the common fields (recorded in the checkpoint)."""

    options: dict = field(default_factory=dict)


class PruningMethod:
    """Base class. Subclasses set ``name`` and implement ``attach`` and ``final_masks``."""

    name = ""
    magnitude_exact = True  # realized rate equals the request (within rounding) by construction

    def __init__(self, spec: PruneSpec, seed: int = 0, **options):
        spec.validate()
        self.spec = spec
        self.seed = seed
        self.options = options
        self.model: SkeletonModel | None = None
        self.graph: UnitGraph | None = None
        self.targets: list[TensorBinding] = []

    # ---------------------------------------------------------------- set-up
    def select_targets(self, graph: UnitGraph) -> list[TensorBinding]:
        targets = [
            b
            for b in graph.prunable
            if not any(fnmatch.fnmatch(b.name, pat) for pat in self.spec.exclude)
        ]
        if not targets:
            raise GcnshrinkError("--exclude leaves no prunable tensor in scope")
        return targets

    def check_budget(self, sizes: dict[str, int]) -> None:
        """Refuse, before any work, a rate that would leave a tensor on the output path empty."""
        if self.spec.scope == "layer":
            for name, c in budget_per_tensor(sizes, self.spec.rate).items():
                if c == 0:
                    raise GcnshrinkError(
                        f"rate {self.spec.rate} removes every weight of {name} ({sizes[name]} weights); "
                        "lower the rate, use --scope global, or --exclude it"
                    )
        else:
            c = global_budget(sizes, self.spec.rate)
            needed = self.graph.shortest_path_weights()
            if c < needed:
                raise GcnshrinkError(
                    f"rate {self.spec.rate} keeps {c} of {sum(sizes.values())} weights, fewer than the "
                    f"{needed} needed to connect input and output; lower the rate"
                )

    def check_masks_connected(self, masks: dict[str, torch.Tensor]) -> None:
        """Magnitude methods can empty a whole layer at extreme rates; refuse unless allowed."""
        if self.spec.allow_collapse:
            return
        empty = [name for name, m in masks.items() if not bool(m.any())]
        if empty:
            raise GcnshrinkError(
                f"{self.name} at rate {self.spec.rate} removes every weight of {empty[0]}"
                f"{f' and {len(empty) - 1} more tensors' if len(empty) > 1 else ''}: the output would not depend on "
                "the input; try --method tcp, --score lamp, --scope layer or a lower rate"
            )

    def attach(self, model: SkeletonModel, data=None) -> None:
        """Validate, compute initial masks and register parametrizations. Called before training."""
        self.model = model
        self.graph = model.unit_graph()
        self.targets = self.select_targets(self.graph)
        self.check_budget(self.sizes())
        self._attach()

    def _attach(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def sizes(self) -> dict[str, int]:
        return {b.name: latent_weight(self.model, b.name).numel() for b in self.targets}

    def latent(self) -> dict[str, torch.Tensor]:
        return {b.name: latent_weight(self.model, b.name) for b in self.targets}

    def register(self, name: str, parametrization: nn.Module) -> None:
        module, attr = split_attr(self.model, name)
        parametrize.register_parametrization(module, attr, parametrization, unsafe=False)

    # ---------------------------------------------------------------- training hooks
    def extra_loss(self) -> torch.Tensor | None:
        return None

    def on_step(self, progress: float) -> None:
        pass

    def selectable(self) -> bool:
        """Whether the current training state may be selected (its masks meet the rate)."""
        return True

    def status(self) -> str:
        """A short, cheap description of the training state for the progress bar."""
        return "" if self.selectable() else "ramping"

    # ---------------------------------------------------------------- result
    def final_masks(self) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        """Boolean keep-masks at exactly the requested rate from the current state."""
        raise NotImplementedError

    def deliverable(self, masks: dict[str, torch.Tensor] | None = None) -> SkeletonModel:
        """A plain zoo model: latent weights times the final hard masks, no parametrizations."""
        masks = self.final_masks() if masks is None else masks
        # torch.where, not a product: a pruned weight must be +0.0, never -0.0 (sparse files keep bits)
        baked = {
            name: torch.where(masks[name].to(w.device), w.detach(), torch.zeros_like(w))
            for name, w in self.latent().items()
        }
        state = plain_state_dict(self.model, baked)
        fresh = create_model(self.model.arch, **self.model.config)
        fresh.load_state_dict(state)
        device = next(self.model.parameters()).device
        return fresh.to(device).eval()

    def describe(self) -> dict:
        return {"method": self.name, **{k: v for k, v in self.options.items() if v is not None}}


def realized_rate(masks: dict[str, torch.Tensor]) -> float:
    """Fraction of in-scope weights removed by these keep-masks."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / max(total, 1)
