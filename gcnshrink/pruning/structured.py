"""``structured``: whole units (channels, neurons, attention dims) by ℓ1 norm (Li et al. 2017).

A unit's score is the mean absolute value of its incoming weights (the ℓ1 norm of its filter divided
by its fan-in, so units of different layers compare on one global scale). Units are removed lowest
score first, whole coupled groups at a time (identity-residual partners, query/key dims), until the
removed weights reach the rate; every group keeps at least one unit so the output stays connected.
A removed unit takes all its incoming and outgoing weights with it, so compaction cuts it out and
the realized rate is usually a little above the request (reported as such).
"""

from __future__ import annotations

import torch

from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph import consistent
from gcnshrink.pruning.method import HardMask, PruningMethod, latent_weight
from gcnshrink.pruning.registry import register_method


@register_method
class StructuredPruning(PruningMethod):
    name = "structured"
    exact_rate = False  # whole units go: the realized rate is at least the request

    def __init__(self, spec, options=None, seed: int = 0):
        super().__init__(spec, options, seed)
        if spec.scope != "global":
            raise GcnshrinkError(
                "structured pruning removes units shared by several tensors; use --scope global"
            )

    def _unit_entries(self):
        """For each target tensor: (group-unit id of each entry's source, ... of its target)."""
        graph = self.graph
        offset: dict[str, int] = {}
        base = 0
        group_of_id: list[int] = []
        for gi, members in enumerate(graph.unit_groups):
            width = graph.width(members[0])
            for name in members:
                offset[name] = base
            group_of_id += [gi] * width
            base += width

        def ids(space: str, units: torch.Tensor) -> torch.Tensor:
            if space in graph.derived:  # a flattened unit belongs to its source channel
                source, source_unit = graph.derived_source(space)
                return ids(source, source_unit[units])
            if space not in offset:  # input or output space: never removed
                return torch.full_like(units, -1)
            return units + offset[space]

        entries = {}
        for b in self.targets:
            w = self.latent()[b.name]
            src, dst = graph.entry_units(b, w.shape)
            entries[b.name] = (ids(b.source, src), ids(b.target, dst))
        return entries, torch.tensor(group_of_id, dtype=torch.long), len(graph.unit_groups)

    def setup(self) -> None:
        entries, group_of_id, n_groups = self._unit_entries()
        n_units = len(group_of_id)
        latent = {k: v.detach().abs().reshape(-1).cpu() for k, v in self.latent().items()}
        incoming_sum = torch.zeros(n_units)
        incoming_count = torch.zeros(n_units)
        for name, (_, dst) in entries.items():
            ok = dst >= 0
            incoming_sum.index_add_(0, dst[ok], latent[name][ok])
            incoming_count.index_add_(0, dst[ok], torch.ones(int(ok.sum())))
        score = incoming_sum / incoming_count.clamp(min=1)
        total = sum(v.numel() for v in latent.values())
        to_remove = round(self.spec.rate * total)
        removed_units = torch.zeros(n_units, dtype=torch.bool)
        alive_per_group = torch.bincount(group_of_id, minlength=n_groups)
        removed_entries = {
            name: torch.zeros(len(src), dtype=torch.bool) for name, (src, _) in entries.items()
        }
        removed = 0
        for unit in torch.argsort(score, stable=True).tolist():
            if removed >= to_remove:
                break
            g = int(group_of_id[unit])
            if alive_per_group[g] <= 1:
                continue
            alive_per_group[g] -= 1
            removed_units[unit] = True
            for name, (src, dst) in entries.items():
                hit = ((src == unit) | (dst == unit)) & ~removed_entries[name]
                if hit.any():
                    removed_entries[name] |= hit
                    removed += int(hit.sum())
        self.removed_units = int(removed_units.sum())
        masks = {name: (~removed_entries[name]).view_as(w) for name, w in self.latent().items()}
        # a kept unit whose every outgoing (or incoming) weight went with removed units is dead
        # too (a multi-scale TCN branch whose whole output segment went): drop what it still has
        out_of_scope = {
            b.name: torch.ones(latent_weight(self.model, b.name).shape, dtype=torch.bool)
            for b in self.graph.prunable
            if b.name not in masks
        }
        kept = consistent(self.graph, {**out_of_scope, **masks})
        self.masks = {name: kept[name].to(w.device) for name, w in self.latent().items()}
        for name, mask in self.masks.items():
            self.register(name, HardMask(mask))

    def compute_masks(self, rate: float) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.masks.items()}
