"""The exact consistent projection: exactly ``budget`` kept entries, all consistent, preferring
high scores.

Every method that must deliver a topologically consistent mask at an exact budget uses it: ``tcp``
for its deliverable and its starting point, ``tcp-posthoc`` for its fixed masks, and any method that
wants to hand a connected network to compaction. It depends only on the unit graph and on scores.
"""

from __future__ import annotations

import heapq

import numpy as np
import torch

from gcnshrink.graph.propagation import consistent, reachability
from gcnshrink.graph.units import UnitGraph


def _normalised_scores(
    scores: dict[str, torch.Tensor], per_tensor_ranks: bool
) -> dict[str, torch.Tensor]:
    """Raw scores on one scale, or each tensor's quantiles (so each keeps about its share)."""
    if not per_tensor_ranks:
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
    budget: int,
    *,
    per_tensor_ranks: bool = False,
    dense_masks: dict[str, torch.Tensor] | None = None,
    k_hint: int | None = None,
) -> dict[str, torch.Tensor]:
    """Exactly c = ``budget`` kept entries of the tensors in ``scores``, all consistent, preferring
    high scores.

    Take the top-k entries by score and keep their consistent part. That part only grows with k
    (adding an edge never makes another edge inconsistent), so a binary search finds the smallest k
    whose consistent part holds at least c entries. If it holds more, the lowest-scored entries are
    trimmed, but only those whose removal leaves every unit's accessibility and co-accessibility as
    it was (the target keeps another incoming edge, the source another outgoing one), so the result
    stays consistent. ``dense_masks`` are the tensors out of scope (kept whole, outside the budget).

    With ``per_tensor_ranks`` (``--scope layer``: the budget is the sum of the per-tensor
    budgets) scores are ranked within each tensor, so each tensor keeps about its share.

    ``k_hint`` is a guess of the k that suffices (tcp: the size of the trained mask, which ranks
    first). The search then gallops up from c in steps that start at ``k_hint - c`` and doubles,
    and bisects the last step: a handful of consistency passes instead of log2(n).
    """
    dense_masks = dense_masks or {}
    names = list(scores)
    sizes = {n: scores[n].numel() for n in names}
    ranked = _normalised_scores(
        {n: scores[n].detach().float().cpu() for n in names}, per_tensor_ranks
    )
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
        cons = consistent(graph, split(keep))
        return {n: cons[n] for n in names}

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
    if count(best) != budget:
        # every removal from the smallest consistent top-k set drags more than the excess along
        # (a single chain at a tiny budget): build the budget from the best shortest path instead
        best = _path_then_fill(graph, ranked, budget, dense_masks)
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
    acc, coacc = reachability(graph, full)
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
            if link.semantics.carries_signal and acc[link.source][u]:
                in_support[link.target][v] += 1
                signal_out.setdefault((link.source, u), []).append((link.target, v))
            gated = link.semantics.coaccessible_through_signal_only
            useful = coacc[link.target][v] and (not gated or acc[link.target][v])
            if useful:
                out_support[link.source][u] += 1
                links_in.setdefault((link.target, v), []).append((link.source, u))
                if gated:
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
        after = {n: c.reshape(-1) for n, c in consistent(graph, full).items() if n in flat}
        dropped = sum(int(flat[n].sum()) - int(after[n].sum()) for n in names)
        deficit = dropped - excess
        if deficit < 0:
            continue
        full = {**dense_masks, **{n: after[n].view(masks[n].shape) for n in names}}
        acc, coacc = reachability(graph, full)
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


def _path_then_fill(
    graph: UnitGraph,
    scores: dict[str, torch.Tensor],
    budget: int,
    dense_masks: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Exactly ``budget`` consistent entries built up from nothing: the input-to-output path with
    the fewest weights (the best-scored among them), then, while the budget is not reached, the
    best-scored entries that are consistent given what is kept (source accessible, target
    co-accessible; adding one never breaks another). Only tiny budgets come here."""
    names = list(scores)
    keep = {n: torch.zeros(scores[n].shape, dtype=torch.bool) for n in names}
    for name, entry in _best_shortest_path(graph, scores, dense_masks):
        keep[name].view(-1)[entry] = True
    while (kept := sum(int(k.sum()) for k in keep.values())) < budget:
        acc, coacc = reachability(graph, {**dense_masks, **keep})
        pool = []
        for n in names:
            b = graph.binding_by_name[n]
            src, dst = graph.entry_units(b, keep[n].shape)
            eligible = ~keep[n].view(-1) & acc[b.source][src] & coacc[b.target][dst]
            idx = torch.nonzero(eligible).squeeze(1)
            pool += [(float(scores[n].view(-1)[i]), n, int(i)) for i in idx]
        if not pool:
            break
        pool.sort(key=lambda c: -c[0])
        for _, n, i in pool[: budget - kept]:
            keep[n].view(-1)[i] = True
    return keep


def _best_shortest_path(
    graph: UnitGraph, scores: dict[str, torch.Tensor], dense_masks: dict[str, torch.Tensor]
) -> list[tuple[str, int]]:
    """(tensor, flat entry) of each weight on an input-to-output path through signal-carrying
    edges with the fewest weights in scope, ties broken toward high scores (Dijkstra; tensors out
    of scope and links cost nothing)."""
    top = max((float(s.max()) for s in scores.values() if s.numel()), default=1.0) or 1.0
    # outgoing edges of each (space, unit): the best entry of each (source, target unit) pair
    edges: dict[tuple[str, int], list[tuple[str, int, float, str, int]]] = {}
    for b in graph.prunable:
        if b.name in scores:
            flat = scores[b.name].reshape(-1)
        elif b.name in dense_masks:
            flat = torch.ones(int(dense_masks[b.name].numel()))
        else:
            continue
        src, dst = graph.entry_units(
            b, torch.Size(dense_masks.get(b.name, scores.get(b.name)).shape)
        )
        order = torch.argsort(flat, descending=True, stable=True)
        in_scope = b.name in scores
        seen: set[tuple[int, int]] = set()
        for e, s_unit, t_unit, value in zip(
            order.tolist(), src[order].tolist(), dst[order].tolist(), flat[order].tolist(),
            strict=True,
        ):  # fmt: skip
            if (s_unit, t_unit) in seen:
                continue
            seen.add((s_unit, t_unit))
            cost = 1.0 + 1e-3 * (1.0 - value / top) if in_scope else 0.0
            edges.setdefault((b.source, s_unit), []).append((b.target, t_unit, cost, b.name, e))
    heap = [(0.0, s.name, u) for s in graph.spaces if s.role == "input" for u in range(s.width)]
    best = {(space, u): 0.0 for _, space, u in heap}
    came_from: dict[tuple[str, int], tuple[tuple[str, int], str | None, int]] = {}
    heapq.heapify(heap)
    while heap:
        cost, space, unit = heapq.heappop(heap)
        if cost > best.get((space, unit), float("inf")):
            continue
        if graph.space_by_name[space].role == "output":
            path, node = [], (space, unit)
            while node in came_from:
                node, name, entry = came_from[node]
                if name is not None and name in scores:
                    path.append((name, entry))
            return path
        steps = list(edges.get((space, unit), ()))
        for link in graph.links:
            if link.source == space and link.semantics.carries_signal:
                for t in link.target_units[link.source_units == unit].tolist():
                    steps.append((link.target, t, 0.0, None, -1))
        for target, t_unit, c, name, e in steps:
            node = (target, int(t_unit))
            if cost + c < best.get(node, float("inf")):
                best[node] = cost + c
                came_from[node] = ((space, unit), name, e)
                heapq.heappush(heap, (cost + c, target, int(t_unit)))
    return []
