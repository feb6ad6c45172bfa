"""``tcp``: topologically consistent pruning (Sahbi, arXiv 2306.17590 / 2203.13616).

Magnitude pruning at very high rates keeps weights that no kept path from the input reaches
(not *accessible*) or from which no kept path reaches the output (not *co-accessible*). They cost
budget and do nothing. TCP keeps only consistent connections, during training and in the result.

What is implemented (docs/methods.md has the reasoning):

1. Magnitude mask, trainable: M = step(|Ŵ| − τ_t) in the forward pass, with the gradient of
   sigmoid((|Ŵ| − τ_t)/T_t) in the backward pass (a straight-through estimator). τ_t sits just
   below tensor t's smallest weight kept by the exact projection of the dense weights, so training
   starts from it; T_t = temperature·τ_t, the temperature annealed geometrically from
   ``temperature_start`` to ``temperature_end``.
2. Accessibility, the forward "supervisory network", on the model's unit graph: input units are 1;
   a unit's pre-activation is Σ M_e · a_source(e) over its incoming entries plus its signal links
   (identity residuals, flatten); a = h(z) with h(z) = 1[z > 0] forward and 1 − exp(−z) backward.
3. Co-accessibility, the backward network: output units are 1; a unit's pre-activation is
   Σ M_e · c_target(e) over its outgoing entries plus all its links (attention steering included);
   c = h(z).
4. Consistent mask M̃_e = M_e · a_source(e) · c_target(e); the weight used is Ŵ ⊙ M̃. Steps 1-4 are
   :func:`gcnshrink.graph.propagation.propagate` with a straight-through step, run once per
   training step in ``on_step`` (before the forward pass); every tensor's parametrization reads
   its M̃ from there.
5. Loss: cross-entropy + λ·((Σ M̃ − c)/c)², the budget counting consistent connections only.
6. Final hard mask (and every epoch's deliverable): the exact consistent projection
   (:func:`gcnshrink.graph.projection.consistent_budget_masks`) of the trained subnetwork, ranked
   first, then of the other weights by score: exactly c entries, all consistent.

Attention projections (query/key) steer the aggregation rather than carry channels. They are in the
budget like any weight; a query/key entry is consistent when its source unit is accessible and the
head it steers has a co-accessible output unit (steering links carry co-accessibility back, not
accessibility forward).

``tcp-posthoc`` is the cheap variant: magnitude pruning, then inconsistent weights removed and their
budget handed to the next-largest consistent ones, then masked fine-tuning with those fixed masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph import TensorBinding, UnitGraph
from gcnshrink.graph.projection import consistent_budget_masks
from gcnshrink.graph.propagation import AxisUnits, gate, position_matrix, propagate
from gcnshrink.pruning.budget import SCORES, score_weights
from gcnshrink.pruning.method import (
    HardMask,
    MaskParametrization,
    PruningMethod,
    latent_weight,
    option,
)
from gcnshrink.pruning.registry import register_method


# ---------------------------------------------------------------------------- training-time network
def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Value of ``hard``, gradient of ``soft``."""
    return hard + (soft - soft.detach())


def reach_step(z: torch.Tensor) -> torch.Tensor:
    """h(z): 1[z > 0] forward, d(1 − e^(−z)) backward (units with few paths are sensitive)."""
    return straight_through((z > 0).to(z.dtype), 1.0 - torch.exp(-z))


class TopologyController:
    """Computes the consistent masks M̃ of every target tensor from the latent weights.

    Each target tensor t has its own magnitude threshold τ_t (where the exact projection put that
    tensor's boundary); the sigmoid temperature is ``temperature`` × τ_t. Tensors out of scope
    (``--exclude``) count as fully kept.
    """

    def __init__(
        self,
        graph: UnitGraph,
        targets: list[TensorBinding],
        latent: dict[str, torch.Tensor],
        thresholds: dict[str, float],
        temperature: float,
    ):
        self.graph = graph
        self.targets = targets
        self.target_names = {b.name for b in targets}
        self.latent = latent
        self.thresholds = thresholds
        self.temperature = temperature
        self.current: dict[str, torch.Tensor] = {}
        self.units: AxisUnits | None = None

    def magnitude_masks(self) -> dict[str, torch.Tensor]:
        masks = {}
        for name, w in self.latent.items():
            if name not in self.target_names:
                masks[name] = torch.ones_like(w)
                continue
            tau = self.thresholds[name]
            margin = w.abs() - tau
            masks[name] = straight_through(
                (margin > 0).to(w.dtype), torch.sigmoid(margin / (self.temperature * tau))
            )
        return masks

    def compute(self) -> dict[str, torch.Tensor]:
        graph = self.graph
        device = next(iter(self.latent.values())).device
        if self.units is None or self.units.device != device:
            self.units = AxisUnits(graph, device)
        masks = self.magnitude_masks()
        matrices = {b.name: position_matrix(masks[b.name], b) for b in graph.prunable}
        acc, coacc = propagate(graph, matrices, reach_step, self.units)
        self.current = {
            b.name: gate(masks[b.name], b, acc, coacc, self.units.weights[b.name])
            for b in self.targets
        }
        return self.current


class ConsistentMask(MaskParametrization):
    """W -> W ⊙ M̃, M̃ taken from the controller's latest computation."""

    def __init__(self, controller: TopologyController, name: str):
        super().__init__()
        # a plain attribute, not a submodule: every parametrization shares the one controller
        object.__setattr__(self, "controller", controller)
        self.name = name

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        mask = self.controller.current.get(self.name)
        if self.delivered is None and mask is None:  # not computed yet: nothing to mask with
            return weight
        return super().forward(weight)

    def mask(self, weight: torch.Tensor) -> torch.Tensor:
        return self.controller.current[self.name]


# ---------------------------------------------------------------------------- the methods
@dataclass
class ProjectionOptions:
    score: str = option(
        "lamp",
        "Rank weights by magnitude, or by LAMP score (layer-adaptive).",
        choices=SCORES,
    )


class ConsistentProjection(PruningMethod):
    """Shared by tcp and tcp-posthoc: the scores and the exact consistent projection."""

    def dense_masks(self) -> dict[str, torch.Tensor]:
        """Out-of-scope prunable tensors (``--exclude``) are kept whole."""
        names = {b.name for b in self.targets}
        return {
            b.name: torch.ones_like(latent_weight(self.model, b.name), dtype=torch.bool).cpu()
            for b in self.graph.prunable
            if b.name not in names
        }

    def project(self, scores: dict[str, torch.Tensor], rate: float, k_hint=None):
        return consistent_budget_masks(
            self.graph,
            scores,
            self.budget(rate),
            per_tensor_ranks=self.spec.scope == "layer",
            dense_masks=self.dense_masks(),
            k_hint=k_hint,
        )

    def projected_masks(self, rate: float) -> dict[str, torch.Tensor]:
        """The exact consistent projection of the latent weights' scores."""
        return self.project(score_weights(self.latent(), self.options.score), rate)


@dataclass
class TCPOptions(ProjectionOptions):
    budget_weight: float = option(5.0, "Weight λ of the budget term λ·((kept − c)/c)².")
    temperature_start: float = option(
        0.3, "Sigmoid temperature (× each tensor's threshold) at the start of the fine-tune."
    )
    temperature_end: float = option(
        0.03, "Sigmoid temperature at the end (annealed geometrically)."
    )

    def __post_init__(self) -> None:
        for key in ("budget_weight", "temperature_start", "temperature_end"):
            if not getattr(self, key) > 0:
                flag = key.replace("_", "-")
                raise GcnshrinkError(f"--{flag} must be positive, got {getattr(self, key)}")


@register_method
class TopologicallyConsistentPruning(ConsistentProjection):
    name = "tcp"
    Options = TCPOptions

    def setup(self) -> None:
        rate = self.spec.rate
        masks = self.projected_masks(rate)
        self.target_budget = self.budget(rate)
        # τ_t: just below tensor t's smallest kept magnitude, so training starts from the projection
        thresholds = {}
        for name, w in self.latent().items():
            magnitudes = w.detach().abs().reshape(-1)
            kept = magnitudes[masks[name].reshape(-1).to(magnitudes.device)]
            if kept.numel():
                thresholds[name] = max(float(kept.min()) * 0.999, 1e-12)
            else:  # nothing kept: the threshold sits just above the largest weight
                thresholds[name] = max(float(magnitudes.max()) * 1.001, 1e-12)
        latent_all = {b.name: latent_weight(self.model, b.name) for b in self.graph.prunable}
        self.controller = TopologyController(
            self.graph, self.targets, latent_all, thresholds, self.options.temperature_start
        )
        for b in self.targets:
            self.register(b.name, ConsistentMask(self.controller, b.name))

    def on_step(self, progress: float) -> None:
        start, end = self.options.temperature_start, self.options.temperature_end
        self.controller.temperature = start * (end / start) ** min(max(progress, 0.0), 1.0)
        self.controller.compute()  # the masks this step's forward pass and budget term use

    def loss(self) -> torch.Tensor:
        if not self.controller.current:
            self.controller.compute()
        kept = sum(m.sum() for m in self.controller.current.values())
        weight = self.options.budget_weight
        return weight * ((kept - self.target_budget) / self.target_budget) ** 2

    def consistent_count(self) -> int:
        return int(sum(float(m.detach().sum()) for m in self.controller.current.values()))

    def status(self) -> str:
        # the delivered masks always hold exactly the budget; the trained mask is near it
        return f"trained mask {self.consistent_count():,} / budget {self.target_budget:,}"

    def compute_masks(self, rate: float) -> dict[str, torch.Tensor]:
        """The exact-budget projection of the subnetwork the fine-tune trained.

        The controller's hard consistent mask is what the weights were trained with; it holds about
        the budget (the budget term keeps it within a few percent). Its entries are ranked above all
        others, so the projection only trims or fills at the margin, by score. Re-ranking everything
        by latent score instead swaps out part of the trained subnetwork: 7-16 points of test
        accuracy lost at 0.99 on synthetic:hands (benchmarks/tcp_ablations.py).
        """
        with torch.no_grad():
            trained = self.controller.compute()
        scores = score_weights(self.latent(), self.options.score)
        lead = max(float(s.max()) for s in scores.values()) + 1.0
        preferred, trained_count = {}, 0
        for name, s in scores.items():
            in_trained = (
                trained[name].detach() > 0
                if name in trained
                else torch.zeros_like(s, dtype=torch.bool)
            )
            preferred[name] = s + lead * in_trained.to(s.dtype)
            trained_count += int(in_trained.sum())
        return self.project(preferred, rate, k_hint=trained_count)

    def state_dict(self) -> dict:
        return {
            "thresholds": dict(self.controller.thresholds),
            "temperature": self.controller.temperature,
        }

    def load_state_dict(self, state: dict) -> None:
        self.controller.thresholds = {k: float(v) for k, v in state["thresholds"].items()}
        self.controller.temperature = float(state["temperature"])


@register_method
class PosthocConsistentPruning(ConsistentProjection):
    """``tcp-posthoc``: the consistent exact-budget projection of the dense weights, then masked
    fine-tuning with those masks fixed."""

    name = "tcp-posthoc"
    Options = ProjectionOptions

    def setup(self) -> None:
        self.masks = self.projected_masks(self.spec.rate)
        for name, mask in self.masks.items():
            self.register(name, HardMask(mask))

    def compute_masks(self, rate: float) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.masks.items()}
