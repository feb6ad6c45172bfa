"""Training, fine-tuning and evaluation: one loop for dense training and every pruning method.

The loop knows nothing about pruning. A pruning method plugs in through a :class:`FineTuneHooks`
object: an extra loss term, a callback per step (schedules, temperature annealing), and the rule that
turns the current state into the *deliverable* model (hard masks at exactly the requested rate).
Model selection evaluates that deliverable on the validation split after every epoch and keeps the
best one, so the epoch chosen is the epoch whose pruned model is best, never the test split.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from gcnshrink.data import SkeletonData


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits for all of x, in eval mode, on the model's device; returned on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    outs = [
        model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)
    ]
    return torch.cat(outs) if outs else torch.zeros(0)


def accuracy_metrics(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict:
    """Top-1 accuracy and mean per-class accuracy (classes absent from y are skipped)."""
    pred = logits.argmax(dim=1)
    correct = pred == y
    per_class = [
        correct[y == k].float().mean().item() for k in range(num_classes) if (y == k).any()
    ]
    return {
        "accuracy": correct.float().mean().item() if len(y) else 0.0,
        "mean_class_accuracy": sum(per_class) / len(per_class) if per_class else 0.0,
        "samples": len(y),
    }


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict:
    return accuracy_metrics(predict(model, x), y, num_classes)


@dataclass
class FineTuneHooks:
    """How a pruning method plugs into the loop. Every field is optional."""

    extra_loss: Callable[[], torch.Tensor | None] | None = None
    on_step: Callable[[float], None] | None = None  # called with training progress in [0, 1]
    deliverable: Callable[[nn.Module], nn.Module] | None = None  # current state -> model to ship
    selectable: Callable[[], bool] | None = (
        None  # may this state be selected (masks meet the rate)?
    )
    status: Callable[[], str] | None = None  # training state for the progress bar (keep it cheap)


@dataclass
class TrainConfig:
    epochs: int = 150
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0
    device: str | None = None
    progress: bool = True
    label_smoothing: float = 0.0


@dataclass
class FitResult:
    model: nn.Module  # the best deliverable, on the CPU, in eval mode
    best_epoch: int
    best_val_accuracy: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def fit(
    model: nn.Module,
    data: SkeletonData,
    config: TrainConfig,
    hooks: FineTuneHooks | None = None,
    description: str = "train",
) -> FitResult:
    """Train ``model`` on data.train; keep the deliverable that is best on data.val."""
    hooks = hooks or FineTuneHooks()
    seed_everything(config.seed)
    device = pick_device(config.device)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    generator = torch.Generator().manual_seed(config.seed)
    n = len(data.x_train)
    steps_per_epoch = max(1, (n + config.batch_size - 1) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    best: tuple[float, int, nn.Module] | None = None
    history: list[dict] = []
    started = time.perf_counter()
    deliver = hooks.deliverable or (lambda m: m)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not config.progress, transient=False) as progress:
        task = progress.add_task(description, total=config.epochs, info="")
        step = 0
        for epoch in range(config.epochs):
            model.train()
            order = torch.randperm(n, generator=generator)
            epoch_loss, seen = 0.0, 0
            for i in range(0, n, config.batch_size):
                idx = order[i : i + config.batch_size]
                xb, yb = data.x_train[idx].to(device), data.y_train[idx].to(device)
                if hooks.on_step:
                    hooks.on_step(step / max(total_steps - 1, 1))
                loss = loss_fn(model(xb), yb)
                if hooks.extra_loss:
                    extra = hooks.extra_loss()
                    if extra is not None:
                        loss = loss + extra
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                epoch_loss += loss.item() * len(idx)
                seen += len(idx)
                step += 1
            record = {"epoch": epoch + 1, "loss": epoch_loss / max(seen, 1), "val_accuracy": None}
            if hooks.selectable is None or hooks.selectable():
                candidate = deliver(model)
                val = evaluate(candidate, data.x_val, data.y_val, data.num_classes)
                record["val_accuracy"] = val["accuracy"]
                # ties go to the later epoch: same validation accuracy after more training
                if best is None or val["accuracy"] >= best[0]:
                    best = (val["accuracy"], epoch + 1, copy.deepcopy(candidate).cpu())
            history.append(record)
            shown = "-" if record["val_accuracy"] is None else f"{record['val_accuracy']:.1%}"
            info = (
                f"loss {record['loss']:.3f}  val {shown}  best {best[0]:.1%}"
                if best
                else f"loss {record['loss']:.3f}"
            )
            if hooks.status and config.progress:
                info += "  " + hooks.status()
            progress.update(task, advance=1, info=info)
    if (
        best is None
    ):  # no epoch met the rate (a schedule longer than the fine-tune): ship the end state
        final = deliver(model)
        val = evaluate(final, data.x_val, data.y_val, data.num_classes)
        best = (val["accuracy"], config.epochs, copy.deepcopy(final).cpu())
    best_model = best[2].eval()
    return FitResult(best_model, best[1], best[0], history, time.perf_counter() - started)
