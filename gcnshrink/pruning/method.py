"""The method contract: what a pruning method is, and the one way its masks become weights.

A method lives in one file. It declares

- ``name`` and, as a dataclass, its ``Options`` (each field's ``metadata["help"]`` becomes the help
  of a ``--flag`` of ``gcnshrink prune``; ``metadata["choices"]`` is checked for it; the dataclass
  is also what :meth:`PruningMethod.describe` records in the checkpoint);
- ``setup()``: called by :meth:`PruningMethod.attach` once the tensors in scope are known; it
  registers a :class:`MaskParametrization` (``torch.nn.utils.parametrize``) on each of them;
- the training hooks: ``loss()`` (a term added to the task loss), ``on_step(progress)`` (called
  before every training forward pass, with progress in [0, 1]: schedules, annealing, masks that
  depend on the weights), ``on_labels(y)`` (the step's labels, after ``on_step``, for a loss term
  that needs them; a loop that never calls it gets the term without them),
  ``param_groups(model)`` (optimizer groups, e.g. its own learning rates), ``ready()`` (whether
  the current state may be selected on validation), ``selection_rates()`` (the rates whose mean
  validation accuracy scores an epoch), ``selection_start()`` (the fraction of the fine-tune
  before which no epoch is scored), ``averaged_epochs()`` (N > 1: the average of the last N
  epochs' weights is also a candidate for selection) and ``status()``;
- the result: ``masks_at(rate)``, boolean keep-masks for any rate it can serve (``serves(rate)``):
  the one rate it trained for, or, for a multi-rate method, any rate in (0, 1); and
  ``scales_at(rate)``, None (every kept weight as trained) or per-tensor multipliers of the kept
  weights (mrmp between two trained rates, ``--bridge``);
- ``state_dict()`` / ``load_state_dict()``: what it must keep in a checkpoint beyond the weights
  (a multi-rate method's prior, say) so that ``masks_at`` works again after loading.

:func:`bake` turns a model and masks into a plain model with ``remove_parametrizations(...,
leave_parametrized=True)``. Training needs no special model code, and any training loop works:

    method = create_method("tcp", PruneSpec((0.99,)))
    method.attach(model, model.unit_graph())
    for progress, (x, y) in my_batches():
        method.on_step(progress)
        loss = task_loss(model(x), y) + (method.loss() or 0)
        ...
    bake(model, method.masks_at(0.99))   # model now holds the pruned weights, no parametrizations
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import math
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph import TensorBinding, UnitGraph
from gcnshrink.graph.projection import consistent_budget_masks
from gcnshrink.pruning.budget import PruneSpec, budget, budget_per_tensor, global_budget


@dataclasses.dataclass
class NoOptions:
    """A method without options."""


def option(default, help: str, choices: tuple | None = None):
    """A dataclass field for a method option: its default, its help text, its allowed values."""
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return dataclasses.field(default=default, metadata=metadata)


def check_positive(options: object, *keys: str) -> None:
    """Each named option a finite number above 0: an infinite budget weight or temperature
    trained on NaN losses and still wrote a model."""
    for key in keys:
        value = getattr(options, key)
        if not (math.isfinite(value) and value > 0):
            flag = "--" + key.replace("_", "-")
            raise GcnshrinkError(f"{flag} must be a finite number above 0, got {value}")


def check_annealing(options: object, start: str, end: str) -> None:
    """A temperature schedule: both ends finite and above 0, and it anneals (end <= start)."""
    check_positive(options, start, end)
    if getattr(options, end) > getattr(options, start):
        raise GcnshrinkError(
            f"--{end.replace('_', '-')} ({getattr(options, end)}) must be at most "
            f"--{start.replace('_', '-')} ({getattr(options, start)}): the masks are annealed "
            "towards hard 0/1"
        )


def split_attr(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_path, _, attr = name.rpartition(".")
    return model.get_submodule(module_path), attr


def latent_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The trainable tensor behind ``name``, whether or not it is parametrized."""
    module, attr = split_attr(model, name)
    if parametrize.is_parametrized(module, attr):
        return module.parametrizations[attr].original
    return getattr(module, attr)


class MaskParametrization(nn.Module):
    """W -> W ⊙ M, with M from the method (``mask(weight)``).

    While ``delivered`` is set (see :func:`delivering`), the parametrization applies that hard mask
    (and ``delivered_scale``, the method's multipliers of the kept weights, when it has any)
    instead, so the training loop can evaluate exactly what :func:`bake` would ship without copying
    the model. ``torch.where``, not a product, so a pruned weight is +0.0, never -0.0.
    """

    def __init__(self) -> None:
        super().__init__()
        self.delivered: torch.Tensor | None = None
        self.delivered_scale: torch.Tensor | None = None

    def mask(self, weight: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.delivered is not None:
            return _kept(weight, self.delivered, self.delivered_scale)
        return weight * self.mask(weight)


def _kept(weight: torch.Tensor, keep: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """The weights under a boolean keep-mask, each kept one times its scale (if any)."""
    kept = weight if scale is None else weight * scale.to(weight.dtype)
    return torch.where(keep, kept, torch.zeros_like(weight))


class HardMask(MaskParametrization):
    """A fixed 0/1 mask held as a buffer (mp, random, structured, tcp-posthoc)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("keep", mask.to(torch.float32))

    def mask(self, weight: torch.Tensor) -> torch.Tensor:
        return self.keep.to(weight.dtype)


class _Baked(nn.Module):
    """The final mask, only ever applied once by :func:`bake` and removed at once."""

    def __init__(self, mask: torch.Tensor, scale: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("keep", mask.bool())
        self.scale = scale

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _kept(weight, self.keep, self.scale)


def _parametrized_names(model: nn.Module) -> list[str]:
    names = []
    for module_name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            prefix = f"{module_name}." if module_name else ""
            names += [prefix + attr for attr in module.parametrizations]
    return names


def remove_masks(model: nn.Module) -> nn.Module:
    """Drop every parametrization, leaving the latent weights (a multi-rate checkpoint keeps
    these and extracts any rate from them later). In place; returns the model."""
    for name in _parametrized_names(model):
        module, attr = split_attr(model, name)
        parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
    return model


def bake(
    model: nn.Module,
    masks: dict[str, torch.Tensor],
    scales: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Make the pruning permanent, in place: every tensor in ``masks`` becomes its latent weight
    through the boolean keep-mask (each kept weight times its entry of ``scales``, when the method
    gives any: ``scales_at``); every parametrization is gone. Returns the model."""
    remove_masks(model)
    for name, mask in masks.items():
        module, attr = split_attr(model, name)
        weight = getattr(module, attr)
        scale = (scales or {}).get(name)
        baked = _Baked(mask.to(weight.device), None if scale is None else scale.to(weight.device))
        parametrize.register_parametrization(module, attr, baked)
        parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    return model


@contextlib.contextmanager
def delivering(
    model: nn.Module,
    masks: dict[str, torch.Tensor],
    scales: dict[str, torch.Tensor] | None = None,
):
    """Within the block, the model computes with these hard masks and scales (what :func:`bake`
    would ship)."""
    applied = []
    try:
        for name, mask in masks.items():
            module, attr = split_attr(model, name)
            device = latent_weight(model, name).device
            scale = (scales or {}).get(name)
            for p in module.parametrizations[attr]:
                if isinstance(p, MaskParametrization):
                    p.delivered = mask.to(device=device, dtype=torch.bool)
                    p.delivered_scale = None if scale is None else scale.to(device)
                    applied.append(p)
        yield model
    finally:
        for p in applied:
            p.delivered = None
            p.delivered_scale = None


class PruningMethod:
    """Base of every method; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    multi_rate: ClassVar[bool] = False  # trains for several rates and serves any rate in (0, 1)
    # keeps exactly the budget; False for methods that remove whole units (at least the rate)
    exact_rate: ClassVar[bool] = True
    # the training loop recomputes the batch-norm statistics of the delivered network before it
    # scores an epoch (train.recalibrate_batchnorm): for methods whose masks move during the
    # fine-tune, which leaves the running averages describing networks no longer computed
    recalibrate_batchnorm: bool = False  # a class attribute, or a property of the options
    # option values under which a multi-rate checkpoint written before the option existed
    # extracts as it did then (its record lists only the options of its time)
    options_before: ClassVar[dict] = {}

    def __init__(self, spec: PruneSpec, options=None, seed: int = 0):
        spec.validate()
        if len(spec.rates) > 1 and not self.multi_rate:
            raise GcnshrinkError(
                f"{self.name} trains for one rate; prune once per rate (gcnshrink sweep does), "
                "or use a multi-rate method"
            )
        self.spec = spec
        self.options = options if options is not None else self.Options()
        self.seed = seed
        self.model: nn.Module | None = None
        self.graph: UnitGraph | None = None
        self.targets: list[TensorBinding] = []

    # ---------------------------------------------------------------- set-up
    def attach(self, model: nn.Module, graph: UnitGraph) -> None:
        """Select the tensors in scope, refuse an impossible budget, then ``setup()``."""
        self.model, self.graph = model, graph
        self.targets = [
            b
            for b in graph.prunable
            if not any(fnmatch.fnmatch(b.name, pattern) for pattern in self.spec.exclude)
        ]
        if not self.targets:
            raise GcnshrinkError("--exclude leaves no prunable tensor in scope")
        for rate in self.spec.rates:
            self.check_budget(rate)
        self.setup()

    def setup(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_budget(self, rate: float) -> None:
        """Refuse, before any work, a rate that would leave a tensor on the output path empty."""
        sizes = self.sizes()
        if self.spec.scope == "layer":
            for name, c in budget_per_tensor(sizes, rate).items():
                if c == 0:
                    raise GcnshrinkError(
                        f"rate {rate} removes every weight of {name} ({sizes[name]} weights); "
                        "lower the rate, use --scope global, or --exclude it"
                    )
        else:
            c = global_budget(sizes, rate)
            needed = self.graph.shortest_path_weights()
            if c < needed:
                raise GcnshrinkError(
                    f"rate {rate} keeps {c} of {sum(sizes.values())} weights, fewer than the "
                    f"{needed} needed to connect input and output; lower the rate"
                )

    def check_masks_connected(self, masks: dict[str, torch.Tensor], rate: float) -> None:
        """Magnitude criteria can empty a whole layer at extreme rates; refuse unless allowed."""
        if self.spec.allow_collapse:
            return
        empty = [name for name, m in masks.items() if not bool(m.any())]
        if empty:
            more = f" and {len(empty) - 1} more tensors" if len(empty) > 1 else ""
            raise GcnshrinkError(
                f"{self.name} at rate {rate} removes every weight of {empty[0]}{more}: the output "
                "would not depend on the input; try --method tcp, --score lamp, --scope layer or "
                "a lower rate"
            )

    def sizes(self) -> dict[str, int]:
        return {b.name: latent_weight(self.model, b.name).numel() for b in self.targets}

    def budget(self, rate: float) -> int:
        return budget(self.sizes(), rate, self.spec.scope)

    def latent(self) -> dict[str, torch.Tensor]:
        return {b.name: latent_weight(self.model, b.name) for b in self.targets}

    def dense_masks(self) -> dict[str, torch.Tensor]:
        """Out-of-scope prunable tensors (``--exclude``) are kept whole."""
        names = {b.name for b in self.targets}
        return {
            b.name: torch.ones_like(latent_weight(self.model, b.name), dtype=torch.bool).cpu()
            for b in self.graph.prunable
            if b.name not in names
        }

    def project(self, scores: dict[str, torch.Tensor], budget: int, k_hint=None):
        """Exactly ``budget`` topologically consistent entries, preferring high ``scores``
        (:func:`gcnshrink.graph.projection.consistent_budget_masks`)."""
        return consistent_budget_masks(
            self.graph,
            scores,
            budget,
            per_tensor_ranks=self.spec.scope == "layer",
            dense_masks=self.dense_masks(),
            k_hint=k_hint,
        )

    def register(self, name: str, parametrization: MaskParametrization) -> None:
        module, attr = split_attr(self.model, name)
        parametrize.register_parametrization(module, attr, parametrization, unsafe=False)

    # ---------------------------------------------------------------- training
    def loss(self) -> torch.Tensor | None:
        return None

    def on_step(self, progress: float) -> None:
        pass

    def on_labels(self, labels: torch.Tensor) -> None:
        pass

    def param_groups(self, model: nn.Module) -> list[dict]:
        return [{"params": list(model.parameters())}]

    def ready(self) -> bool:
        """Whether the current state may be selected (its masks meet the rate)."""
        return True

    def selection_rates(self) -> tuple[float, ...]:
        """The rates at which the validation split scores an epoch (the mean accuracy over them
        selects the epoch kept): the trained rates; a multi-rate method may add the untrained
        rates it serves."""
        return self.spec.rates

    def selection_start(self) -> float:
        """The fraction of the fine-tune before which no epoch is scored on validation (their
        states still count for ``averaged_epochs``): 0, every epoch is a candidate."""
        return 0.0

    def averaged_epochs(self) -> int:
        """N > 1: at the end of the fine-tune, the average of the weights at the ends of the last
        N epochs is scored on validation too, and kept if it beats every single epoch; 1: not."""
        return 1

    def status(self) -> str:
        """A short, cheap description of the training state for the progress bar."""
        return "" if self.ready() else "ramping"

    # ---------------------------------------------------------------- result
    def serves(self, rate: float) -> bool:
        return self.multi_rate or rate in self.spec.rates

    def masks_at(self, rate: float) -> dict[str, torch.Tensor]:
        """Boolean keep-masks of the tensors in scope at ``rate`` from the current state."""
        if not self.serves(rate):
            trained = ", ".join(f"{r:g}" for r in self.spec.rates)
            raise GcnshrinkError(f"{self.name} was trained for rate {trained}, not {rate:g}")
        return self.compute_masks(rate)

    def compute_masks(self, rate: float) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def scales_at(self, rate: float) -> dict[str, torch.Tensor] | None:
        """Multipliers of the kept weights at ``rate`` (float tensors shaped like the masks, for
        some tensors), or None: every kept weight as trained (every method but mrmp's --bridge)."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise GcnshrinkError(f"{self.name} keeps no state, the checkpoint has {sorted(state)}")

    def describe(self) -> dict:
        options = dataclasses.asdict(self.options)
        return {"method": self.name, **{k: v for k, v in options.items() if v is not None}}
