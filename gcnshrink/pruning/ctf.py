"""``ctf``: coarse-to-fine pruning (Sahbi, arXiv 2412.12887), on the unit graph.

Unstructured pruning keeps accuracy but leaves every unit in place, so a compacted model is as slow
as the dense one; structured pruning removes units and is fast, but loses accuracy at high rates.
CTF masks every connection with the Hadamard product of four factors computed from the same latent
tensor Ŵ, from coarse to fine:

    M_e = β_src(e) · β_dst(e) · ρ_row(e) · κ_col(e) · ε_e        W = Ŵ ⊙ M

- **channel** β_u: one per unit of a coupled unit group (``graph.unit_groups``: a residual chain's
  channel in every space it joins, a query/key dimension pair; the flatten before the FC layer
  maps flat unit (v, c) to channel c). β_u = 0 zeroes every row of u in the tensors it is the
  target of and every column of u in the tensors it feeds: compaction removes the unit;
- **row** ρ_{t,i} and **column** κ_{t,j}: per tensor t, the entries entering hidden unit i (its
  rows: ST-GCN's K interleaved rows k·C + i and every kernel tap) and the entries leaving hidden
  unit j. Input columns and output rows have no coarse factor (compaction never cuts them), nor
  have query/key rows (one of a pair alone cannot be cut; the pair's channel factor cuts both);
- **entry** ε_e: a symmetrized shifted sigmoid of ŵ, a band-stop that removes small weights.

Because the factors multiply, a zero coarse factor zeroes its whole group, and entry-wise pruning
only matters where the coarse factors keep the group.

**Aggregation and thresholds.** Entry factors compare |ŵ| / s_t (s_t: tensor t's mean |ŵ| when
the method is attached) with one threshold per tensor. Coarse factors compare the *mean* of
|ŵ| / mean_t |ŵ| over their entries (an ℓ1 norm per fan, relative to the tensor's *current*
mean) with one threshold per group: a kept group is cut when its mean falls below ``margin`` of its
start value, a cut one comes back above its start value over ``margin``. Relative to the current
mean because pruned weights drift to 0 during the fine-tune and would drag every group's mean
under a fixed threshold (seen while developing, with a fixed scale: most of gcn's rows were cut
within a few epochs, whatever the allocation); per group because the allocation below does not
rank groups by magnitude.

**Relaxation and schedule.** ``--relaxation ste`` (default): the forward pass uses the hard
product (0/1), the backward pass the gradient of the product of the relaxed factors
sigmoid((x − θ)/(T·θ)) (the symmetrized band-stop for entries): a straight-through estimator on
the whole product, so an entry with two factors at 0 still gets a gradient. ``soft``: the forward
pass uses the relaxed product itself (the paper's literal relaxation). T is annealed
geometrically from ``temperature_start`` to ``temperature_end`` until ``crisp_at`` of the
fine-tune; from there the masks are hard and fixed (the exact deliverable below), so the rest of
the fine-tune trains exactly the network that is shipped. Loss: cross-entropy +
λ·((Σ M − c)/c)², Σ M counting consistent entries (below).

**Start: coarse to fine.** The *fine reference* is the exact consistent projection of LAMP scores
at the budget (what ``tcp-posthoc`` starts from). Whole channels go first, until they remove
``channel_share`` of the weights to remove, counting the entries their cut leaves dead. Which
ones (``--order``): ``uniform`` (default) the weakest of every coupled group at the same pace, a
channel ranked by its magnitude's rank within its group over the group's size, so every group
keeps the same share of its channels (a width multiplier, which is what makes ST-GCN fast:
docs/methods.md); ``flops`` those the reference keeps the fewest weights of per FLOP they cost (a
weight's cost is its module's FLOPs on one sample over its size, so a channel of an early
ST-GCN block, applied at every frame, costs more than one of the classifier), a channel the
reference already empties first of all; ``density`` the same per weight; ``mass`` the least
magnitude per FLOP. No coupled group loses a larger share of its units than the rate (at rate
0.5 every layer keeps at least half its channels): ranked by FLOPs alone, the attention
dimensions of gcn, cheap in weights and dear in FLOPs, all went first and the rate-0.5 model
started at chance. Then rows and columns of single tensors by the same rules,
up to ``channel_share + line_share``. Then the exact consistent projection of LAMP scores inside
what is left, down to the budget. The thresholds are set so that the hard factors reproduce this
allocation, so training starts from it.

**Consistency and the deliverable.** A unit whose every row is zero (it receives nothing) or
every column is zero (it feeds nothing) is dead; the entries still touching it cost budget and do
nothing. Each step the mask is gated by accessibility and co-accessibility on the unit graph,
with tcp's straight-through step (:func:`gcnshrink.graph.propagation.propagate`). The deliverable
is the exact consistent projection (:func:`gcnshrink.graph.projection.consistent_budget_masks`)
of the trained mask, ranked first, then of the entries the coarse factors keep, then of the rest,
by LAMP score: exactly c entries, all consistent. A dead unit keeps no weight, so compaction
removes every unit CTF emptied (ST-GCN's graph-convolution units with no input are not
constant-foldable, but with their columns zeroed they are useless and go).

:func:`removed_by_granularity` splits the removed weights of any masks into those of removed
channels, rows, columns and single entries (``gcnshrink inspect`` reports it for every model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gcnshrink.errors import GcnshrinkError
from gcnshrink.flops import forward_flop_counts
from gcnshrink.graph import TensorBinding, UnitGraph, consistent
from gcnshrink.graph.projection import consistent_budget_masks
from gcnshrink.graph.propagation import AxisUnits, gate, position_matrix, propagate
from gcnshrink.pruning.budget import lamp_scores
from gcnshrink.pruning.method import (
    MaskParametrization,
    PruningMethod,
    check_annealing,
    check_positive,
    latent_weight,
    option,
)
from gcnshrink.pruning.registry import register_method
from gcnshrink.pruning.tcp import reach_step

GRANULARITIES = ("channels", "rows", "columns", "entries")


# ---------------------------------------------------------------------------- where entries sit
class EntryLayout:
    """For every entry of every tensor in scope (flattened row-major): its row slot, column slot
    and the channel slots of its source and target.

    Slots index factor vectors that end with one extra slot holding 1: entries without a row factor
    (output rows), column factor (input columns) or channel (input/output units) point there.
    Channels are the units of ``graph.unit_groups`` numbered consecutively; a derived (flattened)
    unit belongs to its source channel.
    """

    def __init__(self, graph: UnitGraph, targets: list[TensorBinding], shapes: dict):
        self.graph = graph
        self.names = [b.name for b in targets]
        self.shapes = {b.name: torch.Size(shapes[b.name]) for b in targets}
        offset: dict[str, int] = {}
        group_of_channel: list[int] = []
        for gi, members in enumerate(graph.unit_groups):
            for space in members:
                offset[space] = len(group_of_channel)
            group_of_channel += [gi] * graph.width(members[0])
        self.group_of_channel = torch.tensor(group_of_channel, dtype=torch.long)
        self.channel_offset = offset
        self.n_channels = len(group_of_channel)
        self.n_groups = len(graph.unit_groups)

        self.rows: dict[str, torch.Tensor] = {}
        self.cols: dict[str, torch.Tensor] = {}
        self.src_channel: dict[str, torch.Tensor] = {}
        self.dst_channel: dict[str, torch.Tensor] = {}
        self.n_rows: dict[str, int] = {}
        self.n_cols: dict[str, int] = {}
        self.row_channel: dict[str, torch.Tensor] = {}  # channel slot of each row slot
        self.col_channel: dict[str, torch.Tensor] = {}
        channel_count = torch.zeros(self.n_channels + 1)
        paired = {space for pair in graph.attention_pairs for space in pair}
        self.row_count: dict[str, torch.Tensor] = {}
        self.col_count: dict[str, torch.Tensor] = {}
        for b in targets:
            src, dst = graph.entry_units(b, self.shapes[b.name])
            n_rows, n_cols = graph.width(b.target), graph.width(b.source)
            # a query (key) row alone cannot be cut, its partner dimension still steers: the
            # pair's channel factor cuts both
            has_rows = graph.space_by_name[b.target].role == "hidden" and b.target not in paired
            has_cols = graph.space_by_name[b.source].role == "hidden"
            self.rows[b.name] = dst if has_rows else torch.full_like(dst, n_rows)
            self.cols[b.name] = src if has_cols else torch.full_like(src, n_cols)
            self.n_rows[b.name], self.n_cols[b.name] = n_rows, n_cols
            self.src_channel[b.name] = self.channel_ids(b.source, src)
            self.dst_channel[b.name] = self.channel_ids(b.target, dst)
            self.row_channel[b.name] = self.channel_ids(b.target, torch.arange(n_rows + 1))
            self.col_channel[b.name] = self.channel_ids(b.source, torch.arange(n_cols + 1))
            self.row_count[b.name] = torch.bincount(self.rows[b.name], minlength=n_rows + 1)
            self.col_count[b.name] = torch.bincount(self.cols[b.name], minlength=n_cols + 1)
            channel_count += torch.bincount(self.src_channel[b.name], minlength=self.n_channels + 1)
            channel_count += torch.bincount(self.dst_channel[b.name], minlength=self.n_channels + 1)
        self.channel_count = channel_count
        self.device = torch.device("cpu")

    def channel_ids(self, space: str, units: torch.Tensor) -> torch.Tensor:
        """Channel slot of each unit of ``space`` (the sentinel for units beyond the width, and for
        spaces that are no channel: input and output)."""
        sentinel = self.n_channels
        width = self.graph.width(space)
        inside = units < width
        if space in self.graph.derived:
            source, source_unit = self.graph.derived_source(space)
            mapped = torch.full_like(units, width)
            mapped[inside] = source_unit[units[inside]]
            return self.channel_ids(source, mapped)
        if space not in self.channel_offset:
            return torch.full_like(units, sentinel)
        out = torch.where(inside, units + self.channel_offset[space], torch.full_like(units, 0))
        return torch.where(inside, out, torch.full_like(units, sentinel))

    def to(self, device: torch.device) -> EntryLayout:
        if device != self.device:
            for table in (
                self.rows, self.cols, self.src_channel, self.dst_channel, self.row_count,
                self.col_count,
            ):  # fmt: skip
                for name in table:
                    table[name] = table[name].to(device)
            self.channel_count = self.channel_count.to(device)
            self.group_of_channel = self.group_of_channel.to(device)
            self.device = device
        return self

    # ------------------------------------------------------------------ aggregation
    def aggregates(self, magnitudes: dict[str, torch.Tensor]):
        """Mean magnitude of every row, column (per tensor) and channel (over all tensors in scope):
        differentiable in ``magnitudes`` (flat, per tensor)."""
        reference = next(iter(magnitudes.values()))
        channel_sum = reference.new_zeros(self.n_channels + 1)
        rows, cols = {}, {}
        for name in self.names:
            m = magnitudes[name]
            n_rows, n_cols = self.n_rows[name], self.n_cols[name]
            row_sum = m.new_zeros(n_rows + 1).index_add(0, self.rows[name], m)
            col_sum = m.new_zeros(n_cols + 1).index_add(0, self.cols[name], m)
            rows[name] = row_sum / self.row_count[name].clamp(min=1).to(m.dtype)
            cols[name] = col_sum / self.col_count[name].clamp(min=1).to(m.dtype)
            channel_sum = channel_sum.index_add(0, self.src_channel[name], m)
            channel_sum = channel_sum.index_add(0, self.dst_channel[name], m)
        channels = channel_sum / self.channel_count.clamp(min=1).to(channel_sum.dtype)
        return rows, cols, channels

    def compose(self, entry, rows, cols, channels) -> dict[str, torch.Tensor]:
        """M_e = β_src · β_dst · ρ_row · κ_col · ε_e, each factor vector's last slot set to 1."""
        one = channels.new_ones(1)
        beta = torch.cat([channels[:-1], one])
        out = {}
        for name in self.names:
            rho = torch.cat([rows[name][:-1], one])
            kappa = torch.cat([cols[name][:-1], one])
            m = (
                entry[name]
                * rho[self.rows[name]]
                * kappa[self.cols[name]]
                * beta[self.src_channel[name]]
                * beta[self.dst_channel[name]]
            )
            out[name] = m.view(self.shapes[name])
        return out


# ---------------------------------------------------------------------------- one factor
def band_stop(x: torch.Tensor, theta: torch.Tensor, temperature: float | None, *, signed: bool):
    """Soft: the symmetrized shifted sigmoid sigmoid((x − θ)/(Tθ)) + sigmoid((−x − θ)/(Tθ)) of a
    signed ``x`` (a band-stop around 0), its one-sided half for magnitudes. ``temperature`` None:
    the hard step it tends to, 1[|x| > θ] or 1[x > θ]."""
    if temperature is None:
        return (x.abs() > theta if signed else x > theta).to(x.dtype)
    width = temperature * theta
    if signed:
        return torch.sigmoid((x - theta) / width) + torch.sigmoid((-x - theta) / width)
    return torch.sigmoid((x - theta) / width)


# ---------------------------------------------------------------------------- the allocation
def _prefix_within(removal_time: torch.Tensor, n_candidates: int, limit: int) -> int:
    """The largest k such that removing the first k candidates removes at most ``limit`` entries,
    given when (which candidate) each entry goes (negative: already gone; ``n_candidates`` or
    more: never)."""
    if n_candidates == 0:
        return 0
    already = int((removal_time < 0).sum())
    goes = removal_time[(removal_time >= 0) & (removal_time < n_candidates)]
    cumulative = already + torch.cumsum(torch.bincount(goes, minlength=n_candidates), dim=0)
    return int((cumulative <= limit).sum())  # cumulative is non-decreasing


def _order(primary: torch.Tensor, secondary: torch.Tensor, candidates: torch.Tensor):
    """``candidates`` (indices) by ascending ``primary``, ties by ascending ``secondary``."""
    first = candidates[torch.argsort(secondary[candidates], stable=True)]
    return first[torch.argsort(primary[first], stable=True)]


def _group_thresholds(aggregate: torch.Tensor, removed: torch.Tensor, margin: float):
    """A kept group is cut when its aggregate falls below ``margin`` of its value now; a cut one
    comes back above its value now over ``margin``."""
    return torch.where(removed, aggregate / margin, aggregate * margin).clamp(min=1e-12)


class Allocation:
    """The coarse-to-fine allocation of the dense weights at a budget, and the thresholds that
    make the hard factors reproduce it.

    The *fine reference* is the exact consistent projection of LAMP scores at the budget (what
    ``tcp-posthoc`` starts from). Whole channels go first, those of which the fine reference
    keeps the fewest weights per FLOP (``cost``: FLOPs per weight of each tensor; without it, per
    weight), a channel the reference empties first of all, until they remove ``channel_share``
    of the weights to remove, counting the entries their cut leaves dead; no coupled group loses
    a larger share of its units than the rate. Then rows and columns of single tensors by the
    same rules, up to ``channel_share + line_share``. Then the exact consistent projection of
    LAMP scores inside what is left gives exactly the budget.
    """

    def __init__(
        self,
        layout: EntryLayout,
        latent: dict[str, torch.Tensor],
        budget: int,
        channel_share: float,
        line_share: float,
        margin: float,
        dense_masks: dict[str, torch.Tensor],
        cost: dict[str, float] | None = None,
        *,
        order: str,  # the one default is CTFOptions.order's
    ):
        names = layout.names
        cost = cost or dict.fromkeys(names, 1.0)
        graph = layout.graph
        sizes = [latent[n].numel() for n in names]
        total = sum(sizes)
        to_remove = total - budget
        relative = {}
        for n in names:
            w = latent[n].reshape(-1).abs()
            relative[n] = w / w.mean().clamp(min=torch.finfo(w.dtype).tiny)
        rows, cols, channels = layout.aggregates(relative)
        lamp = {n: lamp_scores(latent[n]).view(layout.shapes[n]) for n in names}
        reference = consistent_budget_masks(graph, lamp, budget, dense_masks=dense_masks)
        fine = {n: reference[n].reshape(-1) for n in names}

        def consistent_structure(gone: torch.Tensor) -> torch.Tensor:
            """The entries not ``gone`` whose units keep a path from the input and to the output
            (flat): a row or column cut can leave a unit dead, and its other entries with it."""
            kept = dict(zip(names, torch.split(~gone, sizes), strict=True))
            masks = {**dense_masks, **{n: kept[n].view(layout.shapes[n]) for n in names}}
            alive = consistent(graph, masks)
            return torch.cat([alive[n].reshape(-1) for n in names])

        def largest_prefix(times: torch.Tensor, n_candidates: int, limit: int) -> int:
            """The largest k such that cutting the first k candidates, and every entry left dead,
            removes at most ``limit`` entries. Dead entries only add, so the count grows with k:
            bisect below the k that ignores them."""
            low, high = 0, _prefix_within(times, n_candidates, limit)
            while low < high:
                mid = (low + high + 1) // 2
                if total - int(consistent_structure(times < mid).sum()) <= limit:
                    low = mid
                else:
                    high = mid - 1
            return low

        # ---- stage 1: whole channels, the least kept by the reference first
        n_ch = layout.n_channels
        kept_in = torch.zeros(n_ch + 1)
        flops = torch.zeros(n_ch + 1, dtype=torch.float64)
        for n in names:
            kept_in.index_add_(0, layout.src_channel[n][fine[n]], torch.ones(int(fine[n].sum())))
            kept_in.index_add_(0, layout.dst_channel[n][fine[n]], torch.ones(int(fine[n].sum())))
            for index in (layout.src_channel[n], layout.dst_channel[n]):
                flops += cost[n] * torch.bincount(index, minlength=n_ch + 1).double()
        # what a channel's cut loses per FLOP it saves: the weights the fine reference keeps in
        # it (a channel it empties costs nothing), or its magnitude mass (the sum of its
        # relative magnitudes), which does not inherit LAMP's protection of small layers
        if order == "mass":
            lost = channels.double() * layout.channel_count.double()
        else:
            lost = kept_in.double()
        density = (lost / flops.clamp(min=1e-9))[:n_ch]
        has_entries = layout.channel_count[:n_ch] > 0
        ch_scores = channels[:n_ch]
        if order == "uniform":
            # every group thins at the same pace: a channel's place is its rank by magnitude
            # within its group over the group's size, so a prefix keeps the same share of every
            # group (a width multiplier). Per FLOP, the mass order empties the cheap-in-weights,
            # dear-in-FLOPs early ST-GCN blocks down to the floor before touching any other.
            density = torch.zeros(n_ch, dtype=torch.float64)
            for gi in range(layout.n_groups):
                members = torch.nonzero((layout.group_of_channel == gi) & has_entries).flatten()
                ranked = _order(ch_scores.double(), torch.zeros(n_ch), members)
                density[ranked] = torch.arange(1, len(ranked) + 1, dtype=torch.float64) / max(
                    len(ranked), 1
                )
        # no group loses a larger share of its units than the rate (at least one unit stays)
        keep_share = budget / max(total, 1)
        protected = torch.zeros(n_ch, dtype=torch.bool)
        for gi in range(layout.n_groups):
            members = torch.nonzero((layout.group_of_channel == gi) & has_entries).flatten()
            if len(members):
                floor = max(1, math.ceil(keep_share * len(members)))
                protected[_order(-density, -ch_scores, members)[:floor]] = True
        order = _order(density, ch_scores, torch.nonzero(has_entries & ~protected).flatten())
        rank = torch.full((n_ch + 1,), len(order), dtype=torch.long)
        rank[order] = torch.arange(len(order))
        channel_time = torch.cat(
            [torch.minimum(rank[layout.src_channel[n]], rank[layout.dst_channel[n]]) for n in names]
        )
        k = largest_prefix(channel_time, len(order), int(channel_share * to_remove))
        removed_channels = torch.zeros(n_ch + 1, dtype=torch.bool)
        removed_channels[order[:k]] = True
        gone = ~consistent_structure(channel_time < k)
        self.removed = {"channels": int(gone.sum())}
        self.channel_theta = _group_thresholds(ch_scores, removed_channels[:n_ch], margin)

        # ---- stage 2: rows and columns of the kept channels, the least kept first
        items = []  # (tensor, is_row, slot) of every line that may go
        item_density, item_score = [], []
        removed_lines = {}
        for n in names:
            live_fine = fine[n]
            for is_row, agg, index, counts, channel_of in (
                (True, rows[n], layout.rows[n], layout.row_count[n], layout.row_channel[n]),
                (False, cols[n], layout.cols[n], layout.col_count[n], layout.col_channel[n]),
            ):
                removed_lines[(n, is_row)] = torch.zeros(len(agg), dtype=torch.bool)
                kept_lines = torch.bincount(index[live_fine], minlength=len(agg)).double()
                line_density = kept_lines / (cost[n] * counts.clamp(min=1).double())
                slots = torch.arange(len(agg) - 1)
                alive = (counts[:-1] > 0) & (channel_of[:-1] < n_ch)  # only hidden units' lines
                alive &= ~removed_channels[channel_of[:-1]]
                live = slots[alive]
                if len(live) == 0:
                    continue
                floor = max(1, math.ceil(keep_share * len(live)))  # as for channels
                best = set(_order(-line_density, -agg, live)[:floor].tolist())
                for slot in live.tolist():
                    if slot not in best:
                        items.append((n, is_row, slot))
                        item_density.append(float(line_density[slot]))
                        item_score.append(float(agg[slot]))
        line_order = _order(
            torch.tensor(item_density, dtype=torch.float64),
            torch.tensor(item_score, dtype=torch.float64),
            torch.arange(len(items)),
        )
        n_lines = len(items)
        row_rank = {n: torch.full((layout.n_rows[n] + 1,), n_lines) for n in names}
        col_rank = {n: torch.full((layout.n_cols[n] + 1,), n_lines) for n in names}
        for position, item in enumerate(line_order.tolist()):
            n, is_row, slot = items[item]
            (row_rank if is_row else col_rank)[n][slot] = position
        line_time = torch.cat(
            [torch.minimum(row_rank[n][layout.rows[n]], col_rank[n][layout.cols[n]]) for n in names]
        )
        line_time[gone] = -1  # already removed with a channel
        limit = max(int((channel_share + line_share) * to_remove), self.removed["channels"])
        k_lines = largest_prefix(line_time, n_lines, limit)
        for item in line_order[:k_lines].tolist():
            n, is_row, slot = items[item]
            removed_lines[(n, is_row)][slot] = True
        structure = consistent_structure(line_time < k_lines)
        self.removed["lines"] = total - int(structure.sum()) - self.removed["channels"]
        self.row_theta = {
            n: _group_thresholds(rows[n], removed_lines[(n, True)], margin) for n in names
        }
        self.col_theta = {
            n: _group_thresholds(cols[n], removed_lines[(n, False)], margin) for n in names
        }

        # ---- stage 3: single entries by LAMP score inside what the coarse factors keep, as the
        # exact consistent projection (an entry whose unit lost every other path would be wasted)
        self.structure = dict(zip(names, torch.split(structure, sizes), strict=True))
        lead = max(float(s.max()) for s in lamp.values() if s.numel()) + 1.0
        preferred = {
            n: lamp[n] + lead * self.structure[n].view(layout.shapes[n]).to(lamp[n].dtype)
            for n in names
        }
        kept = consistent_budget_masks(graph, preferred, budget, dense_masks=dense_masks)
        self.masks = {n: kept[n] for n in names}
        self.entry_theta = {}
        for n in names:
            w = latent[n].reshape(-1).abs()
            scale = float(w.mean()) if w.numel() and float(w.mean()) > 0 else 1.0
            inside = w[self.masks[n].reshape(-1) & self.structure[n]] / scale
            if inside.numel():  # just below the tensor's smallest kept magnitude
                theta = 0.999 * float(inside.min())
            else:  # nothing kept: just above its largest
                theta = 1.001 * float(w.max()) / scale if w.numel() else 1.0
            self.entry_theta[n] = max(theta, 1e-12)
        self.removed["entries"] = int(structure.sum()) - budget
        self.total, self.budget = total, budget


# ---------------------------------------------------------------------------- the controller
def protect_pad(like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(1, dtype=torch.bool, device=like.device)


class CoarseToFine:
    """Computes every tensor's mask from the latent weights, once per training step."""

    def __init__(self, graph, targets, layout, latent, scales, relaxation):
        self.graph = graph
        self.targets = targets
        self.layout = layout
        self.latent = latent  # every prunable tensor (out-of-scope ones count as fully kept)
        self.scales = scales
        self.relaxation = relaxation
        self.temperature = 1.0
        self.channel_theta: torch.Tensor | None = None
        self.row_theta: dict[str, torch.Tensor] = {}  # per row slot of each tensor
        self.col_theta: dict[str, torch.Tensor] = {}
        self.entry_theta: dict[str, float] = {}
        self.current: dict[str, torch.Tensor] = {}
        self.hard: dict[str, torch.Tensor] = {}  # the current masks, hard and consistent
        self.kept: torch.Tensor | None = None  # what the budget term counts (see compute)
        self.frozen: dict[str, torch.Tensor] | None = None
        self.units: AxisUnits | None = None

    def device(self) -> torch.device:
        return next(iter(self.latent.values())).device

    def normalised(self) -> dict[str, torch.Tensor]:
        """ŵ / s_t, s_t the tensor's mean |ŵ| when the method was attached (the entry factor)."""
        return {n: self.latent[n].reshape(-1) / self.scales[n] for n in self.layout.names}

    def relative_magnitudes(self) -> dict[str, torch.Tensor]:
        """|ŵ| over the tensor's *current* mean |ŵ| (a constant of the step): what the coarse
        factors aggregate. Pruned weights drift towards 0 during the fine-tune and would drag
        every row, column and channel mean below its fixed threshold with them (with the
        attach-time scale, most of gcn's rows were cut within a few epochs whatever the
        allocation); relative to the current mean, a group goes only when it weakens against the
        rest of its tensor."""
        out = {}
        for n in self.layout.names:
            w = self.latent[n].reshape(-1)
            scale = w.detach().abs().mean().clamp(min=torch.finfo(w.dtype).tiny)
            out[n] = w.abs() / scale
        return out

    def factors(self):
        """((entry, rows, cols, channels) relaxed at the current temperature, differentiable in
        the latent weights; the same hard, 0/1). The hard factors never cut a coupled group's
        best unit nor a tensor's best row or column (the allocation's rule), so the coarse
        factors cannot disconnect the network on their own."""
        layout = self.layout.to(self.device())
        signed = self.normalised()
        rows, cols, channels = layout.aggregates(self.relative_magnitudes())
        t = self.temperature

        def both(x, theta, signed_values=False, protect=None):
            theta = torch.as_tensor(theta, dtype=x.dtype, device=x.device)
            hard = band_stop(x.detach(), theta, None, signed=signed_values)
            if protect is not None:
                hard = torch.maximum(hard, protect.to(hard.dtype))
            return band_stop(x, theta, t, signed=signed_values), hard

        def best_line(agg, counts):
            scores = torch.where(counts > 0, agg.detach(), torch.full_like(agg, -1.0))
            scores[-1] = -1.0  # the sentinel slot
            protect = torch.zeros_like(scores, dtype=torch.bool)
            if bool((scores >= 0).any()):
                protect[torch.argmax(scores)] = True
            return protect

        pairs = {
            "entry": {n: both(signed[n], self.entry_theta[n], True) for n in layout.names},
            "rows": {
                n: both(rows[n], self.row_theta[n], protect=best_line(rows[n], layout.row_count[n]))
                for n in layout.names
            },
            "cols": {
                n: both(cols[n], self.col_theta[n], protect=best_line(cols[n], layout.col_count[n]))
                for n in layout.names
            },
        }
        scores = torch.where(
            layout.channel_count[:-1] > 0,
            channels[:-1].detach(),
            torch.full_like(channels[:-1], -1.0),
        )
        groups = layout.group_of_channel
        best = scores.new_full((layout.n_groups,), -1.0).scatter_reduce(
            0, groups, scores, "amax", include_self=True
        )
        protect = torch.cat([(scores == best[groups]) & (scores >= 0), protect_pad(scores)])
        theta_ch = torch.cat([self.channel_theta, self.channel_theta.new_ones(1)])
        channel_pair = both(channels, theta_ch.to(channels.device), protect=protect)
        relaxed = tuple(
            {n: pair[0] for n, pair in pairs[key].items()} for key in ("entry", "rows", "cols")
        )
        hard = tuple(
            {n: pair[1] for n, pair in pairs[key].items()} for key in ("entry", "rows", "cols")
        )
        return (*relaxed, channel_pair[0]), (*hard, channel_pair[1])

    def compute(self) -> dict[str, torch.Tensor]:
        """The masks of this step: the CTF product gated by hard consistency.

        ``ste``: the value of the hard product with the gradient of the relaxed one (the
        straight-through estimator on the whole product, so that an entry with two factors at 0
        still gets a gradient); ``soft``: the relaxed product itself. Either is gated by
        consistency (:meth:`consistency_gates`). The budget term reads ``self.kept``, the sum of
        these masks: with ``ste``, the number of consistent entries of the hard masks."""
        if self.frozen is not None:
            self.current = {
                n: m.to(self.device(), self.latent[n].dtype) for n, m in self.frozen.items()
            }
            self.hard = {n: m.bool() for n, m in self.current.items()}
            self.kept = None
            return self.current
        relaxed_factors, hard_factors = self.factors()
        relaxed = self.layout.compose(*relaxed_factors)
        with torch.no_grad():
            hard = self.layout.compose(*hard_factors)
        straight = {n: hard[n] + (m - m.detach()) for n, m in relaxed.items()}
        gates = self.consistency_gates(straight)
        masks = straight if self.relaxation == "ste" else relaxed
        self.current = {n: m * gates[n] for n, m in masks.items()}
        self.hard = {n: (hard[n] * gates[n].detach()) > 0.5 for n in masks}
        self.kept = sum(m.sum() for m in self.current.values())
        return self.current

    def consistency_gates(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per tensor in scope, a_source · c_target of every entry: hard accessibility and
        co-accessibility of ``masks`` on the unit graph, with tcp's straight-through step (so the
        budget term still has a gradient when a cut leaves units dead). Tensors out of scope
        count as fully kept."""
        device = self.device()
        if self.units is None or self.units.device != device:
            self.units = AxisUnits(self.graph, device)
        matrices = {}
        for b in self.graph.prunable:
            m = masks[b.name] if b.name in masks else torch.ones_like(self.latent[b.name])
            matrices[b.name] = position_matrix(m, b)
        acc, coacc = propagate(self.graph, matrices, reach_step, self.units)
        return {
            b.name: gate(torch.ones_like(masks[b.name]), b, acc, coacc, self.units.weights[b.name])
            for b in self.targets
        }

    def structure(self) -> dict[str, torch.Tensor]:
        """Boolean, per tensor: entries whose coarse factors (channels, row, column) are all on."""
        with torch.no_grad():
            entry, rows, cols, channels = self.factors()[1]
            ones = {n: torch.ones_like(e) for n, e in entry.items()}
            coarse = self.layout.compose(ones, rows, cols, channels)
        return {n: m > 0.5 for n, m in coarse.items()}


class CTFMask(MaskParametrization):
    """W -> W ⊙ M, M taken from the controller's latest computation."""

    def __init__(self, controller: CoarseToFine, name: str):
        super().__init__()
        object.__setattr__(self, "controller", controller)  # shared, not a submodule
        self.name = name

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.delivered is None and self.name not in self.controller.current:
            return weight
        return super().forward(weight)

    def mask(self, weight: torch.Tensor) -> torch.Tensor:
        return self.controller.current[self.name]


# ---------------------------------------------------------------------------- the method
def flops_per_weight(model: torch.nn.Module, names: list[str]) -> dict[str, float]:
    """FLOPs one weight of each tensor costs on one sample (32 frames): its module's FLOPs
    over its size; at least 2 (one multiply-add)."""
    per_module = {
        module: sum(ops.values()) for module, ops in forward_flop_counts(model, 32).items()
    }
    out = {}
    for name in names:
        module = name.rpartition(".")[0]
        numel = latent_weight(model, name).numel()
        out[name] = max(per_module.get(module, 0) / max(numel, 1), 2.0)
    return out


RELAXATIONS = ("ste", "soft")


@dataclass
class CTFOptions:
    channel_share: float = option(
        0.9,
        "ctf: share of the weights to remove that whole channels remove (a channel is a unit "
        "of the unit graph with its rows and columns in every tensor; compaction cuts it).",
    )
    line_share: float = option(
        0.05,
        "ctf: share of the weights to remove that whole rows and columns of single tensors "
        "remove; single entries remove the rest.",
    )
    budget_weight: float = option(5.0, "Weight λ of the budget term λ·((kept − c)/c)².")
    temperature_start: float = option(
        0.3, "Sigmoid temperature (× each tensor's threshold) at the start of the fine-tune."
    )
    temperature_end: float = option(
        0.03, "Sigmoid temperature at the end (annealed geometrically)."
    )
    order: str = option(
        "uniform",
        "ctf: which channels, rows and columns go first. uniform: the weakest channels of every "
        "group at the same pace, so each keeps the same share of its width; flops: those the "
        "fine (LAMP) allocation keeps the fewest weights of per FLOP they cost; density: the "
        "same per weight; mass: channels with the least magnitude per FLOP they cost (rows and "
        "columns as flops for mass and uniform).",
        choices=("flops", "density", "mass", "uniform"),
    )
    margin: float = option(
        0.5,
        "ctf: a kept channel, row or column is cut when its mean magnitude (relative to its "
        "tensor's) falls below this fraction of its value at the start; a cut one comes back "
        "above its start value over this fraction.",
    )
    crisp_at: float = option(
        0.75,
        "ctf: fraction of the fine-tune after which the masks are hard and fixed (the rest "
        "fine-tunes exactly the network that is shipped).",
    )
    batchnorm_recalibration: bool = option(
        True,
        "ctf: before each validation, recompute the batch-norm statistics of the delivered "
        "network from the training split. Channels come and go during the fine-tune, and the "
        "running averages then describe networks no longer computed (on stgcn the validation "
        "accuracy fell near chance in most epochs without it).",
    )
    relaxation: str = option(
        "ste",
        "ctf: the factors in the forward pass: ste (hard 0/1, sigmoid gradient) or soft "
        "(the sigmoids themselves until crisp-at).",
        choices=RELAXATIONS,
    )

    def __post_init__(self) -> None:
        for key in ("channel_share", "line_share"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise GcnshrinkError(
                    f"--{key.replace('_', '-')} must be in [0, 1], got {getattr(self, key)}"
                )
        if self.channel_share + self.line_share > 1.0:
            raise GcnshrinkError(
                "--channel-share plus --line-share must be at most 1, got "
                f"{self.channel_share + self.line_share:g}"
            )
        check_positive(self, "budget_weight")
        check_annealing(self, "temperature_start", "temperature_end")
        if not 0.0 < self.margin < 1.0:
            raise GcnshrinkError(f"--margin must be in (0, 1), got {self.margin}")
        if not 0.0 < self.crisp_at <= 1.0:
            raise GcnshrinkError(f"--crisp-at must be in (0, 1], got {self.crisp_at}")


@register_method
class CoarseToFinePruning(PruningMethod):
    name = "ctf"
    Options = CTFOptions
    # exactly the budget: the deliverable is the exact consistent projection
    exact_rate = True

    @property
    def recalibrate_batchnorm(self) -> bool:
        return self.options.batchnorm_recalibration

    def __init__(self, spec, options=None, seed: int = 0):
        super().__init__(spec, options, seed)
        if spec.scope != "global":
            raise GcnshrinkError(
                "ctf removes channels shared by several tensors; use --scope global"
            )

    def setup(self) -> None:
        latent = self.latent()
        names = list(latent)
        shapes = {n: w.shape for n, w in latent.items()}
        self.layout = EntryLayout(self.graph, self.targets, shapes)
        self.target_budget = self.budget(self.spec.rate)
        scales = {}
        for name, w in latent.items():
            mean = float(w.detach().abs().mean()) if w.numel() else 0.0
            scales[name] = mean if mean > 0 else 1.0
        latent_all = {b.name: latent_weight(self.model, b.name) for b in self.graph.prunable}
        self.controller = CoarseToFine(
            self.graph, self.targets, self.layout, latent_all, scales, self.options.relaxation
        )
        by_flops = self.options.order != "density"
        cost = flops_per_weight(self.model, names) if by_flops else None
        with torch.no_grad():
            self.allocation = Allocation(
                self.layout.to(torch.device("cpu")),
                {n: w.detach().cpu() for n, w in latent.items()},
                self.target_budget,
                self.options.channel_share,
                self.options.line_share,
                self.options.margin,
                self.dense_masks(),
                cost,
                order=self.options.order,
            )
        alloc = self.allocation
        self.controller.channel_theta = alloc.channel_theta.to(torch.float32)
        self.controller.row_theta = {n: t.to(torch.float32) for n, t in alloc.row_theta.items()}
        self.controller.col_theta = {n: t.to(torch.float32) for n, t in alloc.col_theta.items()}
        self.controller.entry_theta = dict(alloc.entry_theta)
        self.controller.temperature = self.options.temperature_start
        for name in names:
            self.register(name, CTFMask(self.controller, name))
        with torch.no_grad():  # the forward pass is masked even before the first on_step
            self.controller.compute()

    # ---------------------------------------------------------------- training
    def temperature_at(self, progress: float) -> float:
        start, end = self.options.temperature_start, self.options.temperature_end
        t = min(max(progress / self.options.crisp_at, 0.0), 1.0)
        return start * (end / start) ** t

    def on_step(self, progress: float) -> None:
        if self.controller.frozen is None and progress >= self.options.crisp_at:
            self.freeze()
        self.controller.temperature = self.temperature_at(progress)
        self.controller.compute()

    def freeze(self) -> None:
        """Crisp from here on: the deliverable of the current state becomes the fixed mask."""
        masks = self.compute_masks(self.spec.rate)
        self.controller.frozen = {n: m.to(torch.float32) for n, m in masks.items()}

    def loss(self) -> torch.Tensor | None:
        if self.controller.frozen is not None:
            return None
        if not self.controller.current:
            self.controller.compute()
        kept = self.controller.kept
        c = self.target_budget
        return self.options.budget_weight * ((kept - c) / c) ** 2

    def kept_count(self) -> int:
        return int(sum(int(m.sum()) for m in self.controller.hard.values()))

    def status(self) -> str:
        state = (
            "crisp"
            if self.controller.frozen is not None
            else f"T {self.controller.temperature:.3f}"
        )
        return f"mask {self.kept_count():,} / budget {self.target_budget:,}, {state}"

    # ---------------------------------------------------------------- result
    def compute_masks(self, rate: float) -> dict[str, torch.Tensor]:
        """The exact consistent projection of the trained mask (ranked first), then of the entries
        inside the kept coarse structure, then of the rest, by LAMP score."""
        if self.controller.frozen is not None:
            return {n: m.bool().clone() for n, m in self.controller.frozen.items()}
        with torch.no_grad():
            self.controller.compute()
            trained = {n: m.cpu() for n, m in self.controller.hard.items()}
            structure = {n: s.cpu() for n, s in self.controller.structure().items()}
            scores = {n: lamp_scores(w.detach()).cpu() for n, w in self.latent().items()}
        lead = 2.0  # a LAMP score is at most 1
        preferred, trained_count = {}, 0
        for n, m in scores.items():
            preferred[n] = m + lead * structure[n].to(m.dtype) + 2 * lead * trained[n].to(m.dtype)
            trained_count += int(trained[n].sum())
        masks = self.project(preferred, self.budget(rate), k_hint=max(trained_count, 1))
        device = next(iter(self.latent().values())).device
        return {n: masks[n].to(device) for n in self.layout.names}

    def state_dict(self) -> dict:
        c = self.controller
        return {
            "scales": dict(c.scales),
            "channel_theta": c.channel_theta.clone().cpu(),
            "row_theta": {n: t.clone().cpu() for n, t in c.row_theta.items()},
            "col_theta": {n: t.clone().cpu() for n, t in c.col_theta.items()},
            "entry_theta": dict(c.entry_theta),
            "temperature": c.temperature,
            "frozen": None
            if c.frozen is None
            else {n: m.bool().cpu() for n, m in c.frozen.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        c = self.controller
        c.scales = {k: float(v) for k, v in state["scales"].items()}
        c.channel_theta = state["channel_theta"].to(torch.float32)
        c.row_theta = {k: v.to(torch.float32) for k, v in state["row_theta"].items()}
        c.col_theta = {k: v.to(torch.float32) for k, v in state["col_theta"].items()}
        c.entry_theta = {k: float(v) for k, v in state["entry_theta"].items()}
        c.temperature = float(state["temperature"])
        frozen = state.get("frozen")
        c.frozen = None if frozen is None else {k: v.to(torch.float32) for k, v in frozen.items()}
        c.current = {}
        with torch.no_grad():
            c.compute()


# ---------------------------------------------------------------------------- reporting
def removed_by_granularity(graph: UnitGraph, masks: dict[str, torch.Tensor]) -> dict:
    """How the removed entries of ``masks`` (every prunable tensor in them) split by granularity:
    entries of a removed **channel** (a unit of a coupled group none of whose entries is kept, in
    any tensor), then of a removed **row** or **column** of their tensor (a hidden unit that
    receives, or sends, no kept entry in that tensor), then single **entries**. Each removed entry
    counts once, at the coarsest granularity that explains it."""
    bindings = [b for b in graph.prunable if b.name in masks]
    shapes = {b.name: masks[b.name].shape for b in bindings}
    layout = EntryLayout(graph, bindings, shapes)
    kept = {b.name: masks[b.name].reshape(-1).bool() for b in bindings}
    channel_alive = torch.zeros(layout.n_channels + 1, dtype=torch.long)
    for n, k in kept.items():
        channel_alive.index_add_(
            0, layout.src_channel[n][k], torch.ones(int(k.sum()), dtype=torch.long)
        )
        channel_alive.index_add_(
            0, layout.dst_channel[n][k], torch.ones(int(k.sum()), dtype=torch.long)
        )
    channel_dead = channel_alive == 0
    channel_dead[-1] = False
    counts = dict.fromkeys(GRANULARITIES, 0)
    for n, k in kept.items():
        removed = ~k
        by_channel = channel_dead[layout.src_channel[n]] | channel_dead[layout.dst_channel[n]]
        row_alive = torch.bincount(layout.rows[n][k], minlength=layout.n_rows[n] + 1) > 0
        col_alive = torch.bincount(layout.cols[n][k], minlength=layout.n_cols[n] + 1) > 0
        row_alive[-1] = col_alive[-1] = True
        by_row = ~row_alive[layout.rows[n]] & ~by_channel
        by_col = ~col_alive[layout.cols[n]] & ~by_channel & ~by_row
        by_entry = ~(by_channel | by_row | by_col)
        counts["channels"] += int((removed & by_channel).sum())
        counts["rows"] += int((removed & by_row).sum())
        counts["columns"] += int((removed & by_col).sum())
        counts["entries"] += int((removed & by_entry).sum())
    total_removed = sum(counts.values())
    return {
        "removed": total_removed,
        "counts": counts,
        "shares": {k: (v / total_removed if total_removed else 0.0) for k, v in counts.items()},
    }
