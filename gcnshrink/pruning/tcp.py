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

Extreme rates (0.995-0.999, docs/methods.md and benchmarks/tcp_extreme.py): the projection of the
dense weights is at chance before any fine-tune, so the fine-tune retrains the subnetwork rather
than adjusts it. Three things decide whether it recovers: how many units the budget leaves on the
signal path, the fine-tune's learning rate (gcnshrink's default is 1e-2) and its number of steps.
LAMP normalises each tensor on its own, so the small query/key tensors (which only steer
attention) took 60-65 % of the budget at 0.998; ``steering_share`` (default 1) caps them at their
share of the dense weights (:func:`capped_steering`), leaving the rest to the value, fc and
classifier weights. ``steering`` scales their scores (0: no attention at all). Two alternatives
are kept as options because they were measured: ``gradual`` (the kept count shrinks geometrically
from ``gradual_from``'s budget to the rate's over that fraction of the fine-tune, re-projecting
the trained subnetwork every 20 %; no epoch is selected before the rate is reached) and
``rescale`` (each unit's kept incoming weights scaled back to the norm of all its incoming
weights at every projection).

Attention projections (query/key) steer the aggregation rather than carry channels. They are in the
budget like any weight; a query/key entry is consistent when its source unit is accessible and the
head it steers has a co-accessible output unit (steering links carry co-accessibility back, not
accessibility forward).

``tcp-posthoc`` is the cheap variant: magnitude pruning, then inconsistent weights removed and their
budget handed to the next-largest consistent ones, then masked fine-tuning with those fixed masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph import TensorBinding, UnitGraph
from gcnshrink.graph.propagation import AxisUnits, gate, position_matrix, propagate
from gcnshrink.pruning.budget import SCORES, score_weights
from gcnshrink.pruning.method import (
    HardMask,
    MaskParametrization,
    PruningMethod,
    check_annealing,
    check_positive,
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


def steering_tensors(graph: UnitGraph) -> set[str]:
    """Prunable tensors whose target units pass no signal on (no weight reads them, no
    signal-carrying link leaves them) and are not outputs: attention queries and keys."""
    carrying = {b.source for b in graph.prunable}
    carrying |= {link.source for link in graph.links if link.semantics.carries_signal}
    return {
        b.name
        for b in graph.prunable
        if b.target not in carrying and graph.space_by_name[b.target].role != "output"
    }


def capped_steering(
    scores: dict[str, torch.Tensor], steering: set[str], share: float, budget: int, units: int
) -> dict[str, torch.Tensor]:
    """Scores with which the steering-only tensors take at most ``share`` × their share of the
    prunable weights of a ``budget``: their ``cap`` best entries are scaled down (never up) to just
    above the best score of the others that the budget leaves out, the rest of them to 0, so a
    projection fills the budget with other weights first. When the cap is below ``units`` (the
    steering tensors' target units: one weight per query/key dimension) it is 0: no attention.

    Why (docs/methods.md, "Extreme rates"): LAMP normalises each tensor on its own, so at 0.998
    the six small query/key tensors of gcn took 60-65 % of the budget (8 % of the weights) and
    left the signal path a few units wide. Attention off at every rate costs 1.6 pp at 0.9 on
    hands (3 seeds); a capped but thin attention (fewer weights than query/key dimensions) was
    3.6 pp below none at 0.998 on hands."""
    steer = torch.cat([scores[n].reshape(-1) for n in sorted(steering)])
    other = torch.cat([s.reshape(-1) for n, s in scores.items() if n not in steering])
    cap = min(int(share * budget * steer.numel() / (steer.numel() + other.numel())), budget)
    if cap < units:
        cap = 0
    if cap >= steer.numel() or budget - cap >= other.numel():
        return scores  # the cap leaves every steering entry, or the others cannot fill the rest
    ranked = steer.sort(descending=True).values
    edge = float(other.sort(descending=True).values[budget - cap])
    least = float(ranked[cap - 1]) if cap > 0 else math.inf  # the cap-th best steering score
    factor = min(1.0, 1.0001 * edge / least) if cap > 0 and least > 0 else 1.0
    out = dict(scores)
    for name in steering:
        s = scores[name]
        out[name] = torch.where(s >= least, s * factor, torch.zeros_like(s))
    return out


# ---------------------------------------------------------------------------- the methods
@dataclass
class ProjectionOptions:
    score: str = option(
        "lamp",
        "Rank weights by magnitude, or by LAMP score (layer-adaptive).",
        choices=SCORES,
    )


class ConsistentProjection(PruningMethod):
    """Shared by tcp and tcp-posthoc: the exact consistent projection of the latent scores."""

    def projected_masks(self, rate: float) -> dict[str, torch.Tensor]:
        """The exact consistent projection of the latent weights' scores."""
        scores = score_weights(self.latent(), self.options.score)
        return self.project(scores, self.budget(rate))


@dataclass
class TCPOptions(ProjectionOptions):
    budget_weight: float = option(5.0, "Weight λ of the budget term λ·((kept − c)/c)².")
    temperature_start: float = option(
        0.3, "Sigmoid temperature (× each tensor's threshold) at the start of the fine-tune."
    )
    temperature_end: float = option(
        0.03, "Sigmoid temperature at the end (annealed geometrically)."
    )
    steering: float = option(
        1.0,
        "Factor on the scores of weights that only steer attention (query/key: no signal leaves "
        "their units) in the projection, global scope; below 1 they take less of the budget "
        "(0 measured better at 0.998 and above, docs/methods.md).",
    )
    rescale: bool = option(
        False,
        "Scale each unit's kept incoming weights, whenever the mask is projected, so their norm "
        "is that of all its incoming weights.",
    )
    gradual: float = option(
        0.0,
        "Fraction of the fine-tune over which the kept count shrinks geometrically from "
        "--gradual-from's budget to the rate's (0: the rate from the first step).",
    )
    gradual_from: float = option(
        0.9, "Rate the gradual schedule starts from (no schedule when it is not below the rate)."
    )
    steering_share: float = option(
        1.0,
        "Most share of the budget that weights which only steer attention (query/key) may take "
        "in the projection, as a multiple of their share of the dense weights; none when that is "
        "less than one weight per query/key dimension (0: no cap; global scope).",
    )

    def __post_init__(self) -> None:
        check_positive(self, "budget_weight")
        check_annealing(self, "temperature_start", "temperature_end")
        if not 0.0 <= self.steering <= 1.0:
            raise GcnshrinkError(f"--steering must be between 0 and 1, got {self.steering}")
        if not 0.0 <= self.steering_share < math.inf:  # also refuses NaN
            raise GcnshrinkError(
                f"--steering-share must be 0 (no cap) or a positive number, "
                f"got {self.steering_share}"
            )
        if not 0.0 <= self.gradual <= 1.0:  # also refuses NaN
            raise GcnshrinkError(f"--gradual must be between 0 and 1, got {self.gradual}")
        if not 0.0 <= self.gradual_from < 1.0:
            raise GcnshrinkError(
                f"--gradual-from must be a rate in [0, 1), got {self.gradual_from}"
            )


@register_method
class TopologicallyConsistentPruning(ConsistentProjection):
    name = "tcp"
    Options = TCPOptions

    def setup(self) -> None:
        rate = self.spec.rate
        self.target_budget = self.budget(rate)
        # the gradual schedule: the kept count shrinks from start_budget to target_budget
        start = self.options.gradual_from
        ramps = self.options.gradual > 0 and start < rate
        self.start_budget = max(self.budget(start), self.target_budget) if ramps else None
        self.current_budget = self.start_budget or self.target_budget
        masks = self.project(self.scores(self.current_budget), self.current_budget)
        if self.options.rescale:
            self.rescale(masks)
        latent_all = {b.name: latent_weight(self.model, b.name) for b in self.graph.prunable}
        self.controller = TopologyController(
            self.graph, self.targets, latent_all, {}, self.options.temperature_start
        )
        self.controller.thresholds = self.thresholds_of(masks)
        for b in self.targets:
            self.register(b.name, ConsistentMask(self.controller, b.name))

    def scores(self, budget: int) -> dict[str, torch.Tensor]:
        """The projection's ranking: LAMP (or magnitude), steering-only tensors scaled down (with
        one global budget; with ``--scope layer`` every tensor keeps its own share anyway)."""
        scores = score_weights(self.latent(), self.options.score)
        scaled = (
            steering_tensors(self.graph) & set(scores) if self.spec.scope == "global" else set()
        )
        for name in scaled:
            scores[name] = scores[name] * self.options.steering
        if scaled and self.options.steering_share > 0:
            units = sum(self.graph.width(self.graph.binding_by_name[n].target) for n in scaled)
            scores = capped_steering(scores, scaled, self.options.steering_share, budget, units)
        return scores

    def rescale(self, masks: dict[str, torch.Tensor]) -> None:
        """Multiply the kept incoming weights of each target position by ‖W_row‖ / ‖W_row ⊙ M_row‖
        (in place, on the latent weights): at 0.995 the projection keeps a few of the thousands of
        weights feeding a unit, whose pre-activation is then little more than its bias. Measured
        not to help (docs/methods.md, "Extreme rates"), so off by default."""
        bindings = self.graph.binding_by_name
        with torch.no_grad():
            for name, w in self.latent().items():
                axis = bindings[name].target_axis
                keep = masks[name].to(device=w.device, dtype=w.dtype)
                dims = [d for d in range(w.dim()) if d != axis]
                full = w.pow(2).sum(dim=dims, keepdim=True).sqrt()
                kept = (w * keep).pow(2).sum(dim=dims, keepdim=True).sqrt()
                factor = torch.where(kept > 0, full / kept.clamp(min=1e-12), torch.ones_like(kept))
                w.mul_(torch.where(keep > 0, factor, torch.ones_like(w)))

    def thresholds_of(self, masks: dict[str, torch.Tensor]) -> dict[str, float]:
        """τ_t just below tensor t's smallest kept magnitude, so the trained mask is ``masks``."""
        thresholds = {}
        for name, w in self.latent().items():
            magnitudes = w.detach().abs().reshape(-1)
            kept = magnitudes[masks[name].reshape(-1).to(magnitudes.device)]
            if kept.numel():
                thresholds[name] = max(float(kept.min()) * 0.999, 1e-12)
            else:  # nothing kept: the threshold sits just above the largest weight
                thresholds[name] = max(float(magnitudes.max()) * 1.001, 1e-12)
        return thresholds

    def scheduled_budget(self, progress: float) -> int:
        """The kept count the schedule asks for at ``progress``: geometric from the start budget
        to the target, reached at ``gradual`` of the fine-tune."""
        if self.start_budget is None:
            return self.target_budget
        q = min(max(progress, 0.0) / self.options.gradual, 1.0)
        kept = self.start_budget * (self.target_budget / self.start_budget) ** q
        return max(self.target_budget, round(kept))

    def on_step(self, progress: float) -> None:
        start, end = self.options.temperature_start, self.options.temperature_end
        self.controller.temperature = start * (end / start) ** min(max(progress, 0.0), 1.0)
        wanted = self.scheduled_budget(progress)
        # re-project when the schedule has moved 20 % (each projection costs about a second on
        # the default gcn), and exactly at its end
        if wanted < self.current_budget and (
            wanted <= 0.8 * self.current_budget or wanted == self.target_budget
        ):
            self.current_budget = wanted
            masks = self.trained_first_projection(wanted)
            if self.options.rescale:
                self.rescale(masks)
            self.controller.thresholds = self.thresholds_of(masks)
        self.controller.compute()  # the masks this step's forward pass and budget term use

    def ready(self) -> bool:
        """Selectable once the schedule has reached the rate."""
        return self.current_budget == self.target_budget

    def status(self) -> str:
        # the delivered masks always hold exactly the budget; the trained mask is near it
        return f"trained mask {self.consistent_count():,} / budget {self.current_budget:,}"

    def loss(self) -> torch.Tensor:
        if not self.controller.current:
            self.controller.compute()
        kept = sum(m.sum() for m in self.controller.current.values())
        weight = self.options.budget_weight
        return weight * ((kept - self.current_budget) / self.current_budget) ** 2

    def consistent_count(self) -> int:
        return int(sum(float(m.detach().sum()) for m in self.controller.current.values()))

    def compute_masks(self, rate: float) -> dict[str, torch.Tensor]:
        """The exact-budget projection of the subnetwork the fine-tune trained.

        The controller's hard consistent mask is what the weights were trained with; it holds about
        the budget (the budget term keeps it within a few percent). Its entries are ranked above all
        others, so the projection only trims or fills at the margin, by score. Re-ranking everything
        by latent score instead swaps out part of the trained subnetwork: 7-16 points of test
        accuracy lost at 0.99 on synthetic:hands (benchmarks/tcp_ablations.py).
        """
        return self.trained_first_projection(self.budget(rate))

    def trained_first_projection(self, budget: int) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            trained = self.controller.compute()
        scores = self.scores(budget)
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
        return self.project(preferred, budget, k_hint=trained_count)

    def state_dict(self) -> dict:
        return {
            "thresholds": dict(self.controller.thresholds),
            "temperature": self.controller.temperature,
            "current_budget": self.current_budget,
        }

    def load_state_dict(self, state: dict) -> None:
        self.controller.thresholds = {k: float(v) for k, v in state["thresholds"].items()}
        self.controller.temperature = float(state["temperature"])
        self.current_budget = int(state.get("current_budget", self.target_budget))


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
