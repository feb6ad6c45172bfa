"""``tcp``: topologically consistent pruning (Sahbi, arXiv 2306.17590 / 2203.13616).

Magnitude pruning at very high rates keeps weights that no kept path from the input reaches
(not *accessible*) or from which no kept path reaches the output (not *co-accessible*). They cost
budget and do nothing. TCP keeps only consistent connections, during training and in the result.

What is implemented (docs/methods.md has the reasoning):

1. Magnitude mask, trainable: M = step(|Ŵ| − τ) in the forward pass, with the gradient of
   sigmoid((|Ŵ| − τ)/T) in the backward pass (a straight-through estimator). τ is one global
   threshold set at the start so that the consistent part of {|Ŵ| > τ} is about the budget; the
   temperature T = t·τ is annealed geometrically from ``temperature_start`` to ``temperature_end``.
2. Accessibility, the forward "supervisory network", on the model's unit graph: input units are 1;
   a unit's pre-activation is Σ M_e · a_source(e) over its incoming entries plus its signal links
   (identity residuals, flatten); a = h(z) with h(z) = 1[z > 0] forward and 1 − exp(−z) backward.
3. Co-accessibility, the backward network: output units are 1; a unit's pre-activation is
   Σ M_e · c_target(e) over its outgoing entries plus all its links (attention steering included);
   c = h(z).
4. Consistent mask M̃_e = M_e · a_source(e) · c_target(e); the weight used is Ŵ ⊙ M̃.
5. Loss: cross-entropy + λ·((Σ M̃ − c)/c)², the budget counting consistent connections only.
6. Final hard mask (and every epoch's deliverable): :func:`consistent_budget_masks`, the largest
   magnitudes among consistent connections, exactly c of them (see its docstring).

Attention projections (query/key) steer the aggregation rather than carry channels. They are in the
budget like any weight; a query/key entry is consistent when its source unit is accessible and the
head it steers has a co-accessible output unit (steering links carry co-accessibility back, not
accessibility forward).

``tcp-posthoc`` is the cheap variant: magnitude pruning, then inconsistent weights removed and their
budget handed to the next-largest consistent ones, then masked fine-tuning with those fixed masks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gcnshrink.graph.units import SIGNAL_LINKS, Link, TensorBinding, UnitGraph
from gcnshrink.pruning.base import (
    HardMask,
    PruneSpec,
    PruningMethod,
    budget_per_tensor,
    check_score,
    global_budget,
    latent_weight,
    score_weights,
)


# ---------------------------------------------------------------------------- the exact projection
def _normalised_scores(scores: dict[str, torch.Tensor], scope: str) -> dict[str, torch.Tensor]:
    """Global scope ranks raw scores; layer scope ranks each tensor's quantiles on one scale."""
    if scope == "global":
        return scores
    out = {}
    for name, s in scores.items():
        flat = s.reshape(-1)
        ranks = torch.empty_like(flat)
        ranks[torch.argsort(flat, stable=True)] = torch.arange(
            1, flat.numel() + 1, dtype=flat.dtype
        )
        out[name] = (ranks / flat.numel()).view_as(s)
    return out


def consistent_budget_masks(
    graph: UnitGraph,
    scores: dict[str, torch.Tensor],
    spec: PruneSpec,
    dense_masks: dict[str, torch.Tensor] | None = None,
    k_hint: int | None = None,
) -> dict[str, torch.Tensor]:
    """Exactly c kept entries, all consistent, preferring high scores.

    Take the top-k entries by score and keep their consistent part. That part only grows with k
    (adding an edge never makes another edge inconsistent), so a binary search finds the smallest k
    whose consistent part holds at least c entries. If it holds more, the lowest-scored entries are
    trimmed, but only those whose removal leaves every unit's accessibility and co-accessibility as
    it was (the target keeps another incoming edge, the source another outgoing one), so the result
    stays consistent. ``dense_masks`` are the tensors out of scope (kept whole, outside the budget).

    With ``scope="layer"`` the budget is the sum of the per-tensor budgets and scores are ranked
    within each tensor, so each tensor keeps about its share.

    ``k_hint`` is a guess of the k that suffices (tcp: the size of the trained mask, which ranks
    first). The search then gallops up from c in steps that start at ``k_hint - c`` and doubles,
    and bisects the last step: a handful of consistency passes instead of log2(n).
    """
    dense_masks = dense_masks or {}
    names = list(scores)
    sizes = {n: scores[n].numel() for n in names}
    if spec.scope == "layer":
        budget = sum(budget_per_tensor(sizes, spec.rate).values())
    else:
        budget = global_budget(sizes, spec.rate)
    ranked = _normalised_scores({n: scores[n].detach().float().cpu() for n in names}, spec.scope)
    flat = torch.cat([ranked[n].reshape(-1) for n in names])
    order = torch.argsort(flat, descending=True, stable=True)
    offsets = np.cumsum([0] + [sizes[n] for n in names])

    def split(keep_flat: torch.Tensor) -> dict[str, torch.Tensor]:
        masks = {
            n: keep_flat[offsets[i] : offsets[i + 1]].view(scores[n].shape)
            for i, n in enumerate(names)
        }
        return {**dense_masks, **masks}

    def consistent_top(k: int) -> dict[str, torch.Tensor]:
        keep = torch.zeros(flat.numel(), dtype=torch.bool)
        keep[order[:k]] = True
        cons = graph.consistent(split(keep))
        return {n: cons[n].view(scores[n].shape) for n in names}

    def count(masks: dict[str, torch.Tensor]) -> int:
        return sum(int(masks[n].sum()) for n in names)

    lo, hi = budget, flat.numel()
    best = None
    if k_hint is not None:  # gallop: the first k >= c whose consistent part holds c entries
        step = max(1, k_hint - budget)
        while lo + step < hi:
            cand = consistent_top(lo + step)
            if count(cand) >= budget:
                hi, best = lo + step, cand
                break
            lo, step = lo + step + 1, step * 2
    if best is None:
        best = consistent_top(hi)
    while lo < hi:
        mid = (lo + hi) // 2
        cand = consistent_top(mid)
        if count(cand) >= budget:
            hi, best = mid, cand
        else:
            lo = mid + 1
    if count(best) < budget:
        best = consistent_top(hi)
    excess = count(best) - budget
    if excess > 0:
        best = _trim(graph, best, ranked, excess, dense_masks)
    return {n: best[n].to(scores[n].device) for n in names}


def _trim(
    graph: UnitGraph,
    masks: dict[str, torch.Tensor],
    scores: dict[str, torch.Tensor],
    excess: int,
    dense_masks,
) -> dict[str, torch.Tensor]:
    """Drop exactly ``excess`` low-score entries from a consistent set, keeping it consistent.

    Removing an entry u -> v can leave v with no live input (v's outgoing entries then lead from a
    dead unit) or u with no live output (u's incoming entries then lead nowhere). Those entries go
    too, and so on: a *cascade*. Candidates are tried from the lowest score up; a candidate is taken
    when its whole cascade fits in what is left to remove. Statuses are tracked by counting each
    unit's live supports (kept entries and links from accessible units; kept entries and links to
    co-accessible units), so a trial touches only the units whose status it changes.
    """
    full = {**dense_masks, **masks}
    acc, coacc = graph.accessible(full), graph.coaccessible(full)
    infinite = 1 << 40
    in_support = {s.name: np.zeros(s.width, dtype=np.int64) for s in graph.spaces}
    out_support = {s.name: np.zeros(s.width, dtype=np.int64) for s in graph.spaces}
    for s in graph.spaces:
        if s.role == "input":
            in_support[s.name][:] = infinite
        if s.role == "output":
            out_support[s.name][:] = infinite
    # adjacency of kept entries per unit: (tensor, flat index, other unit)
    out_edges: dict[tuple[str, int], list[tuple[str, int, str, int]]] = {}
    in_edges: dict[tuple[str, int], list[tuple[str, int, str, int]]] = {}
    removable = set(masks)
    for b in graph.prunable:
        src, dst = graph.entry_units(b, full[b.name].shape)
        kept = torch.nonzero(full[b.name].reshape(-1)).squeeze(1)
        for e, u, v in zip(kept.tolist(), src[kept].tolist(), dst[kept].tolist(), strict=True):
            if not (acc[b.source][u] and coacc[b.target][v]):
                continue  # an inconsistent entry of an excluded (dense) tensor supports nothing
            in_support[b.target][v] += 1
            out_support[b.source][u] += 1
            out_edges.setdefault((b.source, u), []).append((b.name, e, b.target, v))
            in_edges.setdefault((b.target, v), []).append((b.name, e, b.source, u))
    signal_out: dict[tuple[str, int], list[tuple[str, int]]] = {}
    links_in: dict[tuple[str, int], list[tuple[str, int]]] = {}
    steered_by: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for link in graph.links:
        for u, v in zip(link.source_units.tolist(), link.target_units.tolist(), strict=True):
            if link.kind in SIGNAL_LINKS and acc[link.source][u]:
                in_support[link.target][v] += 1
                signal_out.setdefault((link.source, u), []).append((link.target, v))
            useful = coacc[link.target][v] and (link.kind != "steer" or acc[link.target][v])
            if useful:
                out_support[link.source][u] += 1
                links_in.setdefault((link.target, v), []).append((link.source, u))
                if link.kind == "steer":
                    steered_by.setdefault((link.target, v), []).append((link.source, u))

    removed: set[tuple[str, int]] = set()
    dead_in: set[tuple[str, int]] = set()  # units that lost accessibility
    dead_out: set[tuple[str, int]] = set()  # units that lost co-accessibility

    def cascade(first: tuple[str, int, str, int, str, int], limit: int):
        """Apply the removal of ``first`` and everything it drags along; undo if over ``limit``."""
        log: list[tuple] = []
        gone: list[tuple[str, int]] = []

        def drop_entry(name, e, s_space, u, t_space, v, work):
            if (name, e) in removed:
                return
            removed.add((name, e))
            gone.append((name, e))
            log.append(("entry", name, e))
            for table, key in ((in_support, (t_space, v)), (out_support, (s_space, u))):
                table[key[0]][key[1]] -= 1
                log.append(("count", table, key))
                if table[key[0]][key[1]] == 0:
                    work.append((table is in_support, key))

        work: list = []
        name, e, s_space, u, t_space, v = first
        drop_entry(name, e, s_space, u, t_space, v, work)
        while work:
            if len(gone) > limit:
                break
            lost_input, unit = work.pop()
            if lost_input:
                if unit in dead_in:
                    continue
                dead_in.add(unit)
                log.append(("dead_in", unit))
                for tname, te, t_space2, t_unit in out_edges.get(unit, ()):
                    drop_entry(tname, te, unit[0], unit[1], t_space2, t_unit, work)
                for target in signal_out.get(unit, ()):
                    in_support[target[0]][target[1]] -= 1
                    log.append(("count", in_support, target))
                    if in_support[target[0]][target[1]] == 0:
                        work.append((True, target))
                for steerer in steered_by.get(unit, ()):
                    out_support[steerer[0]][steerer[1]] -= 1
                    log.append(("count", out_support, steerer))
                    if out_support[steerer[0]][steerer[1]] == 0:
                        work.append((False, steerer))
            else:
                if unit in dead_out:
                    continue
                dead_out.add(unit)
                log.append(("dead_out", unit))
                for sname, se, s_space2, s_unit in in_edges.get(unit, ()):
                    drop_entry(sname, se, s_space2, s_unit, unit[0], unit[1], work)
                for source in links_in.get(unit, ()):
                    out_support[source[0]][source[1]] -= 1
                    log.append(("count", out_support, source))
                    if out_support[source[0]][source[1]] == 0:
                        work.append((False, source))
        blocked = any(n not in removable for n, _ in gone)  # excluded tensors are never cut
        if len(gone) <= limit and not blocked:
            return len(gone)
        for item in reversed(log):  # undo
            if item[0] == "entry":
                removed.discard((item[1], item[2]))
            elif item[0] == "count":
                item[1][item[2][0]][item[2][1]] += 1
            elif item[0] == "dead_in":
                dead_in.discard(item[1])
            else:
                dead_out.discard(item[1])
        return 0

    entry_units = {
        b.name: graph.entry_units(b, full[b.name].shape) for b in graph.prunable if b.name in masks
    }
    binding = graph.binding_by_name
    candidates = []
    for name, m in masks.items():
        idx = torch.nonzero(m.reshape(-1)).squeeze(1)
        candidates += [(float(scores[name].reshape(-1)[e]), name, e) for e in idx.tolist()]
    candidates.sort(key=lambda c: c[0])
    for _, name, e in candidates:
        if excess == 0:
            break
        if (name, e) in removed:
            continue
        b = binding[name]
        src, dst = entry_units[name]
        excess -= cascade((name, e, b.source, int(src[e]), b.target, int(dst[e])), excess)
    out = {}
    for name, m in masks.items():
        flat = m.reshape(-1).clone()
        gone = [e for (n, e) in removed if n == name]
        if gone:
            flat[torch.tensor(gone, dtype=torch.long)] = False
        out[name] = flat.view(m.shape)
    if excess > 0:
        out = _swap_to_exact(graph, out, scores, excess, dense_masks)
    return out


def _swap_to_exact(graph: UnitGraph, masks, scores, excess: int, dense_masks, tries: int = 256):
    """When every cascade is larger than the excess: remove the cheapest cascade that is, then refill
    the shortfall with the best entries that are consistent by construction (source accessible,
    target co-accessible). Rare: only tiny budgets with parallel detours get here."""
    names = list(masks)
    flat = {n: masks[n].reshape(-1) for n in names}
    candidates = sorted(
        (
            (float(scores[n].reshape(-1)[e]), n, e)
            for n in names
            for e in torch.nonzero(flat[n]).squeeze(1).tolist()
        ),
        key=lambda c: c[0],
    )
    for _, name, e in candidates[:tries]:
        trial = {n: flat[n].clone() for n in names}
        trial[name][e] = False
        full = {**dense_masks, **{n: trial[n].view(masks[n].shape) for n in names}}
        consistent = graph.consistent(full)
        after = {n: consistent[n] for n in names}
        dropped = sum(int(flat[n].sum()) - int(after[n].sum()) for n in names)
        deficit = dropped - excess
        if deficit < 0:
            continue
        full = {**dense_masks, **{n: after[n].view(masks[n].shape) for n in names}}
        acc, coacc = graph.accessible(full), graph.coaccessible(full)
        pool = []
        for n in names:
            b = graph.binding_by_name[n]
            src, dst = graph.entry_units(b, masks[n].shape)
            eligible = (
                ~flat[n] & acc[b.source][src] & coacc[b.target][dst]
            )  # never re-add what was just cut
            idx = torch.nonzero(eligible).squeeze(1)
            pool += [(float(scores[n].reshape(-1)[i]), n, i) for i in idx.tolist()]
        if len(pool) < deficit:
            continue
        pool.sort(key=lambda c: -c[0])
        for _, n, i in pool[:deficit]:
            after[n][i] = True
        return {n: after[n].view(masks[n].shape) for n in names}
    return masks


# ---------------------------------------------------------------------------- training-time network
def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Value of ``hard``, gradient of ``soft``."""
    return hard + (soft - soft.detach())


def reach_step(z: torch.Tensor) -> torch.Tensor:
    """h(z): 1[z > 0] forward, d(1 − e^(−z)) backward (units with few paths are sensitive)."""
    return straight_through((z > 0).to(z.dtype), 1.0 - torch.exp(-z))


class TopologyController(nn.Module):
    """Computes the consistent masks M̃ of every target tensor once per forward pass.

    Each target tensor t has its own magnitude threshold τ_t (where the exact projection put that
    tensor's boundary); the sigmoid temperature is ``temperature`` × τ_t.

    The propagation works per tensor axis, not per entry: the mask is summed over the axes that
    index no unit (kernel taps), giving a (target positions × source positions) matrix, so a unit's
    pre-activation is a matrix-vector product followed by a small scatter from positions to units
    (ST-GCN's interleaved rows). M̃ is M times a_source and c_target broadcast along their axes.
    """

    def __init__(
        self,
        graph: UnitGraph,
        targets: list[TensorBinding],
        latent: dict[str, torch.Tensor],
        thresholds: dict[str, float],
        temperature: float,
    ):
        super().__init__()
        self.graph = graph
        self.targets = targets
        self.target_names = {b.name for b in targets}
        self.latent = latent
        self.thresholds = thresholds
        self.temperature = temperature
        self.current: dict[str, torch.Tensor] = {}
        self.device = None
        self._axes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._links: list[tuple[Link, torch.Tensor, torch.Tensor]] = []

    def _prepare(self, device: torch.device) -> None:
        """Per tensor: the unit of each target and source position, on the training device."""
        self.device = device
        self._axes = {
            b.name: (b.axes[b.target_axis].units.to(device), b.axes[b.source_axis].units.to(device))
            for b in self.graph.prunable
            if b.name in self.latent
        }
        self._links = [
            (link, link.source_units.to(device), link.target_units.to(device))
            for link in self.graph.links
        ]

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

    @staticmethod
    def _matrix(mask: torch.Tensor, b: TensorBinding) -> torch.Tensor:
        """(target positions, source positions): the mask summed over every other axis."""
        moved = mask.movedim((b.target_axis, b.source_axis), (0, 1))
        return moved.reshape(moved.shape[0], moved.shape[1], -1).sum(dim=2)

    def compute(self) -> dict[str, torch.Tensor]:
        graph = self.graph
        device = next(iter(self.latent.values())).device
        if device != self.device:
            self._prepare(device)
        masks = self.magnitude_masks()
        matrices = {
            b.name: self._matrix(masks[b.name], b) for b in graph.prunable if b.name in masks
        }
        incoming_links: dict[str, list] = {}
        for link, src_units, dst_units in self._links:
            incoming_links.setdefault(link.target, []).append((link, src_units, dst_units))
        incoming_weights: dict[str, list[TensorBinding]] = {}
        for b in graph.prunable:
            incoming_weights.setdefault(b.target, []).append(b)

        acc: dict[str, torch.Tensor] = {}
        for space in graph.spaces:
            if space.role == "input":
                acc[space.name] = torch.ones(space.width, device=device)
                continue
            z = torch.zeros(space.width, device=device)
            for link, src_units, dst_units in incoming_links.get(space.name, ()):
                if link.kind in SIGNAL_LINKS:
                    z = z.index_add(0, dst_units, acc[link.source][src_units])
            for b in incoming_weights.get(space.name, ()):
                target_units, source_units = self._axes[b.name]
                z = z.index_add(0, target_units, matrices[b.name] @ acc[b.source][source_units])
            acc[space.name] = reach_step(z)

        coacc_z = {s.name: torch.zeros(s.width, device=device) for s in graph.spaces}
        coacc: dict[str, torch.Tensor] = {}
        for space in reversed(graph.spaces):
            here = (
                torch.ones(space.width, device=device)
                if space.role == "output"
                else reach_step(coacc_z[space.name])
            )
            coacc[space.name] = here
            for link, src_units, dst_units in incoming_links.get(space.name, ()):
                carried = here[dst_units]
                if link.kind == "steer":  # steering matters only where the head carries signal
                    carried = carried * acc[space.name][dst_units]
                coacc_z[link.source] = coacc_z[link.source].index_add(0, src_units, carried)
            for b in incoming_weights.get(space.name, ()):
                target_units, source_units = self._axes[b.name]
                back = matrices[b.name].t() @ here[target_units]
                coacc_z[b.source] = coacc_z[b.source].index_add(0, source_units, back)

        self.current = {}
        for b in self.targets:
            target_units, source_units = self._axes[b.name]
            shape = [1] * masks[b.name].dim()
            src_shape, dst_shape = list(shape), list(shape)
            src_shape[b.source_axis] = -1
            dst_shape[b.target_axis] = -1
            gate = acc[b.source][source_units].view(src_shape) * coacc[b.target][target_units].view(
                dst_shape
            )
            self.current[b.name] = masks[b.name] * gate
        return self.current


class ConsistentMask(nn.Module):
    """W -> W ⊙ M̃, M̃ taken from the controller's current pass."""

    def __init__(self, controller: TopologyController, name: str):
        super().__init__()
        # a plain attribute, not a submodule: every parametrization shares the one controller
        object.__setattr__(self, "controller", controller)
        self.name = name

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        mask = self.controller.current.get(self.name)
        if mask is None:  # outside a controlled forward (e.g. state inspection): no mask yet
            return weight
        return weight * mask


# ---------------------------------------------------------------------------- the methods
class ConsistentProjection(PruningMethod):
    """Shared by tcp and tcp-posthoc: the scores and the exact consistent projection."""

    def __init__(self, spec: PruneSpec, seed: int = 0, score: str = "lamp", **options):
        check_score(score)
        super().__init__(spec, seed, score=score, **options)
        self.score = score

    def dense_masks(self) -> dict[str, torch.Tensor]:
        """Out-of-scope prunable tensors (``--exclude``) are kept whole."""
        names = {b.name for b in self.targets}
        return {
            b.name: torch.ones_like(latent_weight(self.model, b.name), dtype=torch.bool).cpu()
            for b in self.graph.prunable
            if b.name not in names
        }

    def projected_masks(self) -> dict[str, torch.Tensor]:
        return consistent_budget_masks(
            self.graph, score_weights(self.latent(), self.score), self.spec, self.dense_masks()
        )


class TopologicallyConsistentPruning(ConsistentProjection):
    name = "tcp"

    def __init__(
        self,
        spec: PruneSpec,
        seed: int = 0,
        score: str = "lamp",
        budget_weight: float = 5.0,
        temperature_start: float = 0.3,
        temperature_end: float = 0.03,
        **options,
    ):
        super().__init__(
            spec,
            seed,
            score=score,
            budget_weight=budget_weight,
            temperature_start=temperature_start,
            temperature_end=temperature_end,
            **options,
        )
        self.budget_weight = budget_weight
        self.temperature_start, self.temperature_end = temperature_start, temperature_end
        self.controller: TopologyController | None = None
        self.budget = 0

    def _attach(self) -> None:
        masks = self.projected_masks()
        sizes = self.sizes()
        self.budget = (
            sum(budget_per_tensor(sizes, self.spec.rate).values())
            if self.spec.scope == "layer"
            else global_budget(sizes, self.spec.rate)
        )
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
            self.graph, self.targets, latent_all, thresholds, self.temperature_start
        )
        for b in self.targets:
            self.register(b.name, ConsistentMask(self.controller, b.name))
        # refresh the masks before every forward pass of the model being fine-tuned
        self.model.register_forward_pre_hook(self._refresh_masks)

    def _refresh_masks(self, module, args) -> None:
        self.controller.compute()

    def on_step(self, progress: float) -> None:
        ratio = self.temperature_end / self.temperature_start
        self.controller.temperature = self.temperature_start * ratio ** min(max(progress, 0.0), 1.0)

    def extra_loss(self) -> torch.Tensor:
        kept = sum(m.sum() for m in self.controller.current.values())
        return self.budget_weight * ((kept - self.budget) / self.budget) ** 2

    def consistent_count(self) -> int:
        return int(sum(float(m.detach().sum()) for m in self.controller.current.values()))

    def status(self) -> str:
        # the delivered masks always hold exactly the budget; the trained mask is near it
        return f"trained mask {self.consistent_count():,} / budget {self.budget:,}"

    def final_masks(self) -> dict[str, torch.Tensor]:
        """The exact-budget projection of the subnetwork the fine-tune trained.

        The controller's hard consistent mask is what the weights were trained with; it holds about
        the budget (the budget term keeps it within a few percent). Its entries are ranked above all
        others, so the projection only trims or fills at the margin, by score. Re-ranking everything
        by latent score instead swaps out part of the trained subnetwork: 7-16 points of test
        accuracy lost at 0.99 on synthetic:hands (benchmarks/tcp_ablations.py).
        """
        with torch.no_grad():
            trained = self.controller.compute()
        scores = score_weights(self.latent(), self.score)
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
        return consistent_budget_masks(
            self.graph, preferred, self.spec, self.dense_masks(), k_hint=trained_count
        )


class PosthocConsistentPruning(ConsistentProjection):
    """``tcp-posthoc``: the consistent exact-budget projection of the dense weights, then masked
    fine-tuning with those masks fixed."""

    name = "tcp-posthoc"

    def _attach(self) -> None:
        self.masks = self.projected_masks()
        for name, mask in self.masks.items():
            self.register(name, HardMask(mask))

    def final_masks(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.masks.items()}


__all__ = [
    "ConsistentMask",
    "PosthocConsistentPruning",
    "TopologicallyConsistentPruning",
    "TopologyController",
    "consistent_budget_masks",
]
