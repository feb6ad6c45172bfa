"""Training, fine-tuning and evaluation: one loop for dense training and every pruning method.

The loop knows nothing about pruning. Everything beyond "minimise the task loss over mini-batches"
is a :class:`Callback`:

- :class:`MethodHooks` plugs a pruning method in (``on_step`` before every forward pass, its loss
  term added to the task loss);
- :class:`ValidationSelection` evaluates, after every epoch, what would be shipped (the method's
  hard masks at each requested rate, see :func:`gcnshrink.pruning.delivering`) on the validation
  split, keeps the best state, and restores it at the end: the epoch chosen is the epoch whose
  pruned model is best on validation, never on the test split;
- :class:`ProgressDisplay` draws the progress bar;
- :class:`PeriodicState` writes everything needed to resume (model, optimizer, RNG streams, method
  and selection state) every few epochs, atomically; ``fit(..., resume_from=path)`` continues a run
  so that its result is the one the uninterrupted run would have given.

The optimizer's parameter groups come from the method (``param_groups``). Three seams are meant for
a distributed run (DistributedDataParallel): :meth:`TrainingLoop.batch_order` (a sampler's share of
the epoch), :attr:`TrainingLoop.forward_model` (the wrapped model) and
:meth:`TrainingLoop.reduce_sum` (metrics summed across processes).
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from gcnshrink import distributed
from gcnshrink.checkpoint import read_torch_file
from gcnshrink.data import SkeletonData
from gcnshrink.errors import GcnshrinkError
from gcnshrink.files import atomic_write
from gcnshrink.pruning import PruningMethod, delivering


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


# how many training samples recompute the batch-norm statistics of a delivered network: enough
# for a stable mean and variance per channel, a fraction of an epoch on NTU-sized data
BATCHNORM_CALIBRATION_SAMPLES = 2048


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    x: torch.Tensor,
    batch_size: int = 64,
    samples: int = BATCHNORM_CALIBRATION_SAMPLES,
) -> bool:
    """Recompute every batch norm's running statistics for the network as it computes now (under
    its current masks): reset them, then run up to ``samples`` inputs of ``x``, evenly spread over
    it, through the model in training mode without gradients, with a cumulative average
    (momentum None). Training mode as for the running averages it replaces (dropout draws, from
    the seeded generator). Returns False, changing nothing, when the model has no batch norm that
    tracks statistics or ``x`` is empty. The model's mode and momenta are restored."""
    norms = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not norms or len(x) == 0:
        return False
    count = min(samples, len(x))
    picked = torch.linspace(0, len(x) - 1, steps=count).round().long().unique()
    device = next(model.parameters()).device
    momenta = [m.momentum for m in norms]
    was_training = model.training
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for i in range(0, len(picked), batch_size):
            model(x[picked[i : i + batch_size]].to(device))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return True


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


PRECISIONS = ("fp32", "bf16", "fp16")


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
    # autocast for the forward pass and task loss; masks and budgets stay in fp32 (methods compute
    # them in on_step, outside autocast). fp16 needs a GPU (and gets a gradient scaler).
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise GcnshrinkError(
                f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )


@dataclass
class FitResult:
    """The trained model, restored to the selected epoch, on the CPU, in eval mode.

    With a method, the model still carries its parametrizations (``bake(model, masks[rate])``
    makes the result permanent) and ``masks`` holds the selected masks per requested rate.
    """

    model: nn.Module
    best_epoch: int
    best_val_accuracy: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    masks: dict[float, dict[str, torch.Tensor]] = field(default_factory=dict)
    val_accuracy_by_rate: dict[float, float] = field(default_factory=dict)
    # 1: the weights of epoch best_epoch; N > 1: their average over epochs best_epoch - N + 1 to
    # best_epoch (ValidationSelection, for a method whose averaged_epochs() is N)
    averaged_epochs: int = 1


# ---------------------------------------------------------------------------- callbacks
class Callback:
    """A piece of the loop's behaviour. Every hook is optional."""

    def on_fit_start(self, loop: TrainingLoop) -> None: ...

    def on_step_start(self, loop: TrainingLoop, progress: float) -> None: ...

    def extra_loss(self, loop: TrainingLoop) -> torch.Tensor | None:
        return None

    def on_epoch_end(self, loop: TrainingLoop, record: dict) -> None: ...

    def on_fit_end(self, loop: TrainingLoop) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class MethodHooks(Callback):
    """The pruning method's schedule and loss term."""

    def __init__(self, method: PruningMethod):
        self.method = method

    def on_step_start(self, loop: TrainingLoop, progress: float) -> None:
        self.method.on_step(progress)
        self.method.on_labels(loop.batch_labels)

    def extra_loss(self, loop: TrainingLoop) -> torch.Tensor | None:
        return self.method.loss()


class ValidationSelection(Callback):
    """Keep the state whose deliverable is best on the validation split; restore it at the end.

    With a method, the deliverable at each requested rate is the model under the method's hard
    masks at that rate, evaluated without copying the model; a multi-rate method is scored by its
    mean validation accuracy over its ``selection_rates()`` (the trained rates and the untrained
    ones it serves; the per-rate record holds the trained ones). Ties go to the later epoch (same
    accuracy after more training).

    Epochs before ``selection_start()`` (a fraction of the fine-tune) are not scored.

    A method whose ``averaged_epochs()`` is N > 1 also offers, at the end, the average of the
    weights at the ends of the last N epochs (all of them past ``ready()``); it is kept only when
    it scores above every single epoch. Why: mrmp's networks between its trained rates are never
    trained on their own and swing by 10 points from one epoch to the next; the average of the
    last epochs smooths that out (docs/methods.md, "Weight averaging").
    """

    def __init__(self, data: SkeletonData, method: PruningMethod | None = None):
        self.data = data
        self.method = method
        self.best: dict | None = None
        self.window = method.averaged_epochs() if method is not None else 1
        self.recent: list[dict[str, torch.Tensor]] = []  # the last `window` epochs' end states

    @property
    def rates(self) -> tuple[float, ...]:
        return self.method.spec.rates if self.method is not None else ()

    def _score(self, model: nn.Module) -> tuple[float, dict, dict]:
        data = self.data
        if self.method is None:
            accuracy = evaluate(model, data.x_val, data.y_val, data.num_classes)["accuracy"]
            return accuracy, {}, {}
        selection = self.method.selection_rates()
        masks, scored = {}, {}
        # a method whose masks move keeps running statistics averaged over networks it no longer
        # computes; the delivered one gets its own (one network: a multi-rate checkpoint has one
        # set of statistics for every rate and extraction has no data to recompute them)
        recalibrate = self.method.recalibrate_batchnorm and not self.method.multi_rate
        for rate in dict.fromkeys((*self.rates, *selection)):
            rate_masks = self.method.masks_at(rate)
            if rate in self.rates:
                masks[rate] = rate_masks
            with delivering(model, rate_masks, self.method.scales_at(rate)):
                if recalibrate and recalibrate_batchnorm(model, data.x_train):
                    distributed.broadcast_buffers(model)  # every rank keeps rank 0's
                scored[rate] = evaluate(model, data.x_val, data.y_val, data.num_classes)["accuracy"]
        by_rate = {r: scored[r] for r in self.rates}
        return sum(scored[r] for r in selection) / len(selection), masks, by_rate

    def _keep(
        self, loop: TrainingLoop, accuracy: float, masks: dict, by_rate: dict, averaged: int = 1
    ) -> None:
        self.best = {
            "val_accuracy": accuracy,
            "epoch": loop.epoch,
            "averaged_epochs": averaged,
            "model": {k: v.detach().clone() for k, v in loop.model.state_dict().items()},
            "method": copy.deepcopy(self.method.state_dict()) if self.method else {},
            "masks": {r: {k: v.clone() for k, v in m.items()} for r, m in masks.items()},
            "val_accuracy_by_rate": dict(by_rate),
        }

    def on_epoch_end(self, loop: TrainingLoop, record: dict) -> None:
        if self.method is not None and not self.method.ready():
            self.recent = []
            return
        if self.window > 1:
            state = {k: v.detach().clone() for k, v in loop.model.state_dict().items()}
            self.recent = [*self.recent[-(self.window - 1) :], state]
        start = self.method.selection_start() if self.method is not None else 0.0
        if start > 0 and loop.epoch < start * loop.config.epochs:
            return  # too early to be kept: not worth scoring (mrmp scores a grid of rates)
        accuracy, masks, by_rate = self._score(loop.model)
        # under torchrun every rank scores the same model; rank 0's numbers decide on all ranks
        accuracy, by_rate = distributed.from_main((accuracy, by_rate))
        record["val_accuracy"] = accuracy
        if by_rate and len(by_rate) > 1:
            record["val_accuracy_by_rate"] = {f"{r:g}": a for r, a in by_rate.items()}
        if self.best is None or accuracy >= self.best["val_accuracy"]:
            self._keep(loop, accuracy, masks, by_rate)

    def on_fit_end(self, loop: TrainingLoop) -> None:
        if self.best is None:  # no epoch met the rate (a schedule longer than the fine-tune)
            accuracy, masks, by_rate = self._score(loop.model)
            self._keep(loop, accuracy, masks, by_rate)
            self.best["epoch"] = loop.config.epochs
        elif self.window > 1 and len(self.recent) == self.window:
            loop.model.load_state_dict(average_states(self.recent))
            accuracy, masks, by_rate = self._score(loop.model)
            accuracy, by_rate = distributed.from_main((accuracy, by_rate))
            if accuracy > self.best["val_accuracy"]:
                self._keep(loop, accuracy, masks, by_rate, averaged=self.window)
        loop.model.load_state_dict(self.best["model"])
        if self.method is not None:
            self.method.load_state_dict(self.best["method"])

    def state_dict(self) -> dict:
        return {"best": self.best, "recent": self.recent}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]
        self.recent = list(state.get("recent", []))


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of several state dicts of one model: floating-point entries averaged (in float64,
    cast back), the others (batch-norm counters) taken from the last."""
    last = states[-1]
    return {
        name: torch.stack([s[name].double() for s in states]).mean(0).to(value.dtype)
        if value.is_floating_point()
        else value.clone()
        for name, value in last.items()
    }


class ProgressDisplay(Callback):
    """A rich progress bar: loss, validation accuracy, best so far, the method's status."""

    def __init__(self, description: str, method: PruningMethod | None, enabled: bool):
        self.description, self.method, self.enabled = description, method, enabled
        self.progress: Progress | None = None

    def on_fit_start(self, loop: TrainingLoop) -> None:
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
        )
        self.progress = Progress(*columns, disable=not self.enabled, transient=False)
        self.progress.start()
        self.task = self.progress.add_task(
            self.description, total=loop.config.epochs, completed=loop.epoch, info=""
        )

    def on_epoch_end(self, loop: TrainingLoop, record: dict) -> None:
        best = max(
            (r["val_accuracy"] for r in loop.history + [record] if r["val_accuracy"] is not None),
            default=None,
        )
        shown = "-" if record["val_accuracy"] is None else f"{record['val_accuracy']:.1%}"
        info = f"loss {record['loss']:.3f}"
        if best is not None:
            info += f"  val {shown}  best {best:.1%}"
        if self.method is not None and self.enabled:
            info += "  " + self.method.status()
        self.progress.update(self.task, advance=1, info=info)


class PeriodicState(Callback):
    """Write the loop's whole state to ``path`` every ``every`` epochs (atomically). Under torchrun
    every rank takes part (the state holds each rank's random streams) and rank 0 writes."""

    def __init__(self, path: str | Path, every: int = 1):
        if every < 1:
            raise GcnshrinkError(f"state must be written at least every epoch, got every={every}")
        self.path, self.every = Path(path), every

    def on_epoch_end(self, loop: TrainingLoop, record: dict) -> None:
        # the record is complete: every other callback has run before this one
        if loop.epoch % self.every == 0 or loop.epoch == loop.config.epochs:
            state = loop.state_dict(finished_record=record)
            if distributed.is_main():
                atomic_write(self.path, lambda f: torch.save(state, f), force=True)


# ---------------------------------------------------------------------------- the loop
class TrainingLoop:
    """Mini-batch training with callbacks. ``run()`` returns a :class:`FitResult`."""

    def __init__(
        self,
        model: nn.Module,
        data: SkeletonData,
        config: TrainConfig,
        method: PruningMethod | None = None,
        callbacks: list[Callback] | tuple[Callback, ...] = (),
    ):
        self.model, self.data, self.config, self.method = model, data, config, method
        self.callbacks = list(callbacks)
        seed_everything(config.seed)
        with distributed.peer_failures():
            self.device = distributed.setup(pick_device(config.device))
        if config.precision == "fp16" and self.device.type != "cuda":
            raise GcnshrinkError("--precision fp16 needs --device cuda; use bf16 or fp32 on CPU")
        model.to(self.device)
        self.forward_model: nn.Module = model
        if distributed.is_distributed():
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device] if self.device.type == "cuda" else None
            with distributed.peer_failures():  # broadcasts rank 0's weights
                self.forward_model = DistributedDataParallel(model, device_ids=device_ids)
        groups = method.param_groups(model) if method is not None else model.parameters()
        self.optimizer = torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.x_train, self.y_train = data.x_train, data.y_train
        if self.device.type == "cuda":  # page-locked, so batches copy while the GPU computes
            self.x_train, self.y_train = self.x_train.pin_memory(), self.y_train.pin_memory()
        self.epoch = 0  # epochs finished
        self.step = 0
        self.batch_labels: torch.Tensor | None = None  # the step's labels (method hooks read them)
        self.history: list[dict] = []

    # ---------------------------------------------------------------- seams for distribution
    def batch_order(self) -> torch.Tensor:
        """This epoch's global sample order, the same on every rank."""
        return torch.randperm(len(self.data.x_train), generator=self.generator)

    def local_share(self, batch: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This rank's samples of a global batch and the weight of its mean loss, chosen so that
        averaging over ranks (DDP) gives the mean over the global batch."""
        world = distributed.world_size()
        if world == 1:
            return batch, 1.0
        local = batch[distributed.rank() :: world]
        if len(local) == 0:  # a last batch smaller than the world: take part with weight 0
            return batch[:1], 0.0
        return local, len(local) * world / len(batch)

    def reduce_sum(self, value: float) -> float:
        """A metric summed over the processes of a distributed run (one process: itself)."""
        return distributed.all_sum(value)

    def autocast(self):
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @property
    def steps_per_epoch(self) -> int:
        n = len(self.data.x_train)
        return max(1, (n + self.config.batch_size - 1) // self.config.batch_size)

    # ---------------------------------------------------------------- state for resuming
    def rng_state(self) -> dict:
        """This process's random streams that differ between ranks (dropout)."""
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {"torch": torch.get_rng_state(), "cuda": cuda}

    def state_dict(self, finished_record: dict | None = None) -> dict:
        """Everything needed to resume. Under torchrun a collective: every rank must call it."""
        history = self.history + ([finished_record] if finished_record is not None else [])
        rank_rng = distributed.all_gather(self.rng_state()) if distributed.is_distributed() else []
        return {
            "format": "gcnshrink.train-state/1",
            "epoch": self.epoch,
            "step": self.step,
            "history": history,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "rank_rng": rank_rng,  # every rank's streams, in rank order (torchrun only)
            "method": self.method.state_dict() if self.method is not None else {},
            "callbacks": {type(c).__name__: c.state_dict() for c in self.callbacks},
            "config": {"epochs": self.config.epochs, "seed": self.config.seed},
        }

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") != "gcnshrink.train-state/1":
            raise GcnshrinkError("not a gcnshrink training state file")
        if state["config"]["seed"] != self.config.seed:
            raise GcnshrinkError(
                f"the saved run used seed {state['config']['seed']}, this one {self.config.seed}"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        rank_rng = state.get("rank_rng") or []
        if len(rank_rng) == distributed.world_size() > 1:  # the same number of processes
            own = rank_rng[distributed.rank()]
            torch.set_rng_state(own["torch"])
            if own["cuda"] is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(own["cuda"], self.device)
        else:  # one process, or another number of them (continues as a run of that many)
            torch.set_rng_state(state["torch_rng"])
            if state["cuda_rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
        if self.method is not None:
            self.method.load_state_dict(state["method"])
        for callback in self.callbacks:
            if type(callback).__name__ in state["callbacks"]:
                callback.load_state_dict(state["callbacks"][type(callback).__name__])
        self.epoch, self.step, self.history = state["epoch"], state["step"], state["history"]

    # ---------------------------------------------------------------- training
    def train_epoch(self) -> dict:
        config = self.config
        total_steps = self.steps_per_epoch * config.epochs
        self.model.train()
        order = self.batch_order()
        epoch_loss, seen = 0.0, 0
        for i in range(0, len(order), config.batch_size):
            idx, share = self.local_share(order[i : i + config.batch_size])
            xb = self.x_train[idx].to(self.device, non_blocking=True)
            yb = self.y_train[idx].to(self.device, non_blocking=True)
            self.batch_labels = yb
            for callback in self.callbacks:
                callback.on_step_start(self, self.step / max(total_steps - 1, 1))
            with self.autocast():
                loss = self.loss_fn(self.forward_model(xb), yb)
            if share != 1.0:
                loss = loss * share
            for callback in self.callbacks:
                extra = callback.extra_loss(self)
                if extra is not None:
                    loss = loss + extra
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            if share > 0:
                epoch_loss += loss.item() / share * len(idx)
                seen += len(idx)
            self.step += 1
        mean_loss = self.reduce_sum(epoch_loss) / max(self.reduce_sum(seen), 1)
        # each rank updated its batch-norm statistics from its own share: validate rank 0's
        distributed.broadcast_buffers(self.model)
        return {"epoch": self.epoch + 1, "loss": mean_loss, "val_accuracy": None}

    def run(self) -> FitResult:
        started = time.perf_counter()
        for callback in self.callbacks:
            callback.on_fit_start(self)
        try:
            with distributed.peer_failures():
                while self.epoch < self.config.epochs:
                    record = self.train_epoch()
                    self.epoch += 1
                    for callback in self.callbacks:
                        callback.on_epoch_end(self, record)
                    self.history.append(record)
        finally:
            for callback in self.callbacks:
                if isinstance(callback, ProgressDisplay) and callback.progress is not None:
                    callback.progress.stop()
        for callback in self.callbacks:
            callback.on_fit_end(self)
        selection = next(c for c in self.callbacks if isinstance(c, ValidationSelection))
        best = selection.best
        self.model.cpu().eval()
        return FitResult(
            self.model,
            best["epoch"],
            best["val_accuracy"],
            self.history,
            time.perf_counter() - started,
            best["masks"],
            best["val_accuracy_by_rate"],
            best.get("averaged_epochs", 1),  # a state written before averaging existed has none
        )


def fit(
    model: nn.Module,
    data: SkeletonData,
    config: TrainConfig,
    method: PruningMethod | None = None,
    description: str = "train",
    *,
    state_path: str | Path | None = None,
    resume_from: str | Path | None = None,
) -> FitResult:
    """Train ``model`` (with ``method`` attached, if any) on data.train; keep what is best on
    data.val. ``state_path`` writes resumable state every epoch; ``resume_from`` continues from it."""
    callbacks: list[Callback] = []
    if method is not None:
        callbacks.append(MethodHooks(method))
    callbacks += [
        ValidationSelection(data, method),
        ProgressDisplay(description, method, config.progress and distributed.is_main()),
    ]
    if state_path is not None:  # every rank takes part, rank 0 writes
        callbacks.append(PeriodicState(state_path))
    loop = TrainingLoop(model, data, config, method, callbacks)
    if resume_from is not None:
        loop.load_state_dict(read_torch_file(resume_from))
    return loop.run()
