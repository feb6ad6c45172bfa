"""``gcnshrink prune`` and ``gcnshrink extract`` end to end: a trained checkpoint in, a pruned one out.

:func:`prune` builds the model, attaches the method (every argument checked before any training),
runs the masked fine-tune with validation selection (:func:`gcnshrink.train.fit`) and bakes the
selected masks into a plain model (:func:`gcnshrink.pruning.bake`). A multi-rate method trained for
several rates gives a *multi-rate checkpoint* instead: the latent weights and the method's state,
from which :func:`extract` takes a pruned model at any rate the method serves, with no data and no
training. ``gcnshrink.api`` re-exports both; the sweep uses them directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from gcnshrink.arguments import check_training
from gcnshrink.checkpoint import (
    Checkpoint,
    check_state_keys_and_shapes,
    file_sha256,
    load_checkpoint,
    provenance,
    read_torch_file,
)
from gcnshrink.data import SkeletonData, load_data
from gcnshrink.defaults import FINETUNE_EPOCHS, FINETUNE_LR
from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph import masks_from_weights
from gcnshrink.measure import multi_rate_record, weight_counts
from gcnshrink.models import SkeletonModel
from gcnshrink.models.user import UserModel
from gcnshrink.pruning import PruneSpec, bake, create_method, realized_rate, remove_masks
from gcnshrink.pruning.budget import check_rate
from gcnshrink.pruning.registry import method_class
from gcnshrink.testing import check_graph_keeps_logits
from gcnshrink.train import TrainConfig, fit
from gcnshrink.train import evaluate as test_metrics


def as_data(data: SkeletonData | str, seed: int = 0) -> SkeletonData:
    return load_data(data, seed=seed) if isinstance(data, str) else data


def as_checkpoint(model: Checkpoint | str | Path, **load_options) -> Checkpoint:
    return model if isinstance(model, Checkpoint) else load_checkpoint(model, **load_options)


@dataclass
class PruneOutcome:
    """A pruned checkpoint (or, for a multi-rate method trained for several rates, a multi-rate
    checkpoint: latent weights plus the method's state, see :func:`extract`), a summary, and the
    model it holds."""

    checkpoint: Checkpoint
    summary: dict
    model: SkeletonModel


def _attached_method(working, name: str, spec: PruneSpec, options, seed: int):
    method = create_method(name, spec, options, seed=seed)
    if isinstance(working, UserModel):
        # a derived (or user-declared) graph is checked, not trusted: random dead units must
        # compact away with the same logits before any pruning relies on the graph
        check_graph_keeps_logits(working)
    method.attach(working, working.unit_graph())  # validates the budget before any work
    return method


def _pruned_summary(model: SkeletonModel, method, rate: float, data, extra: dict) -> dict:
    masks = masks_from_weights(model.unit_graph(), dict(model.named_parameters()))
    in_scope = {b.name: masks[b.name] for b in method.targets}
    weights = weight_counts(model)
    summary = {
        "method": method.name,
        "rate": rate,
        "realized_rate": realized_rate(in_scope),
        "scope": method.spec.scope,
        "exclude": list(method.spec.exclude),
        "options": method.describe(),
        **extra,
    }
    counts = {
        "params": weights["params"],
        "nonzero": weights["nonzero"],
        "inconsistent_connections": weights["inconsistent_connections"],
        "dead_units": weights["dead_units"],
    }
    if data is not None:
        test = test_metrics(model, data.x_test, data.y_test, data.num_classes)
        counts = {
            "accuracy": test["accuracy"],
            "mean_class_accuracy": test["mean_class_accuracy"],
            **counts,
        }
    return summary, masks, counts


def prune(
    model: Checkpoint | str | Path,
    data: SkeletonData | str,
    *,
    method: str = "mp",
    rate: float | None = 0.9,
    rates: Sequence[float] | None = None,
    epochs: int = FINETUNE_EPOCHS,
    seed: int = 0,
    scope: str = "global",
    exclude: tuple[str, ...] | list[str] = (),
    lr: float = FINETUNE_LR,
    batch_size: int = 64,
    device: str | None = None,
    precision: str = "fp32",
    progress: bool = True,
    allow_collapse: bool = False,
    source_path: str | Path | None = None,
    state_path: str | Path | None = None,
    resume_from: str | Path | None = None,
    options: dict | None = None,
    **method_options,
) -> PruneOutcome:
    """Prune a trained model as a masked fine-tune; the result is at exactly ``rate``.

    ``rates`` (several) trains a multi-rate method once for all of them and returns a multi-rate
    checkpoint. Method options come as ``options`` or keyword arguments (``score="lamp"``). Every
    argument is checked before any training starts; a bad one raises GcnshrinkError.
    ``state_path``/``resume_from``: write resumable training state every epoch / continue from it.
    """
    spec = PruneSpec(tuple(rates) if rates else (rate,), scope, tuple(exclude), allow_collapse)
    spec.validate()
    check_training(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, min_epochs=0
    )
    # a missing or unreadable file is a clear error before anything else
    ckpt = as_checkpoint(model)
    source_path = model if isinstance(model, (str, Path)) else source_path
    source_hash = file_sha256(source_path) if source_path is not None else None
    data = as_data(data, seed)
    ckpt.check_compatible(data)
    if epochs > 0:
        data.check_trainable()
    torch.manual_seed(seed)
    all_options = {**(options or {}), **method_options}
    create_method(method, spec, all_options, seed=seed)  # option errors before building models
    dense = test_metrics(ckpt.build_model(), data.x_test, data.y_test, data.num_classes)
    working = ckpt.build_model().train()
    pruner = _attached_method(working, method, spec, all_options, seed)
    shown_rate = ",".join(f"{r:g}" for r in spec.rates)
    train_config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        progress=progress,
        precision=precision,
    )
    if resume_from is not None:
        check_resume_state(resume_from, working, train_config, pruner)
    if epochs > 0:
        result = fit(
            working, data, train_config, pruner, description=f"prune {method} @ {shown_rate}",
            state_path=state_path, resume_from=resume_from,
        )  # fmt: skip
        best_epoch, seconds = result.best_epoch, result.seconds
        selected_masks, val_by_rate = result.masks, result.val_accuracy_by_rate
        averaged = result.averaged_epochs
    else:
        best_epoch, seconds, val_by_rate, averaged = 0, 0.0, {}, 1
        selected_masks = {r: pruner.masks_at(r) for r in spec.rates}
    working = working.cpu().eval()
    prov = provenance(seed=seed, data=data.spec, source_sha256=source_hash, source=ckpt.provenance)
    class_names = ckpt.class_names or data.class_names
    # the checkpoint records what was done, not how long it took: the same command and seed give
    # the same bytes; the time is in the summary (and a sweep's results)
    # averaged_epochs N > 1: the weights are the mean of epochs best_epoch - N + 1 .. best_epoch
    training = {"epochs": epochs, "best_epoch": best_epoch, "averaged_epochs": averaged}
    dense_fields = {
        "dense_accuracy": dense["accuracy"],
        "dense_mean_class_accuracy": dense["mean_class_accuracy"],
        "seed": seed,
        "finetune_seconds": seconds,
    }
    if len(spec.rates) > 1:
        return _multi_rate_outcome(
            working, pruner, data, class_names, prov, training, val_by_rate, dense_fields
        )
    pruned = bake(working, selected_masks[spec.rate])
    record, masks, counts = _pruned_summary(pruned, pruner, spec.rate, data, training)
    out_ckpt = Checkpoint.from_model(pruned, class_names, prov, pruning=record, masks=masks)
    return PruneOutcome(out_ckpt, {**record, **counts, **dense_fields}, pruned)


def _multi_rate_outcome(working, pruner, data, class_names, prov, training, val_by_rate, dense):
    """The latent weights and the method's state: any rate is extracted from them later."""
    remove_masks(working)
    record = {
        "method": pruner.name,
        "multi_rate": True,
        "rates": list(pruner.spec.rates),
        "scope": pruner.spec.scope,
        "exclude": list(pruner.spec.exclude),
        "options": pruner.describe(),
        "val_accuracy_by_rate": {f"{r:g}": a for r, a in val_by_rate.items()},
        **training,
    }
    ckpt = Checkpoint.from_model(
        working, class_names, prov, pruning=record, method_state=pruner.state_dict()
    )
    accuracy_by_rate = {}
    for rate in pruner.spec.rates:
        extracted = extract(ckpt, rate)
        accuracy_by_rate[f"{rate:g}"] = test_metrics(
            extracted.model, data.x_test, data.y_test, data.num_classes
        )["accuracy"]
    summary = {**record, "accuracy_by_rate": accuracy_by_rate, **dense}
    return PruneOutcome(ckpt, summary, working)


TRAIN_STATE_FORMAT = "gcnshrink.train-state/1"


def check_resume_state(
    path: str | Path, model: torch.nn.Module, config: TrainConfig, method=None
) -> None:
    """Refuse, before training, a state file this run cannot continue from: not a training state,
    another seed or epoch count (the result would not be the uninterrupted run's), another model
    or another method."""
    state = read_torch_file(path)
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise GcnshrinkError(f"{path}: not a gcnshrink training state file")
    saved = state.get("config")
    if not isinstance(saved, dict) or not isinstance(state.get("model"), dict):
        raise GcnshrinkError(f"{path}: broken training state (no config or model)")
    if (saved.get("epochs"), saved.get("seed")) != (config.epochs, config.seed):
        raise GcnshrinkError(
            f"{path} continues a run of {saved.get('epochs')} epochs with seed "
            f"{saved.get('seed')}; pass the same --epochs and --seed to resume it"
        )
    try:
        check_state_keys_and_shapes(model.state_dict(), state["model"])
    except GcnshrinkError as exc:
        raise GcnshrinkError(f"{path} was saved by another model ({exc})") from None
    own = method.state_dict() if method is not None else {}
    if not isinstance(state.get("method"), dict) or set(state["method"]) != set(own):
        raise GcnshrinkError(f"{path} was saved by another pruning method or by dense training")


def extract(multi_rate: Checkpoint | str | Path, rate: float) -> PruneOutcome:
    """A pruned checkpoint at any ``rate`` the multi-rate checkpoint's method serves: no data, no
    training. Its realized rate is the rate (the method's budget rule)."""
    ckpt = as_checkpoint(multi_rate)
    record = multi_rate_record(ckpt)
    if record is None:
        raise GcnshrinkError(
            "not a multi-rate checkpoint (gcnshrink prune --rates a,b,c makes one)"
        )
    check_rate(rate)
    working = ckpt.build_model()
    # an edited record is one line that blames the file, not a KeyError deep in a method or a
    # message about a flag the user never gave
    try:
        name = record["method"]
        options = {
            **method_class(name).options_before,
            **{k: v for k, v in record["options"].items() if k != "method"},
        }
        spec = PruneSpec(tuple(record["rates"]), record["scope"], tuple(record["exclude"]))
        spec.validate()
        with torch.no_grad():
            method = _attached_method(working, name, spec, options, 0)
    except (KeyError, TypeError, AttributeError) as exc:
        raise GcnshrinkError(
            f"broken multi-rate checkpoint: its pruning record ({exc!r})"
        ) from None
    except GcnshrinkError as exc:
        raise GcnshrinkError(f"broken multi-rate checkpoint: its pruning record: {exc}") from None
    try:
        method.load_state_dict(ckpt.method_state or {})
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise GcnshrinkError(
            f"broken multi-rate checkpoint: its method state ({type(exc).__name__}: {exc})"
        ) from None
    method.check_budget(rate)  # as prune does: 0.9999999 kept no weight and succeeded
    pruned = bake(working, method.masks_at(rate), method.scales_at(rate)).eval()
    summary, masks, counts = _pruned_summary(
        pruned, method, rate, None, {"extracted_from_rates": record["rates"]}
    )
    prov = {**ckpt.provenance, "extracted_rate": rate}
    out = Checkpoint.from_model(pruned, ckpt.class_names, prov, pruning=summary, masks=masks)
    return PruneOutcome(out, {**summary, **counts}, pruned)


# ---------------------------------------------------------------------------- evaluate / inspect
