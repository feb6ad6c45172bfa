"""Structural compaction: remove dead units so a pruned model really gets smaller.

Pruning leaves exact zeros in the weights (the masks are baked in). Compaction reads the model's unit
graph (:mod:`gcnshrink.graph`), decides which units of each hidden space can go without changing the
logits, folds the constant activations of removed units into the next biases, cuts every tensor
that indexes a removed unit, and builds a smaller model of the same architecture from
``model.compacted_config(kept)``. The logits of the compacted model are checked on a calibration
batch of real inputs; a difference above ``tolerance`` raises :class:`CompactionError`.

Rules (docs/compaction.md explains them with examples)
------------------------------------------------------
Masks are ``masks_from_weights(graph, state)``: an entry is kept iff its weight is nonzero.

1. Only ``hidden`` spaces shrink; ``input`` and ``output`` spaces never do. A space that is the
   target of a ``flatten`` link is *derived*: its unit (v, c) is kept iff channel c of the source
   space is kept; it is never decided on its own.
2. A unit that is not co-accessible is *useless*: nothing it computes reaches the output, so it is
   removed without any fold.
3. A unit that is not accessible does not depend on the input. Its activation is measured with a
   forward hook at ``graph.probes[space]`` on the calibration batch, in eval mode.
   - identically zero: removed (*zero*);
   - the same value everywhere (every sample, frame and joint, up to rounding: a spread of at most
     64 float eps times the largest activation of the space), and every consumer that still has a
     live entry from it folds constants exactly (``folds_constant`` and a ``bias``): removed, and
     ``weight · constant`` summed over every axis but the target one is added to the consumer's
     bias (*constant folded*). A consumer reached through a ``flatten`` link sees channel c's
     constant at every flat unit (v, c);
   - otherwise kept and reported (*constant not foldable*, *input-independent, not constant*).
4. Coupled spaces keep the same unit set.
   - Spaces joined by ``identity`` links (residual chains) form groups: unit index i goes only if it
     is removable in every member; each member folds its own measured constant, and the identity
     links inside the group need no fold because every member loses the unit.
   - Attention pairs ``(query_space, key_space)``: dimension i of a head goes iff it is not
     co-accessible or the head keeps no output unit (*useless*), or key i is input-independent and constant (then q_i·k_i is constant
     along every softmax row, which softmax ignores: *constant key*; when the key steers through
     unnormalised links, scores without a softmax, only an exactly zero key), or query i is
     input-independent and exactly zero (*zero*). No fold is needed; the attention scale is stored
     in the config and does not change.
5. Removing units only removes entries, so a unit that fed nothing but removed units becomes useless
   in turn: rules 2-4 are repeated on the masks restricted to kept units until nothing changes
   (this makes compaction idempotent). A unit keeps the reason it was first removed for.
6. A hidden space never becomes empty (ST-GCN's batch norms cannot have zero channels): if every
   unit of a space (or identity group) would go, its lowest-index unit stays, unfolded, which is
   exact whatever its reason was. Attention dimensions may all go (the gcn model handles heads
   without query/key dimensions). A graph with ``writers_stay`` (a traced user model, whose
   layers cannot have zero channels) keeps the same way one unit of every weight's output and
   input (a branch of a concatenation or of a split, a head's query/key dimensions).
7. Every tensor with a binding is cut along every bound axis (positions whose unit is kept, after
   the folds were applied to the biases); tensors without a binding (adjacency, edge importance,
   ``data_bn``, ``num_batches_tracked``) are copied unchanged. The compacted model is built with
   ``create_model(model.arch, **model.compacted_config(kept))``, loaded strictly and verified.
8. ``align`` N > 1 (``--align N``): every space decided unit by unit (a residual group together)
   keeps a multiple of N units, or all of them, by *restoring* removable units: the strongest
   first (summed |weight| of the entries they receive and send in the pruned model), each kept
   with the weights it has there, unfolded (*restored to align the width*). Every removable unit
   is exact to keep (useless: nothing it sends reaches a kept output; zero or constant: it
   computes the value it was measured at), so the logits do not change. A restored unit can keep
   others (a constant that could only be folded into it): rules 2-7 and the alignment are
   repeated until no unit is added; in that rare case a width can end above its multiple.
   Attention query/key dimensions and derived spaces are not aligned on their own.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from torch.nn.utils import parametrize

from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph import UnitGraph, masks_from_weights
from gcnshrink.graph.propagation import reachability
from gcnshrink.models.registry import SkeletonModel, create_model

# why a unit was removed
USELESS = "useless"
ZERO = "zero"
CONSTANT_FOLDED = "constant folded"
CONSTANT_KEY = "constant key"
DERIVED = "derived"
# why an input-independent (or removable) unit was kept anyway
KEPT_NOT_FOLDABLE = "constant not foldable"
KEPT_NOT_CONSTANT = "input-independent, not constant"
KEPT_NOT_MEASURED = "input-independent, no probe"
KEPT_COUPLED = "removable here, not in a coupled space"
KEPT_LAST_UNIT = "last unit of the space"
KEPT_ALIGNED = "restored to align the width"

# A float computation of an input-independent unit is not bit-identical everywhere: the gcn's
# row-stochastic aggregation sums a few dozen products, and a small unit can be the difference of
# large terms. Rounding errors scale with the magnitudes flowing through the layer, not with the
# unit's own value, so "constant" allows a spread of a few dozen epsilons of the largest activation
# of the whole space. Real variation (a border frame of a padded convolution, a joint-dependent
# aggregation) is far larger; what slips through is caught by the logit check.
CONSTANT_EPS_FACTOR = 64


class CompactionError(GcnshrinkError):
    """The compacted model does not reproduce the original logits within the tolerance."""


# ---------------------------------------------------------------------------- results
@dataclass
class SpaceReport:
    """What compaction did to one unit space. Unit indices refer to the original model."""

    role: str
    width_before: int
    width_after: int
    removed: dict[str, list[int]] = field(default_factory=dict)  # reason -> units
    kept_notes: dict[str, list[int]] = field(default_factory=dict)  # reason kept anyway -> units

    def to_dict(self) -> dict:
        return {
            "role": self.role,
            "width_before": self.width_before,
            "width_after": self.width_after,
            "removed": self.removed,
            "kept_notes": self.kept_notes,
        }


@dataclass
class CompactionPlan:
    """The decision, before anything is built: kept units, reasons and constants to fold."""

    graph: UnitGraph
    kept: dict[str, torch.Tensor]  # space -> bool per unit
    removed: dict[str, dict[int, str]]  # space -> {unit: reason}
    kept_notes: dict[str, dict[int, str]]  # space -> {unit: why an input-independent unit stayed}
    constants: dict[str, torch.Tensor]  # space -> float64 constant of each folded unit, else 0
    original_logits: torch.Tensor  # logits of the original model on the calibration batch


@dataclass
class CompactionResult:
    """The compacted model and the measured report."""

    model: SkeletonModel
    kept: dict[str, torch.Tensor]
    spaces: dict[str, SpaceReport]
    params_before: int
    params_after: int
    max_abs_logit_diff: float
    relative_diff: float

    def to_dict(self) -> dict:
        """JSON-ready report (the model itself is left out)."""
        return {
            "arch": self.model.arch,
            "config": self.model.config,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "max_abs_logit_diff": self.max_abs_logit_diff,
            "relative_diff": self.relative_diff,
            "spaces": {name: report.to_dict() for name, report in self.spaces.items()},
        }


# ---------------------------------------------------------------------------- measurement
@dataclass
class UnitActivity:
    """Per-unit extremes and mean of one space's activation over the calibration batch."""

    minimum: torch.Tensor  # float64, one per unit
    maximum: torch.Tensor
    mean: torch.Tensor
    eps: float  # machine epsilon of the dtype the activation was computed in

    @property
    def is_zero(self) -> torch.Tensor:
        return (self.minimum == 0) & (self.maximum == 0)

    @property
    def is_constant(self) -> torch.Tensor:
        if self.minimum.numel() == 0:
            return torch.zeros(0, dtype=torch.bool)
        space_scale = float(torch.maximum(self.minimum.abs(), self.maximum.abs()).max())
        return (self.maximum - self.minimum) <= CONSTANT_EPS_FACTOR * self.eps * space_scale


def _measure(
    model: SkeletonModel, graph: UnitGraph, calibration: torch.Tensor
) -> tuple[dict[str, UnitActivity], torch.Tensor]:
    """Run the calibration batch once in eval mode: per-unit activity of every probed space and
    the logits. Hooks reduce each activation to per-unit statistics at once, so memory stays small."""
    totals: dict[str, dict] = {}
    handles = []

    def make_hook(space: str, input_of: bool, channel_dim: int):
        def hook(module, args, output):
            activation = (args[0] if input_of else output).detach()
            width = graph.width(space)
            if activation.shape[channel_dim] != width:
                raise ValueError(
                    f"probe of {space} sees {activation.shape[channel_dim]} channels on axis "
                    f"{channel_dim}, the graph says {width}"
                )
            if width == 0:
                return  # a space emptied by an earlier compaction has nothing to measure
            per_unit = activation.movedim(channel_dim, 0).reshape(width, -1).double()
            entry = totals.setdefault(
                space,
                {
                    "min": torch.full((width,), math.inf, dtype=torch.float64),
                    "max": torch.full((width,), -math.inf, dtype=torch.float64),
                    "sum": torch.zeros(width, dtype=torch.float64),
                    "count": 0,
                    "eps": torch.finfo(activation.dtype).eps,
                },
            )
            entry["min"] = torch.minimum(entry["min"], per_unit.amin(dim=1).cpu())
            entry["max"] = torch.maximum(entry["max"], per_unit.amax(dim=1).cpu())
            entry["sum"] += per_unit.sum(dim=1).cpu()
            entry["count"] += per_unit.shape[1]

        return hook

    for space, probe in graph.probes.items():
        module = model.get_submodule(probe.module)
        handles.append(
            module.register_forward_hook(make_hook(space, probe.input_of, probe.channel_dim))
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = _run(model, calibration)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    activity = {
        space: UnitActivity(t["min"], t["max"], t["sum"] / max(t["count"], 1), t["eps"])
        for space, t in totals.items()
    }
    return activity, logits


def _run(model: SkeletonModel, calibration: torch.Tensor) -> torch.Tensor:
    try:
        return model(calibration)
    except ValueError as error:  # the models raise ValueError for inputs they cannot take
        raise GcnshrinkError(f"calibration batch does not fit the model: {error}") from None


# ---------------------------------------------------------------------------- graph structure
def _kept_from_removed(
    graph: UnitGraph, removed: dict[str, dict[int, str]]
) -> dict[str, torch.Tensor]:
    kept = {}
    for space in graph.spaces:
        mask = torch.ones(space.width, dtype=torch.bool)
        if removed[space.name]:
            mask[list(removed[space.name])] = False
        kept[space.name] = mask
    return graph.with_derived(kept)


def _restricted_masks(
    graph: UnitGraph, masks: dict[str, torch.Tensor], kept: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Masks with every entry that touches a removed unit dropped."""
    restricted = {}
    for binding in graph.prunable:
        mask = masks[binding.name]
        source_units, target_units = graph.entry_units(binding, mask.shape)
        live = (
            mask.reshape(-1)
            & kept[binding.source][source_units]
            & kept[binding.target][target_units]
        )
        restricted[binding.name] = live.reshape(mask.shape)
    return restricted


def _folding_blocked(
    graph: UnitGraph,
    masks: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    attention_spaces: set[str],
) -> dict[str, torch.Tensor]:
    """Per space, units with a live entry in a consumer that cannot absorb a constant input."""
    blocked = {space.name: torch.zeros(space.width, dtype=torch.bool) for space in graph.spaces}
    for binding in graph.prunable:
        if binding.folds_constant and binding.bias is not None and binding.bias in state:
            continue
        mask = masks[binding.name]
        source_units, _ = graph.entry_units(binding, mask.shape)
        blocked[binding.source][source_units[mask.reshape(-1)]] = True
    for target in graph.derived:  # a flattened unit's consumer blocks its source channel
        source, source_unit = graph.derived_source(target)
        blocked[source][source_unit[blocked[target]]] = True
    for link in graph.links:
        # a steering source outside an attention pair has no fold rule: never drop its constant
        if link.semantics.steers and link.source not in attention_spaces:
            blocked[link.source][:] = True
    return blocked


# ---------------------------------------------------------------------------- the decision
def plan_compaction(
    model: SkeletonModel, calibration: torch.Tensor, *, align: int = 1
) -> CompactionPlan:
    """Decide which units go (and why) and which constants to fold, without building anything.

    ``align`` > 1: rule 8, every space decided unit by unit keeps a multiple of ``align`` units."""
    _check_model(model)
    align = check_align(align)
    calibration = _check_calibration(model, calibration)
    graph = model.unit_graph()
    state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    graph.check_against(state)
    masks = {name: mask.cpu() for name, mask in masks_from_weights(graph, state).items()}
    activity, logits = _measure(model, graph, calibration)
    forced = {space.name: torch.zeros(space.width, dtype=torch.bool) for space in graph.spaces}
    strength = _unit_strength(graph, state) if align > 1 else {}
    # rule 8: a restored unit can keep others (a constant folded into it where it cannot be), so
    # decide and align again until no unit is added; the forced set only grows, so this ends
    while True:
        plan = _decide(graph, masks, state, activity, logits, forced)
        if align == 1:
            return plan
        restore = _alignment(graph, plan, strength, align)
        grown = {name: forced[name] | restore[name] for name in forced}
        if all(torch.equal(grown[name], forced[name]) for name in forced):
            return plan
        forced = grown


def _decide(
    graph: UnitGraph,
    masks: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    activity: dict[str, UnitActivity],
    logits: torch.Tensor,
    forced: dict[str, torch.Tensor],
) -> CompactionPlan:
    """Rules 1-7 with the ``forced`` units of unit-by-unit spaces kept whatever their verdict."""
    derived = graph.derived
    attention_pairs = list(graph.attention_pairs)
    attention_spaces = {space for pair in attention_pairs for space in pair}
    # spaces decided unit by unit (rules 2 and 3); derived and attention spaces follow other rules
    decided_spaces = [
        s.name
        for s in graph.spaces
        if s.role == "hidden" and s.name not in derived and s.name not in attention_spaces
    ]
    groups = [g for g in graph.residual_groups if set(g) & set(decided_spaces)]
    for members in groups:
        if set(members) & (attention_spaces | set(derived)):
            raise ValueError(f"identity links join {members}, which compaction cannot couple")

    removed: dict[str, dict[int, str]] = {space.name: {} for space in graph.spaces}
    constants = {
        space.name: torch.zeros(space.width, dtype=torch.float64) for space in graph.spaces
    }
    kept_notes: dict[str, dict[int, str]] = {}
    # rule 5: decide again on the masks restricted to kept units until nothing more goes; removals
    # only grow, so this ends after a few rounds
    while True:
        kept = _kept_from_removed(graph, removed)
        live_masks = _restricted_masks(graph, masks, kept)
        accessible, coaccessible = reachability(graph, live_masks)
        blocked = _folding_blocked(graph, live_masks, state, attention_spaces)
        kept_notes = {space.name: {} for space in graph.spaces}
        changed = False

        for members in groups:
            verdicts = {
                space: _unit_verdicts(
                    graph.space_by_name[space].role,
                    accessible[space],
                    coaccessible[space],
                    activity.get(space),
                    blocked[space],
                )
                for space in members
            }
            changed |= _decide_group(
                members,
                kept[members[0]],
                forced[members[0]],
                verdicts,
                activity,
                removed,
                constants,
                kept_notes,
                stay=_last_of_writers(graph, members, kept, verdicts),
            )

        kept = _kept_from_removed(graph, removed)
        for query_space, key_space in attention_pairs:
            reasons = _attention_verdicts(
                graph, query_space, key_space, kept, accessible, coaccessible, activity
            )
            going = torch.tensor([r is not None for r in reasons], dtype=torch.bool)
            for unit in _last_of_segments(graph, query_space, kept[query_space], going):
                reasons[unit] = None
            for unit in kept[query_space].nonzero().flatten().tolist():
                if reasons[unit] is not None:
                    removed[query_space][unit] = reasons[unit]
                    removed[key_space][unit] = reasons[unit]
                    changed = True
        if not changed:
            break

    kept = _kept_from_removed(graph, removed)
    for target in derived:
        removed[target] = {int(u): DERIVED for u in (~kept[target]).nonzero().flatten()}
    return CompactionPlan(graph, kept, removed, kept_notes, constants, logits)


def _last_of_segments(
    graph: UnitGraph, space: str, kept: torch.Tensor, going: torch.Tensor
) -> list[int]:
    """Rule 6 for ``writers_stay`` graphs: of each weight writing into or reading from ``space``
    whose kept units there would all go, the lowest-index one."""
    if not graph.writers_stay:
        return []
    stay = []
    segments = [b.target_units for b in graph.incoming_weights[space]]
    segments += [b.source_units for b in graph.prunable if b.source == space]
    for units in segments:
        segment = torch.zeros_like(kept)
        segment[units] = True
        alive = segment & kept
        if alive.any() and not (alive & ~going).any():
            stay.append(int(alive.nonzero()[0]))
    return stay


def _last_of_writers(graph, members, kept, verdicts) -> torch.Tensor:
    """The units rule 6 keeps in an identity group for ``writers_stay`` graphs (as forced ones)."""
    width = len(kept[members[0]])
    going = torch.ones(width, dtype=torch.bool)
    for reasons, _ in verdicts.values():
        going &= torch.tensor([r is not None for r in reasons], dtype=torch.bool)
    out = torch.zeros(width, dtype=torch.bool)
    for space in members:
        out[_last_of_segments(graph, space, kept[members[0]], going)] = True
    return out


def _decide_group(
    members: list[str],
    still_kept: torch.Tensor,
    forced: torch.Tensor,
    verdicts: dict[str, tuple[list[str | None], list[str | None]]],
    activity: dict[str, UnitActivity],
    removed: dict[str, dict[int, str]],
    constants: dict[str, torch.Tensor],
    kept_notes: dict[str, dict[int, str]],
    stay: torch.Tensor | None = None,
) -> bool:
    """Remove the units removable in every member of an identity group (a lone space is a group
    of one), except the ``forced`` ones; record reasons, constants and notes. Returns whether
    anything was removed."""
    removable_everywhere = still_kept.clone()
    for reasons, _ in verdicts.values():
        removable_everywhere &= torch.tensor([r is not None for r in reasons], dtype=torch.bool)
    for space in members:
        for unit in (forced & removable_everywhere).nonzero().flatten().tolist():
            kept_notes[space][unit] = KEPT_ALIGNED
    removable_everywhere &= ~forced
    if still_kept.any() and torch.equal(removable_everywhere, still_kept):
        # the spaces would become empty: the first unit stays, unfolded (exact whatever its reason)
        last_unit = int(still_kept.nonzero()[0])
        removable_everywhere[last_unit] = False
        for space in members:
            kept_notes[space][last_unit] = KEPT_LAST_UNIT
    if stay is not None:  # rule 6 per weight (writers_stay graphs)
        for unit in (stay & removable_everywhere).nonzero().flatten().tolist():
            removable_everywhere[unit] = False
            for space in members:
                kept_notes[space][unit] = KEPT_LAST_UNIT
    changed = False
    for space in members:
        reasons, notes = verdicts[space]
        for unit in still_kept.nonzero().flatten().tolist():
            if removable_everywhere[unit]:
                removed[space][unit] = reasons[unit]
                if reasons[unit] == CONSTANT_FOLDED:
                    constants[space][unit] = activity[space].mean[unit]
                changed = True
            elif unit in kept_notes[space]:
                continue
            elif reasons[unit] is not None:
                kept_notes[space][unit] = KEPT_COUPLED
            elif notes[unit] is not None:
                kept_notes[space][unit] = notes[unit]
    return changed


def _unit_verdicts(
    role: str,
    accessible: torch.Tensor,
    coaccessible: torch.Tensor,
    activity: UnitActivity | None,
    blocked: torch.Tensor,
) -> tuple[list[str | None], list[str | None]]:
    """Rules 2 and 3 for one space: (removal reason or None, note for a kept unit or None)."""
    width = accessible.numel()
    reasons: list[str | None] = [None] * width
    notes: list[str | None] = [None] * width
    if role != "hidden":
        return reasons, notes
    if activity is None:
        is_zero = is_constant = torch.zeros(width, dtype=torch.bool)
    else:
        is_zero, is_constant = activity.is_zero, activity.is_constant
    for unit in range(width):
        if not coaccessible[unit]:
            reasons[unit] = USELESS
        elif accessible[unit]:
            continue
        elif activity is None:
            notes[unit] = KEPT_NOT_MEASURED
        elif is_zero[unit]:
            reasons[unit] = ZERO
        elif not is_constant[unit]:
            notes[unit] = KEPT_NOT_CONSTANT
        elif blocked[unit]:
            notes[unit] = KEPT_NOT_FOLDABLE
        else:
            reasons[unit] = CONSTANT_FOLDED
    return reasons, notes


def _attention_verdicts(
    graph: UnitGraph,
    query_space: str,
    key_space: str,
    kept: dict[str, torch.Tensor],
    accessible: dict[str, torch.Tensor],
    coaccessible: dict[str, torch.Tensor],
    activity: dict[str, UnitActivity],
) -> list[str | None]:
    """Rule 4 for one attention pair: removal reason of each query/key dimension, or None."""
    width = graph.width(query_space)
    steers_kept_output = torch.zeros(width, dtype=torch.bool)
    for link in graph.links:
        if link.semantics.steers and link.source == query_space and len(link.target_units):
            if kept[link.target][link.target_units].any():
                steers_kept_output[link.source_units] = True
    no_measure = torch.zeros(width, dtype=torch.bool)
    key = activity.get(key_space)
    query = activity.get(query_space)
    key_constant = ~accessible[key_space] & (key.is_constant if key else no_measure)
    query_zero = ~accessible[query_space] & (query.is_zero if query else no_measure)
    normalised = all(
        link.semantics.normalised
        for link in graph.links
        if link.semantics.steers and link.source == key_space
    )
    if not normalised:  # no softmax ignores a constant key: only a zero one goes
        query_zero |= ~accessible[key_space] & (key.is_zero if key else no_measure)
        key_constant = no_measure
    # a kept output can still be useless (the last unit of a space), so co-accessibility counts too
    useless = ~steers_kept_output | ~coaccessible[query_space] | ~coaccessible[key_space]
    reasons: list[str | None] = [None] * width
    for unit in range(width):
        if useless[unit]:
            reasons[unit] = USELESS
        elif key_constant[unit]:
            reasons[unit] = CONSTANT_KEY
        elif query_zero[unit]:
            reasons[unit] = ZERO
    return reasons


# ---------------------------------------------------------------------------- alignment (rule 8)
def check_align(align: object) -> int:
    if isinstance(align, bool) or not isinstance(align, int) or align < 1:
        raise GcnshrinkError(f"align must be a whole number >= 1, got {align!r}")
    return align


def _unit_strength(graph: UnitGraph, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per hidden space, the summed |weight| of every entry a unit receives or sends (a flattened
    unit's entries count for its source channel)."""
    strength = {s.name: torch.zeros(s.width, dtype=torch.float64) for s in graph.spaces}
    for binding in graph.prunable:
        weight = state[binding.name].detach().abs().reshape(-1).double().cpu()
        source_units, target_units = graph.entry_units(binding, state[binding.name].shape)
        for space, units in ((binding.source, source_units), (binding.target, target_units)):
            if space in graph.derived:
                space, source_unit = graph.derived_source(space)
                units = source_unit[units]
            strength[space].index_add_(0, units, weight)
    return strength


def _alignment(
    graph: UnitGraph, plan: CompactionPlan, strength: dict[str, torch.Tensor], align: int
) -> dict[str, torch.Tensor]:
    """The units to keep so that every space decided unit by unit (a residual group together)
    keeps a multiple of ``align`` units, or all of them: the kept ones that rule 8 already forced,
    plus the strongest removed ones (summed |weight| over the group's members, lowest index on a
    tie). Attention query/key dimensions and derived spaces are not aligned on their own."""
    forced = {space.name: torch.zeros(space.width, dtype=torch.bool) for space in graph.spaces}
    attention = {space for pair in graph.attention_pairs for space in pair}
    for members in graph.residual_groups:
        first = graph.space_by_name[members[0]]
        if first.role != "hidden" or set(members) & (attention | set(graph.derived)):
            continue
        kept = plan.kept[members[0]]
        restored = torch.tensor(
            [plan.kept_notes[members[0]].get(u) == KEPT_ALIGNED for u in range(first.width)],
            dtype=torch.bool,
        )
        count = int(kept.sum()) - int(restored.sum())
        target = min(-(-count // align) * align, first.width)
        score = sum(strength[space] for space in members)
        candidates = (~kept | restored).nonzero().flatten()
        order = candidates[torch.argsort(-score[candidates], stable=True)]
        mask = forced[members[0]]
        mask[order[: target - count]] = True
        for space in members[1:]:
            forced[space] = mask.clone()
    return forced


def kept_units(model: SkeletonModel, calibration: torch.Tensor) -> dict[str, torch.Tensor]:
    """The units compaction keeps in every space (bool per unit), without building the model."""
    return plan_compaction(model, calibration).kept


# ---------------------------------------------------------------------------- building
def _fold_constants(
    state: dict[str, torch.Tensor], plan: CompactionPlan
) -> dict[str, torch.Tensor]:
    """Add ``weight · constant`` of every removed constant unit to its consumers' biases."""
    graph = plan.graph
    constants = dict(plan.constants)
    for target in graph.derived:  # flat unit (v, c) carries channel c's constant
        source, source_unit = graph.derived_source(target)
        constants[target] = constants[source][source_unit]
    folded = dict(state)
    for binding in graph.prunable:
        values = constants[binding.source]
        if not values.any() or not binding.folds_constant or binding.bias is None:
            # the plan only removes a constant whose live entries all land in folding consumers
            continue
        weight = state[binding.name]
        per_position = values[binding.axes[binding.source_axis].units].to(weight.device)
        view = [1] * weight.ndim
        view[binding.source_axis] = -1
        other_axes = [axis for axis in range(weight.ndim) if axis != binding.target_axis]
        contribution = (weight.double() * per_position.view(view)).sum(dim=other_axes)
        bias = folded[binding.bias]
        if bias.shape != contribution.shape:
            raise ValueError(f"{binding.bias} has shape {tuple(bias.shape)}, cannot fold into it")
        folded[binding.bias] = (bias.double() + contribution).to(bias.dtype)
    return folded


def _cut(state: dict[str, torch.Tensor], plan: CompactionPlan) -> dict[str, torch.Tensor]:
    """Keep, along every bound axis, the positions whose unit is kept; copy unbound tensors."""
    cut = {}
    for name, tensor in state.items():
        binding = plan.graph.binding_by_name.get(name)
        if binding is not None:
            for axis, axis_map in binding.axes.items():
                positions = plan.kept[axis_map.space][axis_map.units].nonzero().flatten()
                tensor = tensor.index_select(axis, positions.to(tensor.device))
        cut[name] = tensor.clone()
    return cut


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def compact_model(
    model: SkeletonModel, calibration: torch.Tensor, *, tolerance: float = 1e-5, align: int = 1
) -> CompactionResult:
    """Remove the dead units of a pruned model and verify the logits on ``calibration``.

    ``align`` > 1 keeps every unit-by-unit space at a multiple of ``align`` units (rule 8).

    ``calibration`` is a batch of real inputs (N, C, T, V, M). The original model is not modified.
    Raises :class:`CompactionError` if the relative logit difference exceeds ``tolerance``.
    """
    if not (isinstance(tolerance, int | float) and math.isfinite(tolerance) and tolerance >= 0):
        raise GcnshrinkError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    plan = plan_compaction(model, calibration, align=align)
    calibration = _check_calibration(model, calibration)
    graph = plan.graph
    state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    compact_state = _cut(_fold_constants(state, plan), plan)

    config = model.compacted_config(plan.kept)
    with warnings.catch_warnings():
        # an emptied head or query/key block is a zero-element tensor; initialising it is moot
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        compacted = create_model(model.arch, **config)
    compacted.load_state_dict(compact_state, strict=True)
    reference = next(iter(model.parameters()))
    compacted.to(device=reference.device, dtype=reference.dtype)

    compacted.eval()
    with torch.no_grad():
        logits = _run(compacted, calibration)
    compacted.train(model.training)
    original = plan.original_logits
    max_abs_diff = float((logits.double() - original.double()).abs().max())
    max_abs_logit = float(original.double().abs().max())
    if max_abs_logit > 0:
        relative_diff = max_abs_diff / max_abs_logit
    else:
        relative_diff = 0.0 if max_abs_diff == 0 else math.inf

    spaces = {}
    for space in graph.spaces:
        by_reason: dict[str, list[int]] = {}
        for unit, reason in sorted(plan.removed[space.name].items()):
            by_reason.setdefault(reason, []).append(unit)
        notes: dict[str, list[int]] = {}
        for unit, note in sorted(plan.kept_notes.get(space.name, {}).items()):
            notes.setdefault(note, []).append(unit)
        spaces[space.name] = SpaceReport(
            role=space.role,
            width_before=space.width,
            width_after=int(plan.kept[space.name].sum()),
            removed=by_reason,
            kept_notes=notes,
        )
    result = CompactionResult(
        model=compacted,
        kept=plan.kept,
        spaces=spaces,
        params_before=_params(model),
        params_after=_params(compacted),
        max_abs_logit_diff=max_abs_diff,
        relative_diff=relative_diff,
    )
    if not relative_diff <= tolerance:
        raise CompactionError(
            f"compacted {model.arch} changes the logits by {max_abs_diff:.3g} "
            f"(relative {relative_diff:.3g} > tolerance {tolerance:g}); its unit graph does not "
            "describe the model"
        )
    return result


# ---------------------------------------------------------------------------- input checks
def _check_model(model: object) -> None:
    if not isinstance(model, SkeletonModel):
        raise GcnshrinkError(f"compaction needs a gcnshrink model, got {type(model).__name__}")
    if any(parametrize.is_parametrized(module) for module in model.modules()):
        raise GcnshrinkError(
            "the model still has pruning parametrizations; bake the masks in first "
            "(remove_parametrizations(..., leave_parametrized=True))"
        )


def _check_calibration(model: SkeletonModel, calibration: object) -> torch.Tensor:
    if not isinstance(calibration, torch.Tensor):
        raise GcnshrinkError(
            f"calibration must be a tensor (N, C, T, V, M), got {type(calibration).__name__}"
        )
    _, channels, _, joints, persons = model.input_shape(1, 1)
    expected = (channels, joints, persons)
    shape = tuple(calibration.shape)
    if (
        calibration.ndim != 5
        or calibration.shape[0] == 0
        or (
            shape[1],
            shape[3],
            shape[4],
        )
        != expected
    ):
        raise GcnshrinkError(
            f"calibration batch has shape {shape}; the model takes (N>0, {expected[0]}, T, "
            f"{expected[1]}, {expected[2]})"
        )
    if not calibration.is_floating_point():
        calibration = calibration.float()
    if not torch.isfinite(calibration).all():
        raise GcnshrinkError("calibration batch contains NaN or infinite values")
    reference = next(iter(model.parameters()))
    return calibration.to(device=reference.device, dtype=reference.dtype)
