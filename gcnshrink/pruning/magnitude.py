"""``mp``: magnitude pruning (Han et al. 2015), one-shot or gradual (Zhu & Gupta 2017's cubic
schedule), with masked fine-tuning. Global by default: the same masks as
``torch.nn.utils.prune.global_unstructured(..., pruning_method=L1Unstructured)``.
"""

from __future__ import annotations

import torch

from gcnshrink.errors import GcnshrinkError
from gcnshrink.pruning.base import (
    HardMask,
    PruneSpec,
    PruningMethod,
    check_score,
    score_weights,
    topk_masks,
)


def cubic_rate(final_rate: float, progress: float, ramp: float) -> float:
    """Zhu & Gupta: s_t = s_f · (1 − (1 − t/t_ramp)³), reaching s_f at ``ramp`` of the fine-tune."""
    t = min(progress / ramp, 1.0) if ramp > 0 else 1.0
    return final_rate * (1.0 - (1.0 - t) ** 3)


class MagnitudePruning(PruningMethod):
    name = "mp"

    def __init__(
        self,
        spec: PruneSpec,
        seed: int = 0,
        schedule: str = "oneshot",
        ramp: float = 0.5,
        updates: int = 20,
        score: str = "magnitude",
        **options,
    ):
        check_score(score)
        super().__init__(
            spec,
            seed,
            schedule=schedule,
            ramp=ramp if schedule == "cubic" else None,
            score=score,
            **options,
        )
        self.score = score
        if schedule not in ("oneshot", "cubic"):
            raise GcnshrinkError(f"--schedule must be 'oneshot' or 'cubic', got {schedule!r}")
        if not 0.0 < ramp <= 1.0:
            raise GcnshrinkError(f"--ramp must be in (0, 1], got {ramp}")
        self.schedule, self.ramp, self.updates = schedule, ramp, max(1, updates)
        self.current_rate = 0.0
        self.parametrizations: dict[str, HardMask] = {}

    def scores(self) -> dict[str, torch.Tensor]:
        return score_weights(self.latent(), self.score)

    def masks_at(self, rate: float) -> dict[str, torch.Tensor]:
        spec = PruneSpec(rate, self.spec.scope, self.spec.exclude)
        return topk_masks(self.scores(), spec)

    def _attach(self) -> None:
        final = self.masks_at(self.spec.rate)
        self.check_masks_connected(final)
        start = (
            final
            if self.schedule == "oneshot"
            else {k: torch.ones_like(m) for k, m in final.items()}
        )
        self.current_rate = self.spec.rate if self.schedule == "oneshot" else 0.0
        for name, mask in start.items():
            self.parametrizations[name] = HardMask(mask)
            self.register(name, self.parametrizations[name])

    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        for name, mask in masks.items():
            self.parametrizations[name].mask.copy_(mask.to(self.parametrizations[name].mask.dtype))

    def on_step(self, progress: float) -> None:
        if self.schedule != "cubic" or self.current_rate >= self.spec.rate:
            return
        # the ramp is cut into `updates` equal steps; masks change only at step boundaries
        level = min(int(progress / self.ramp * self.updates), self.updates)
        target = cubic_rate(self.spec.rate, level / self.updates * self.ramp, self.ramp)
        if level == self.updates:
            target = self.spec.rate
        if target > self.current_rate:
            self.set_masks(self.masks_at(target))
            self.current_rate = target

    def selectable(self) -> bool:
        return self.current_rate >= self.spec.rate

    def final_masks(self) -> dict[str, torch.Tensor]:
        if self.selectable():
            # masked fine-tuning never changes which entries are kept: the masks in force are final
            return {name: p.mask.bool().clone() for name, p in self.parametrizations.items()}
        return self.masks_at(self.spec.rate)


class RandomPruning(MagnitudePruning):
    """``random``: unstructured random masks at the same rate (a sanity baseline)."""

    name = "random"

    def __init__(self, spec: PruneSpec, seed: int = 0, **options):
        super().__init__(spec, seed, schedule="oneshot", **options)
        self._random_scores: dict[str, torch.Tensor] | None = None

    def scores(self) -> dict[str, torch.Tensor]:
        if self._random_scores is None:
            generator = torch.Generator().manual_seed(self.seed)
            self._random_scores = {
                name: torch.rand(w.shape, generator=generator).to(w.device)
                for name, w in self.latent().items()
            }
        return self._random_scores
