"""``mp``: magnitude pruning (Han et al. 2015), one-shot or gradual (Zhu & Gupta 2017's cubic
schedule), with masked fine-tuning; ``random``: random masks at the same rate (a sanity baseline).

Global by default: the same masks as
``torch.nn.utils.prune.global_unstructured(..., pruning_method=L1Unstructured)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gcnshrink.errors import GcnshrinkError
from gcnshrink.pruning.budget import SCORES, score_weights, topk_masks
from gcnshrink.pruning.method import HardMask, NoOptions, PruningMethod, option
from gcnshrink.pruning.registry import register_method


def cubic_rate(final_rate: float, progress: float, ramp: float) -> float:
    """Zhu & Gupta: s_t = s_f · (1 − (1 − t/t_ramp)³), reaching s_f at ``ramp`` of the fine-tune."""
    t = min(progress / ramp, 1.0) if ramp > 0 else 1.0
    return final_rate * (1.0 - (1.0 - t) ** 3)


class ScoreMasks(PruningMethod):
    """Masks that keep the top scores, fixed during the fine-tune (or raised on a schedule)."""

    schedule = "oneshot"

    def scores(self) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self) -> None:
        rate = self.spec.rate
        final = topk_masks(self.scores(), rate, self.spec.scope)
        self.check_masks_connected(final, rate)
        oneshot = self.schedule == "oneshot"
        start = final if oneshot else {k: torch.ones_like(m) for k, m in final.items()}
        self.current_rate = rate if oneshot else 0.0
        self.parametrizations: dict[str, HardMask] = {}
        for name, mask in start.items():
            self.parametrizations[name] = HardMask(mask)
            self.register(name, self.parametrizations[name])

    def ready(self) -> bool:
        return self.current_rate >= self.spec.rate

    def compute_masks(self, rate: float) -> dict[str, torch.Tensor]:
        if self.ready():
            # masked fine-tuning never changes which entries are kept: the masks in force are final
            return {name: p.keep.bool().clone() for name, p in self.parametrizations.items()}
        return topk_masks(self.scores(), rate, self.spec.scope)


@dataclass
class MagnitudeOptions:
    schedule: str = option(
        "oneshot",
        "oneshot, or cubic: gradual (Zhu & Gupta) over the first --ramp of the fine-tune.",
        choices=("oneshot", "cubic"),
    )
    ramp: float = option(0.5, "With --schedule cubic: fraction of the fine-tune the ramp takes.")
    updates: int = option(20, "With --schedule cubic: how many times the masks are raised.")
    score: str = option(
        "magnitude",
        "Rank weights by magnitude, or by LAMP score (layer-adaptive).",
        choices=SCORES,
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.ramp <= 1.0:
            raise GcnshrinkError(f"--ramp must be in (0, 1], got {self.ramp}")
        if self.updates < 1:
            raise GcnshrinkError(f"--updates must be at least 1, got {self.updates}")


@register_method
class MagnitudePruning(ScoreMasks):
    name = "mp"
    Options = MagnitudeOptions

    @property
    def schedule(self) -> str:
        return self.options.schedule

    def scores(self) -> dict[str, torch.Tensor]:
        return score_weights(self.latent(), self.options.score)

    def on_step(self, progress: float) -> None:
        if self.schedule != "cubic" or self.current_rate >= self.spec.rate:
            return
        ramp, updates, rate = self.options.ramp, self.options.updates, self.spec.rate
        # the ramp is cut into `updates` equal steps; masks change only at step boundaries
        level = min(int(progress / ramp * updates), updates)
        target = rate if level == updates else cubic_rate(rate, level / updates * ramp, ramp)
        if target > self.current_rate:
            for name, mask in topk_masks(self.scores(), target, self.spec.scope).items():
                keep = self.parametrizations[name].keep
                keep.copy_(mask.to(keep.dtype))
            self.current_rate = target

    def describe(self) -> dict:
        described = super().describe()
        if self.schedule != "cubic":  # the ramp only means something for the cubic schedule
            del described["ramp"], described["updates"]
        return described


@register_method
class RandomPruning(ScoreMasks):
    """``random``: unstructured random masks at the same rate."""

    name = "random"
    Options = NoOptions

    def scores(self) -> dict[str, torch.Tensor]:
        if getattr(self, "_random_scores", None) is None:
            generator = torch.Generator().manual_seed(self.seed)
            self._random_scores = {
                name: torch.rand(w.shape, generator=generator).to(w.device)
                for name, w in self.latent().items()
            }
        return self._random_scores
