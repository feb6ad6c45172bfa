"""gcnshrink's verbs as Python functions; the CLI is a thin layer over these.

For people with their own training loop: build a method with :func:`gcnshrink.pruning.make_method`,
``method.attach(model)``, train as you like adding ``method.extra_loss()`` and calling
``method.on_step(progress)``, then ``method.deliverable()`` is the pruned model at the exact rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gcnshrink.checkpoint import Checkpoint, file_sha256, load_checkpoint, provenance
from gcnshrink.data import SkeletonData, load_data
from gcnshrink.defaults import FINETUNE_EPOCHS, FINETUNE_LR
from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph import masks_from_weights
from gcnshrink.measure import weight_counts
from gcnshrink.models import SkeletonModel, create_model
from gcnshrink.pruning import PruneSpec, make_method, realized_rate
from gcnshrink.train import FineTuneHooks, TrainConfig, evaluate, fit


def as_data(data: SkeletonData | str, seed: int = 0) -> SkeletonData:
    return load_data(data, seed=seed) if isinstance(data, str) else data


def as_checkpoint(model: Checkpoint | str | Path, **load_options) -> Checkpoint:
    return model if isinstance(model, Checkpoint) else load_checkpoint(model, **load_options)


# ---------------------------------------------------------------------------- train / eval
def train(
    data: SkeletonData | str,
    arch: str = "gcn",
    *,
    config: TrainConfig | None = None,
    model_config: dict | None = None,
) -> tuple[Checkpoint, dict]:
    """Train a zoo model from scratch; returns the best-on-validation checkpoint and a summary."""
    config = config or TrainConfig()
    data = as_data(data, config.seed)
    torch.manual_seed(config.seed)
    model = create_model(
        arch,
        num_classes=data.num_classes,
        layout=data.layout,
        in_channels=data.in_channels,
        **(model_config or {}),
    )
    result = fit(model, data, config, description=f"train {arch}")
    test = evaluate(result.model, data.x_test, data.y_test, data.num_classes)
    prov = provenance(
        seed=config.seed, data=data.spec, epochs=config.epochs, best_epoch=result.best_epoch
    )
    ckpt = Checkpoint.from_model(result.model, data.class_names, prov)
    summary = {
        "arch": arch,
        "epochs": config.epochs,
        "best_epoch": result.best_epoch,
        "val_accuracy": result.best_val_accuracy,
        "accuracy": test["accuracy"],
        "mean_class_accuracy": test["mean_class_accuracy"],
        "params": sum(p.numel() for p in result.model.parameters()),
        "seconds": result.seconds,
    }
    return ckpt, summary


def evaluate_checkpoint(
    model: Checkpoint | str | Path, data: SkeletonData | str, seed: int = 0
) -> dict:
    ckpt = as_checkpoint(model)
    data = as_data(data, seed)
    ckpt.check_compatible(data)
    return evaluate(ckpt.build_model(), data.x_test, data.y_test, data.num_classes)


# ---------------------------------------------------------------------------- prune
@dataclass
class PruneOutcome:
    checkpoint: Checkpoint
    summary: dict
    model: SkeletonModel


def prune(
    model: Checkpoint | str | Path,
    data: SkeletonData | str,
    *,
    method: str = "mp",
    rate: float = 0.9,
    epochs: int = FINETUNE_EPOCHS,
    seed: int = 0,
    scope: str = "global",
    exclude: tuple[str, ...] | list[str] = (),
    lr: float = FINETUNE_LR,
    batch_size: int = 64,
    device: str | None = None,
    progress: bool = True,
    allow_collapse: bool = False,
    source_path: str | Path | None = None,
    **method_options,
) -> PruneOutcome:
    """Prune a trained model as a masked fine-tune; the result is at exactly ``rate``.

    Every argument is checked before any training starts; a bad one raises GcnshrinkError.
    """
    spec = PruneSpec(rate, scope, tuple(exclude), allow_collapse)
    spec.validate()
    if epochs < 0:
        raise GcnshrinkError(f"--epochs must be >= 0, got {epochs}")
    ckpt = as_checkpoint(
        model
    )  # a missing or unreadable file is a clear error before anything else
    source_path = model if isinstance(model, (str, Path)) else source_path
    source_hash = file_sha256(source_path) if source_path is not None else None
    data = as_data(data, seed)
    ckpt.check_compatible(data)
    torch.manual_seed(seed)
    pruner = make_method(method, spec, seed=seed, **method_options)
    dense_model = ckpt.build_model()
    dense = evaluate(dense_model, data.x_test, data.y_test, data.num_classes)
    working = ckpt.build_model().train()
    pruner.attach(working, data)  # validates the budget before any work
    hooks = FineTuneHooks(
        extra_loss=pruner.extra_loss,
        on_step=pruner.on_step,
        deliverable=lambda m: pruner.deliverable(),
        selectable=pruner.selectable,
        status=pruner.status,
    )
    train_config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, progress=progress
    )
    if epochs > 0:
        result = fit(working, data, train_config, hooks, description=f"prune {method} @ {rate:g}")
        pruned, best_epoch, seconds = result.model, result.best_epoch, result.seconds
    else:
        pruned, best_epoch, seconds = pruner.deliverable().cpu(), 0, 0.0
    pruned = pruned.cpu().eval()
    masks = masks_from_weights(pruned.unit_graph(), dict(pruned.named_parameters()))
    in_scope = {b.name: masks[b.name] for b in pruner.targets}
    test = evaluate(pruned, data.x_test, data.y_test, data.num_classes)
    weights = weight_counts(pruned)
    record = {
        "method": method,
        "rate": rate,
        "realized_rate": realized_rate(in_scope),
        "scope": scope,
        "exclude": list(exclude),
        "options": pruner.describe(),
        "epochs": epochs,
        "best_epoch": best_epoch,
        "finetune_seconds": seconds,
    }
    prov = provenance(seed=seed, data=data.spec, source_sha256=source_hash, source=ckpt.provenance)
    out_ckpt = Checkpoint.from_model(
        pruned, ckpt.class_names or data.class_names, prov, pruning=record, masks=masks
    )
    summary = {
        **record,
        "accuracy": test["accuracy"],
        "mean_class_accuracy": test["mean_class_accuracy"],
        "dense_accuracy": dense["accuracy"],
        "dense_mean_class_accuracy": dense["mean_class_accuracy"],
        "params": weights["params"],
        "nonzero": weights["nonzero"],
        "inconsistent_connections": weights["inconsistent_connections"],
        "dead_units": weights["dead_units"],
        "seed": seed,
    }
    return PruneOutcome(out_ckpt, summary, pruned)
