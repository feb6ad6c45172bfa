"""gcnshrink beside its peers, in one run: accuracy at high rates, cost, deployment and scale.

    python benchmarks/run.py --jobs 2   # the full run on 2 CPU cores (hours, see docs/benchmarks.md)
    python benchmarks/run.py            # the same, its units one after the other in one process
    python benchmarks/run.py --quick    # one seed, two rates, short training: ~7 min on 2 cores
    python benchmarks/run.py --smoke    # seconds: what the test suite runs, to catch breakage

Writes ``<out>.json`` (every record) and ``<out>.md`` (the summary tables); ``--out`` defaults to
benchmarks/results/run (run_quick with --quick). Both are rewritten after every finished
(dataset, seed) unit and every part, so a stopped run keeps its results (marked incomplete).

``--jobs N`` runs the accuracy part's (dataset, seed) units in N worker processes (spawned, each
with ``--threads`` torch threads); the records are merged back in (dataset, seed) order, so the
output has the same form as with one process, and the first unit's models come back to this
process for the deployment part. The timings of the accuracy part (fine-tunes, dense epochs) then
run with N processes sharing the machine, as settings.jobs and settings.timing_note say in the
JSON: the cost table stays valid (each fine-tune is divided by a dense epoch timed in the same
unit), but absolute seconds are slower than alone. Deployment and scale run after the workers,
in this process alone. A failing unit stops the run with its worker's traceback.

Parts, in this order:

1. **Accuracy** (``synthetic:hands`` and ``synthetic:sbu``, test split, mean ± std over seeds): for
   each dataset and seed the default ``gcn`` is trained (best epoch on validation), then pruned at
   every rate by every gcnshrink method through ``gcnshrink.api`` with the same fine-tune budget
   (epochs, Adam learning rate, batch 64, best epoch on validation), and by two peers run here,
   not through gcnshrink: ``torch-prune`` (``torch.nn.utils.prune.global_unstructured`` with L1
   over every Linear/Conv weight, then the fine-tune loop written below with the same budget) and
   ``torch-pruning`` (Torch-Pruning's ``BasePruner``, structured, channel ratio searched to reach
   the rate in weights, then the same loop). Torch-Pruning is tried first as its README shows;
   when that fails on the graph convolution, the failure (crash message, or logits that change
   when channels that carry only zeros are removed: a wrong channel mapping) is recorded, and the
   next, more hand-held configuration is tried. ``mrmp`` trains once for all rates and extracts.
2. **Cost**: each fine-tune's wall time in units of one dense training epoch, timed by a dense
   epoch run between the rate blocks of the same run (so both see the same machine load).
3. **Deployment** (first dataset and seed, ``--deploy-rate``): bytes on disk (dense safetensors,
   compacted safetensors, sparse safetensors, gzip -9 of the compacted file), onnxruntime latency
   at batch 1 and 32, FLOPs of one sample relative to dense beside the measured speed-up. Peers as
   their users save them: ``torch.save(state_dict)`` with the masks, then after ``prune.remove``
   (and its gzip), Torch-Pruning's ``torch.save(model)``; ONNX by ``torch.onnx.export``. Latency
   is timed interleaved: every model's session is created first, then each round runs every
   model once at each batch size, in an order shuffled every round (fixed seed), so that all see
   the same machine load; the median over ``latency_repeats`` rounds, after one warm-up round.
4. **Scale**: training throughput of ``stgcn`` on NTU-sized input (V=25, M=2), dense and under
   each method (``benchmarks/throughput.py``'s worker, one process), and the torch-prune masked
   model with the plain loop.

Nothing is asserted: it is a measurement. Run it alone on the machine where possible.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gzip
import io
import json
import multiprocessing
import os
import pickle
import queue
import resource
import signal
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import epochs_for_steps, fmt, machine, onnx_runner, round_robin_ms
from throughput import launch, ntu_data
from torch import nn
from torch.nn.utils import prune
from torch.utils.flop_counter import FlopCounterMode

from gcnshrink import api
from gcnshrink.compact import compact_model
from gcnshrink.data import load_data
from gcnshrink.defaults import FINETUNE_LR
from gcnshrink.export import exportable_state
from gcnshrink.models import create_model
from gcnshrink.onnx_export import export_onnx
from gcnshrink.pruning import available_methods
from gcnshrink.sparse_format import size_report
from gcnshrink.train import TrainConfig
from gcnshrink.train import evaluate as test_metrics

RESULTS = Path(__file__).parent / "results"
# method[:score]; each is skipped with a note if this gcnshrink does not have it
METHODS = ("mp", "mp:lamp", "random", "structured", "tcp", "srmp", "mrmp", "ctf")
PEERS = ("torch-prune", "torch-pruning")
PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)  # the weights a torch user prunes: gcnshrink's scope


@dataclass
class Settings:
    datasets: list[str]
    seeds: list[int]
    rates: list[float]
    dense_epochs: int
    finetune: int  # epochs, unless finetune_steps is set
    lr: float = FINETUNE_LR
    # the fine-tune budget in optimizer steps (batches of 64), as whole epochs of each dataset:
    # synthetic:sbu has 4 batches an epoch and synthetic:hands 12, so the same number of epochs
    # would give sbu a third of the updates (docs/methods.md, "Extreme rates")
    finetune_steps: int | None = None
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    peers: list[str] = field(default_factory=lambda: list(PEERS))
    model_config: dict = field(default_factory=dict)
    deploy_rate: float = 0.99
    latency_batches: list[int] = field(default_factory=lambda: [1, 32])
    latency_repeats: int = 30
    deploy_methods: list[str] | None = None  # None: dense, every method and peer
    tp_cpu_limit: float = (
        60.0  # CPU seconds per Torch-Pruning attempt before it counts as a failure
    )
    tp_stgcn: bool = True  # also try Torch-Pruning on the scale part's stgcn
    # stgcn throughput: base width, frames, batch, timed steps, warm-up steps
    scale: dict = field(
        default_factory=lambda: {
            "base_width": 64, "frames": 64, "batch_size": 16, "steps": 6, "warmup": 1
        }
    )  # fmt: skip
    scale_methods: list[str] = field(
        default_factory=lambda: [
            "dense",
            "mp",
            "random",
            "structured",
            "tcp",
            "srmp",
            "mrmp",
            "ctf",
        ]
    )


FULL = dict(
    datasets=["synthetic:hands", "synthetic:sbu"], seeds=[0, 1, 2],
    rates=[0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999], dense_epochs=150, finetune=20,
    finetune_steps=240,
)  # fmt: skip
QUICK = dict(
    datasets=["synthetic:hands", "synthetic:sbu"], seeds=[0], rates=[0.99, 0.998],
    dense_epochs=25, finetune=3, latency_repeats=10,
    deploy_methods=["dense", "mp", "structured", "tcp", "ctf", "mrmp", *PEERS],
    tp_cpu_limit=30.0,
    scale={"base_width": 16, "frames": 64, "batch_size": 16, "steps": 3, "warmup": 1},
)  # fmt: skip
SMOKE = dict(
    datasets=["synthetic:sbu?train=64&test=32"], seeds=[0, 1], rates=[0.9], dense_epochs=1,
    finetune=1,
    methods=["mp", "tcp", "mrmp"], deploy_rate=0.9, latency_batches=[1, 4], latency_repeats=2,
    deploy_methods=["dense", "mp", "torch-prune"],
    model_config={"heads": 2, "head_width": 4, "key_width": 2, "hidden": 16},
    scale={"base_width": 4, "frames": 8, "batch_size": 2, "steps": 1, "warmup": 1},
    scale_methods=["dense"], tp_stgcn=False,
)  # fmt: skip


# ---------------------------------------------------------------- the peers' own code
def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]


def weight_count(model: nn.Module) -> int:
    return sum(m.weight.numel() for m, _ in prunable_weights(model))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    batches = zip(x.split(256), y.split(256), strict=True)
    hits = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in batches)
    return hits / len(y)


def plain_finetune(model: nn.Module, data, epochs: int, lr: float, seed: int) -> dict:
    """The peers' fine-tune, written here as a torch user writes it, with gcnshrink's budget:
    Adam at ``lr``, cross-entropy, shuffled batches of 64, best validation epoch kept."""
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    best_val, best_state, best_epoch = -1.0, None, 0
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        for idx in torch.randperm(len(data.y_train), generator=order).split(64):
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        val = accuracy(model, data.x_val, data.y_val)
        if val >= best_val:
            best_val, best_epoch = val, epoch
            best_state = copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"finetune_seconds": time.perf_counter() - start, "best_epoch": best_epoch}


def torch_prune(dense: nn.Module, rate: float) -> nn.Module:
    """torch.nn.utils.prune: global L1 unstructured over every Linear/Conv weight."""
    model = copy.deepcopy(dense)
    prune.global_unstructured(
        prunable_weights(model), pruning_method=prune.L1Unstructured, amount=rate
    )
    return model


def tp_configs(model: nn.Module) -> list[tuple[str, dict]]:
    """Torch-Pruning configurations, from its README's to the most hand-held, for this model."""
    import torch_pruning as tp

    last = [m for m in model.modules() if isinstance(m, PRUNABLE)][-1]  # the classifier
    configs = [
        ("README: global, group L1", {"global_pruning": True, "ignored_layers": [last]}),
        ("per layer", {"global_pruning": False, "ignored_layers": [last]}),
    ]
    graph_layers = []
    if hasattr(model, "st_gcn_networks"):  # stgcn: declare the K partitions of the graph conv
        groups = {b.gcn.conv: b.gcn.partitions for b in model.st_gcn_networks}
        unwrapped = [(p, 0) for p in getattr(model, "edge_importance", [])]
        configs.append(
            ("out_channel_groups = partitions, edge_importance on axis 0",
             {"global_pruning": True, "ignored_layers": [last], "out_channel_groups": groups,
              "unwrapped_parameters": unwrapped}),
        )  # fmt: skip
        graph_layers = [b.gcn.conv for b in model.st_gcn_networks]
    if hasattr(model, "blocks"):  # gcn: declare the attention heads
        groups = {}
        for block in model.blocks:
            for layer in (block.query, block.key, block.value):
                groups[layer] = len(block.value_widths)
        configs.append(
            ("out_channel_groups = heads",
             {"global_pruning": True, "ignored_layers": [last], "out_channel_groups": groups}),
        )  # fmt: skip
        graph_layers = list(model.blocks)
    configs.append(
        ("graph layers ignored",
         {"global_pruning": True, "ignored_layers": [last, *graph_layers]}),
    )  # fmt: skip
    del tp
    return configs


def tp_prune(dense: nn.Module, example: torch.Tensor, config_index: int, ratio: float):
    """Torch-Pruning at channel ratio ``ratio``; returns the pruned copy and, per module name,
    which output channels it removed (for the channel-mapping check)."""
    import torch_pruning as tp

    model = copy.deepcopy(dense).eval()
    _, config = tp_configs(model)[config_index]
    names = {id(m): n for n, m in model.named_modules()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.BasePruner(
            model, example, importance=tp.importance.GroupMagnitudeImportance(p=1),
            pruning_ratio=ratio, **config,
        )  # fmt: skip
        removed: dict[str, set[int]] = {}
        for group in pruner.step(interactive=True):
            for item in group.items:
                module = item.dep.target.module
                norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
                out = pruner.DG.is_out_channel_pruning_fn(item.dep.handler)
                if id(module) in names and (norm or (out and isinstance(module, PRUNABLE))):
                    removed.setdefault(names[id(module)], set()).update(int(i) for i in item.idxs)
            group.prune()
    return model, removed


@torch.no_grad()
def mapping_error(dense: nn.Module, pruned: nn.Module, removed: dict, x: torch.Tensor) -> float:
    """Removing channels that carry only zeros must not change the logits: zero, in the dense
    model, the output channels Torch-Pruning removed, and compare (max |Δ| / max |logit|)."""
    reference = copy.deepcopy(dense).eval()
    modules = dict(reference.named_modules())
    for name, idxs in removed.items():
        index = torch.tensor(sorted(idxs))
        for p in (modules[name].weight, getattr(modules[name], "bias", None)):
            if p is not None:
                p[index] = 0
    want = reference(x)
    got = pruned.eval()(x)
    if got.shape != want.shape:
        return float("inf")
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def where(exc: BaseException) -> str:
    """The innermost frame of the exception's traceback, as file:line (function)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    frame = frames[-1] if not isinstance(exc, OutOfTime) else frames[-2]
    return f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno} ({frame.name})"


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text} (in {where(exc)})"


class OutOfTime(Exception):
    pass


@contextlib.contextmanager
def cpu_limit(seconds: float):
    """Raise OutOfTime after ``seconds`` of this process's CPU time (not wall time, so a loaded
    machine does not cut a run short): Torch-Pruning can loop for minutes building its groups."""

    def stop(signum, frame):
        raise OutOfTime(f"no result after {seconds:g} s of CPU time")

    previous = signal.signal(signal.SIGPROF, stop)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def tp_attempts(
    dense: nn.Module, example: torch.Tensor, limit: float
) -> tuple[list[dict], int | None]:
    """Try each configuration at channel ratio 0.5: crash, wrong mapping, too slow, or usable."""
    attempts, usable = [], None
    for index, (name, _) in enumerate(tp_configs(dense)):
        record = {"config": name}
        try:
            with cpu_limit(limit):
                pruned, removed = tp_prune(dense, example, index, 0.5)
            error = mapping_error(dense, pruned, removed, example)
            record["removed_weights"] = 1 - weight_count(pruned) / weight_count(dense)
            record["mapping_error"] = error
            if error > 1e-4:
                record["outcome"] = (
                    f"wrong channel mapping: removing channels that carry only zeros changed "
                    f"the logits by {error:.2g} (relative)"
                )
            else:
                record["outcome"] = "ran"
        except OutOfTime as exc:
            record["outcome"] = f"too slow: {exc} (in {where(exc)})"
        except Exception as exc:  # the peer's failure is the result
            record["outcome"] = "crash: " + one_line(exc)
        attempts.append(record)
        if record["outcome"] == "ran":
            usable = index
            break
    return attempts, usable


def tp_at_rate(dense: nn.Module, example: torch.Tensor, index: int, rate: float) -> tuple:
    """Search the channel ratio whose weight rate is closest above ``rate`` (or the highest)."""
    total = weight_count(dense)
    low, high, best = 0.0, 1.0, None
    for _ in range(12):
        mid = (low + high) / 2
        try:
            model, _ = tp_prune(dense, example, index, mid)
            realized = 1 - weight_count(model) / total
        except Exception:  # too high a ratio can empty a layer
            high = mid
            continue
        if realized >= rate:
            best, high = (model, realized, mid), mid
        else:
            low = mid
            if best is None or realized > best[1] and best[1] < rate:
                best = (model, realized, mid)
    return best


# ---------------------------------------------------------------- parts
def accuracy_part(s: Settings, methods: list[str], log, result: dict, save, run: dict) -> dict:
    """Fills result's accuracy, timing and torch_pruning_attempts, one (dataset, seed) unit at a
    time, in that order, saved after every finished unit; returns the models that the deployment
    part measures. ``run``: jobs (worker processes; 1: the units in this process, one after the
    other), threads (torch threads of each worker), started (the run's start, for the log) and
    work (the run's own temp folder)."""
    units = [(spec, seed) for spec in s.datasets for seed in s.seeds]
    done: dict[int, dict] = {}

    def finished(index: int, out: dict) -> None:  # merged back in unit order, whatever finished
        done[index] = out
        for key in ("accuracy", "torch_pruning_attempts", "timing"):
            result[key][:] = [r for i in sorted(done) for r in done[i][key]]
        save()

    if run["jobs"] <= 1 or len(units) == 1:
        for index, (spec, seed) in enumerate(units):
            finished(index, accuracy_unit(s, methods, spec, seed, log))
    else:
        in_workers(s, methods, units, run, finished)
    return done[0]["deploy_models"]


def accuracy_unit(s: Settings, methods: list[str], spec: str, seed: int, log) -> dict:
    """One dataset and seed: its accuracy records, Torch-Pruning attempts and timing rows, and
    (first dataset and seed only) the models that the deployment part measures."""
    records, attempts, timing = [], [], []
    deploy_models = {}
    data = load_data(spec, seed=seed)
    if s.finetune_steps:  # this dataset's epochs for the budget in steps
        s = replace(s, finetune=epochs_for_steps(s.finetune_steps, len(data.x_train)))
    config = TrainConfig(epochs=s.dense_epochs, seed=seed, progress=False)
    ckpt, dense = api.train(data, "gcn", config=config, model_config=s.model_config)
    epoch_s = dense["seconds"] / s.dense_epochs
    base = {"data": spec, "seed": seed}
    records.append({**base, "method": "dense", "rate": 0.0, "accuracy": dense["accuracy"],
                    "val_accuracy": dense["val_accuracy"], "finetune_epochs": s.finetune})  # fmt: skip
    timing.append({**base, "dense_epoch_seconds": epoch_s, "when": "dense training"})
    log(f"{spec} seed {seed}: dense {dense['accuracy']:.3f} ({epoch_s:.2f} s/epoch)")
    dense_model = ckpt.build_model().eval()
    example = data.x_val[:4]
    first = spec == s.datasets[0] and seed == s.seeds[0]
    if first:
        deploy_models["dense"] = dense_model
    usable = None
    if "torch-pruning" in s.peers:
        tried, usable = tp_attempts(dense_model, example, s.tp_cpu_limit)
        attempts.append({**base, "attempts": tried})
        for t in tried:
            log(f"  torch-pruning [{t['config']}]: {t['outcome']}")
    multi = None
    if "mrmp" in methods:
        multi = api.prune(
            ckpt, data, method="mrmp", rates=s.rates, epochs=s.finetune, lr=s.lr,
            seed=seed, progress=False, allow_collapse=True,
        )  # fmt: skip
    for rate in s.rates:
        # a dense epoch between the rate blocks: the cost unit, under this block's load
        _, ref = api.train(
            data, "gcn", config=TrainConfig(epochs=1, seed=seed, progress=False),
            model_config=s.model_config,
        )  # fmt: skip
        timing.append({**base, "dense_epoch_seconds": ref["seconds"], "when": rate})
        for method in [*methods, *s.peers]:
            rec = {**base, "method": method, "rate": rate}
            try:
                model = run_method(s, method, ckpt, data, dense_model, example, rate,
                                   seed, usable, multi, rec)  # fmt: skip
            except Exception as exc:
                if method in s.peers:  # a peer's crash is its result
                    rec["error"] = one_line(exc)
                    model = None
                else:
                    raise
            records.append(rec)
            shown = f"{rec['accuracy']:.3f}" if "accuracy" in rec else rec.get("error")
            log(f"  {method} @ {rate:g}: {shown}")
            if first and rate == s.deploy_rate and model is not None:
                deploy_models[method] = model
    return {"accuracy": records, "torch_pruning_attempts": attempts, "timing": timing,
            "deploy_models": deploy_models, "example": example}  # fmt: skip


# ---------------------------------------------------------------- --jobs: units in workers
def in_workers(s: Settings, methods: list[str], units: list, run: dict, finished) -> None:
    """Run the units in ``run["jobs"]`` spawned worker processes, calling ``finished(index,
    output)`` in this process as each one ends (in the order they end). A unit that raises, or a
    worker that dies, stops the run: the other workers are terminated and the error is raised
    here with the worker's traceback."""
    ctx = multiprocessing.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    jobs = min(run["jobs"], len(units))
    for index, unit in enumerate(units):
        tasks.put((index, *unit))
    for _ in range(jobs):
        tasks.put(None)  # one stop per worker, after the units
    shared = {k: run[k] for k in ("threads", "started", "work")}
    workers = [
        ctx.Process(target=unit_worker, args=(s, methods, len(units), shared, tasks, results))
        for _ in range(jobs)
    ]
    running: dict[int, int] = {}  # worker pid -> the unit it runs
    try:
        for worker in workers:
            worker.start()
        left = len(units)
        while left:
            message = next_message(results, workers, units, running)
            if message is None:
                continue
            kind, index, payload = message
            spec, seed = units[index]
            if kind == "started":
                running[payload] = index
            elif kind == "failed":
                raise RuntimeError(
                    f"{spec} seed {seed} failed in a worker process; its traceback:\n{payload}"
                )
            else:
                out = pickle.loads(payload)
                if out["deploy_models"]:
                    out["deploy_models"] = received_models(out["deploy_models"])
                finished(index, out)
                left -= 1
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
        for worker in workers:
            worker.join()


def next_message(results, workers: list, units: list, running: dict) -> tuple | None:
    """The next message of a worker, or None after a while without one; raises if a worker died
    without reporting (killed from outside: no traceback to show) or all stopped early."""
    try:
        return results.get(timeout=2.0)
    except queue.Empty:
        pass
    for worker in workers:
        if worker.exitcode not in (None, 0):
            unit = ""
            if worker.pid in running:
                unit = " while running {} seed {}".format(*units[running[worker.pid]])
            raise RuntimeError(
                f"a worker process died (exit code {worker.exitcode}){unit}; it left no traceback "
                "(killed from outside, or out of memory?)"
            )
    if all(worker.exitcode == 0 for worker in workers):
        raise RuntimeError("the worker processes stopped before every unit was reported")
    return None


def unit_worker(s: Settings, methods: list[str], count: int, run: dict, tasks, results) -> None:
    """A worker process of ``--jobs``: takes units until told to stop; reports each as started,
    then done (its output, the deployment models through a file of the run's temp folder) or
    failed (its traceback)."""
    torch.set_num_threads(run["threads"])
    while (task := tasks.get()) is not None:
        index, spec, seed = task
        results.put(("started", index, os.getpid()))

        def log(text: str, tag=f"[unit {index + 1}/{count}]") -> None:
            print(f"[{time.time() - run['started']:6.0f} s] {tag} {text}", flush=True)

        try:
            out = accuracy_unit(s, methods, spec, seed, log)
            example = out.pop("example")
            if out["deploy_models"]:
                out["deploy_models"] = sent_models(out["deploy_models"], example, Path(run["work"]))
            # plain pickle: the queue's own would share tensors through this process, which may
            # have exited by the time they are read
            done = pickle.dumps(out)
        except BaseException:
            results.put(("failed", index, traceback.format_exc()))
            return
        results.put(("done", index, done))


def sent_models(models: dict, x: torch.Tensor, work: Path) -> str:
    """Save the deployment models whole (masked ones with their pruning hooks, Torch-Pruning's
    with its new shapes) with their logits on ``x``, for ``received_models``."""
    with torch.no_grad():
        logits = {name: model.eval()(x) for name, model in models.items()}
    path = work / "deploy_models.pt"
    torch.save({"models": models, "x": x, "logits": logits}, path)
    return str(path)


def received_models(path: str) -> dict:
    """The deployment models a worker saved, checked to give the same logits here. The file is
    this run's own (its temp folder), so loading whole objects (not weights only) is safe."""
    sent = torch.load(path, weights_only=False)
    with torch.no_grad():
        for name, model in sent["models"].items():
            got, want = model.eval()(sent["x"]), sent["logits"][name]
            if not torch.allclose(got, want, rtol=1e-5, atol=1e-6):
                raise RuntimeError(f"the {name} model changed on its way from the worker process")
    return sent["models"]


def run_method(s, method, ckpt, data, dense_model, example, rate, seed, usable, multi, rec):
    if method == "mrmp" and len(s.rates) == 1:  # one rate: an ordinary single-rate checkpoint
        rec.update({k: multi.summary[k] for k in ("accuracy", "realized_rate", "finetune_seconds")})
        return multi.model.eval()
    if method == "mrmp":
        extracted = api.extract(multi.checkpoint, rate)
        model = extracted.model.eval()
        rec["accuracy"] = test_metrics(model, data.x_test, data.y_test, data.num_classes)[
            "accuracy"
        ]
        rec["realized_rate"] = extracted.summary["realized_rate"]
        rec["finetune_seconds"] = multi.summary["finetune_seconds"]
        rec["note"] = "trained once for all rates"
        return model
    if method == "torch-prune":
        model = torch_prune(dense_model, rate)
        rec.update(plain_finetune(model, data, s.finetune, s.lr, seed))
        rec["accuracy"] = accuracy(model, data.x_test, data.y_test)
        kept = sum(int(m.weight_mask.sum()) for m, _ in prunable_weights(model))
        rec["realized_rate"] = 1 - kept / weight_count(dense_model)
        return model
    if method == "torch-pruning":
        if usable is None:
            rec["error"] = "no configuration ran (see the attempts)"
            return None
        found = tp_at_rate(dense_model, example, usable, rate)
        if found is None:
            rec["error"] = "no channel ratio pruned without crashing"
            return None
        model, realized, ratio = found
        rec["realized_rate"], rec["channel_ratio"] = realized, ratio
        if realized < rate - 1e-3:
            rec["note"] = f"reaches at most rate {realized:.4f}"
        rec.update(plain_finetune(model, data, s.finetune, s.lr, seed))
        rec["accuracy"] = accuracy(model, data.x_test, data.y_test)
        return model
    name, _, score = method.partition(":")
    outcome = api.prune(
        ckpt, data, method=name, rate=rate, epochs=s.finetune, lr=s.lr, seed=seed,
        progress=False, allow_collapse=True, **({"score": score} if score else {}),
    )  # fmt: skip
    summary = outcome.summary
    rec.update({k: summary[k] for k in ("accuracy", "realized_rate", "finetune_seconds")})
    return outcome.model.eval()


def file_bytes(obj) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return len(buffer.getvalue())


def flops(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return int(counter.get_total_flops())


def deploy_part(s: Settings, models: dict, data, work: Path, log) -> list[dict]:
    """Sizes, FLOPs and the ONNX file of every model first; then their latencies, timed
    interleaved (``interleaved_latencies``)."""
    calibration = data.x_val[: max(s.latency_batches)]
    if s.deploy_methods is not None:
        models = {k: v for k, v in models.items() if k in s.deploy_methods}
    dense_flops = flops(models["dense"], calibration[:1])
    rows, onnx_paths = [], {}
    for method, model in models.items():
        row = {"method": method, "rate": 0.0 if method == "dense" else s.deploy_rate}
        try:
            found, onnx_paths[method] = deploy_one(method, model, calibration, dense_flops, work)
            row.update(found)
        except Exception as exc:
            if method not in PEERS:
                raise
            row["error"] = one_line(exc)  # a peer whose output does not export: the result
        rows.append(row)
    latency = interleaved_latencies(s, onnx_paths, calibration)
    base = rows[0]
    for row in rows:
        if isinstance(latency.get(row["method"]), str):
            row["error"] = latency[row["method"]]
        elif row["method"] in latency:
            row.update(latency[row["method"]])
        for b in s.latency_batches:
            if f"latency_ms_b{b}" in row:
                row[f"speedup_b{b}"] = base[f"latency_ms_b{b}"] / row[f"latency_ms_b{b}"]
        log(f"  deploy {row['method']}: {json.dumps(row)}")
    return rows


def interleaved_latencies(s: Settings, paths: dict[str, Path], calibration) -> dict:
    """onnxruntime (CPU, default threads) latency of every model at every batch size, timed
    interleaved so that every model sees the same machine load: all sessions are created first,
    then each round runs every model once at each batch size, in an order shuffled every round
    (fixed seed); after one warm-up round, the median of ``latency_repeats`` rounds. Per method:
    its ``latency_ms_b{batch}`` values, or the one-line error of a peer whose ONNX does not run."""
    out, calls = {}, {}
    for method, path in paths.items():
        try:
            runner = onnx_runner(path, max(s.latency_batches))
            feeds = {
                b: {runner.input_name: np.ascontiguousarray(calibration[:b].numpy(),
                                                            dtype=runner.input_dtype)}
                for b in s.latency_batches
            }  # fmt: skip
            for feed in feeds.values():  # runs at all: a peer's export can fail only here
                runner.session.run(None, feed)
        except Exception as exc:
            if method not in PEERS:
                raise
            out[method] = one_line(exc)
            continue
        for b, feed in feeds.items():
            calls[(method, b)] = partial(runner.session.run, None, feed)
    medians = round_robin_ms(calls, s.latency_repeats, warmup=1, shuffle_seed=0)
    for (method, b), ms in medians.items():
        out.setdefault(method, {})[f"latency_ms_b{b}"] = ms
    return out


def deploy_one(method: str, model, calibration, dense_flops: int, work: Path) -> tuple[dict, Path]:
    """The model's file sizes, parameters and FLOP ratio, and its ONNX file."""
    row = {}
    onnx_path = work / f"{method.replace(':', '-')}.onnx"
    if method == "torch-prune":
        row["bytes_state_dict_with_masks"] = file_bytes(model.state_dict())
        removed = copy.deepcopy(model)
        for module, name in prunable_weights(removed):
            prune.remove(module, name)
        raw = io.BytesIO()
        torch.save(removed.state_dict(), raw)
        row["bytes_state_dict_removed"] = len(raw.getvalue())
        row["bytes_gzip"] = len(gzip.compress(raw.getvalue(), 9))
        exported = removed
    elif method == "torch-pruning":
        raw = io.BytesIO()
        torch.save(model, raw)  # Torch-Pruning's docs: save the whole model object
        row["bytes_model"] = len(raw.getvalue())
        row["bytes_gzip"] = len(gzip.compress(raw.getvalue(), 9))
        exported = model
    else:
        sizes = size_report(exportable_state(model.state_dict()))
        row["bytes_dense"], row["bytes_gzip"] = sizes["bytes_dense"], sizes["bytes_gzip"]
        if method != "dense":  # compacted, then its sparse safetensors (tensors only)
            model = compact_model(model, calibration).model
            sizes = size_report(exportable_state(model.state_dict()))
            row["bytes_compact"] = sizes["bytes_dense"]
            row["bytes_sparse"] = sizes["bytes_sparse"]
            row["bytes_gzip"] = sizes["bytes_gzip"]
        exported = model
    if method in PEERS:  # as their users export: torch.onnx.export, dynamic batch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                exported.eval(), (calibration[:2],), str(onnx_path), dynamo=True,
                input_names=["skeleton"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                external_data=False, verbose=False,
            )  # fmt: skip
    else:
        export_onnx(exported, calibration[:2], onnx_path, force=True)
    row["bytes_onnx"] = onnx_path.stat().st_size
    row["params"] = sum(p.numel() for p in exported.parameters())
    row["flop_ratio"] = flops(exported, calibration[:1]) / dense_flops
    return row, onnx_path


def scale_part(s: Settings, methods: list[str], log) -> list[dict]:
    args = argparse.Namespace(**s.scale)
    rows = []
    for method in methods:
        result = launch(args, method, 1, "fp32", "cpu")
        rows.append({"method": method, **result})
        log(f"  scale {method}: {result}")
    rows.append({"method": "torch-prune (masked, plain loop)", **peer_throughput(s)})
    log(f"  scale torch-prune: {rows[-1]}")
    return rows


def peer_throughput(s: Settings) -> dict:
    """torch.nn.utils.prune's masked stgcn at 0.9 trained by the plain loop, timed like the
    worker of benchmarks/throughput.py (median step after warm-up, one thread)."""
    c = s.scale
    data = ntu_data(c["batch_size"], c["warmup"] + c["steps"], c["frames"])
    torch.manual_seed(0)
    model = create_model("stgcn", num_classes=60, layout=data.layout, base_width=c["base_width"])
    model = torch_prune(model, 0.9).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    batches = zip(
        data.x_train.split(c["batch_size"]), data.y_train.split(c["batch_size"]), strict=True
    )
    for xb, yb in batches:
        start = time.perf_counter()
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    step = statistics.median(times[c["warmup"] :])
    return {"samples_per_s": c["batch_size"] / step, "step_seconds": step}


# ---------------------------------------------------------------- summary
def render(result: dict) -> str:
    s = result["settings"]
    m = result["machine"]
    lines = [
        f"Command: `{result['command']}`",
        "",
        ("" if result["complete"] else "**Incomplete run** (stopped before its end). ")
        + f"Run {result['started']} – {result['finished']} (wall {result['wall_seconds'] / 60:.1f} "
        f"min, {result['cpu_seconds'] / 60:.1f} min of CPU) "
        f"on {m['cores']} CPU cores ({m['cpu']}), torch {m['torch']}, {m['torch_threads']} torch "
        f"thread; load average before {fmt_load(result['load_before'])}, after "
        f"{fmt_load(m['load_average'])} (a shared machine: timings carry that load)."
        + (f" With `--jobs {s['jobs']}`: {s['timing_note']}." if s.get("jobs", 1) > 1 else ""),
        "",
        f"Default `gcn`{' ' + json.dumps(s['model_config']) if s['model_config'] else ''}, "
        f"dense training {s['dense_epochs']} epochs; every method and peer fine-tuned "
        f"{finetune_budget(result)}, Adam {s['lr']:g}, batch 64, best validation epoch. Test "
        f"accuracy, {'mean ± std over seeds ' if len(s['seeds']) > 1 else 'seed '}"
        f"{','.join(map(str, s['seeds']))}.",
    ]
    columns = [*result["methods"], *s["peers"]]
    recs = result["accuracy"]
    for spec in s["datasets"] if recs else []:  # none with --parts scale (or deploy alone)
        dense = [r["accuracy"] for r in recs if r["data"] == spec and r["method"] == "dense"]
        lines += ["", f"### Accuracy: {spec} (dense {fmt(dense)})", "",
                  "| rate | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]  # fmt: skip
        for rate in s["rates"]:
            row = [f"{rate:g}"]
            for method in columns:
                mine = [r for r in recs if r["data"] == spec and r["method"] == method
                        and r["rate"] == rate]  # fmt: skip
                values = [r["accuracy"] for r in mine if "accuracy" in r]
                cell = fmt(values) if values else "fails"
                short = [r for r in mine if "note" in r and "at most" in r["note"]]
                if short:
                    cell += f" (rate {min(r['realized_rate'] for r in short):.3f})"
                row.append(cell)
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "### Torch-Pruning on the graph convolution", ""]
    seen = set()
    for entry in result["torch_pruning_attempts"]:
        if entry["data"] in seen:
            continue
        seen.add(entry["data"])
        lines.append(f"{entry['data']} (`gcn`):")
        lines += [f"- {a['config']}: {a['outcome']}" for a in entry["attempts"]]
    for entry in result.get("torch_pruning_stgcn", []):
        lines.append("")
        lines.append("`stgcn` (NTU-sized, the scale model):")
        lines += [f"- {a['config']}: {a['outcome']}" for a in entry["attempts"]]
    if recs:
        lines += render_cost(result, columns)
    lines += render_deploy(result)
    lines += render_scale(result)
    return "\n".join(lines) + "\n"


def timing_note(workers: int) -> str:
    """What the accuracy part's timings shared the machine with (settings.timing_note)."""
    if workers <= 1:
        return "accuracy part in one process: fine-tune and dense-epoch timings run one at a time"
    return (
        f"accuracy part in {workers} worker processes sharing the machine: fine-tune and "
        "dense-epoch timings carry each other's load (the cost table divides each fine-tune by a "
        "dense epoch timed in the same unit, so it stays comparable); deployment latency and "
        "scale run after the workers, in one process"
    )


def fmt_load(load: list[float]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


def finetune_budget(result: dict) -> str:
    s = result["settings"]
    if not s.get("finetune_steps"):
        return f"{s['finetune']} epochs"
    epochs = {r["data"]: r["finetune_epochs"] for r in result["accuracy"] if "finetune_epochs" in r}
    shown = ", ".join(f"{e} epochs of {spec}" for spec, e in epochs.items())
    return f"{s['finetune_steps']} steps ({shown})"


def render_cost(result: dict, columns: list[str]) -> list[str]:
    s = result["settings"]
    lines = ["", "### Cost of pruning", "",
             "Fine-tune wall time in dense training epochs (one dense epoch timed between the "
             f"rate blocks of the same run), mean over rates and seeds; {finetune_budget(result)} "
             "each. `mrmp` trains once for every rate.", "",
             "| data | dense epoch | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]  # fmt: skip
    for spec in s["datasets"]:
        epochs = [t["dense_epoch_seconds"] for t in result["timing"] if t["data"] == spec]
        if not epochs:
            continue
        unit = statistics.median(epochs)
        row = [spec, f"{unit:.2f} s"]
        for method in columns:
            secs = [r["finetune_seconds"] for r in result["accuracy"]
                    if r["data"] == spec and r["method"] == method and "finetune_seconds" in r]  # fmt: skip
            if method == "mrmp":
                secs = secs[:: len(s["rates"])]  # one training per seed
            row.append(f"{statistics.mean(secs) / unit:.1f}" if secs else "-")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def kb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1000:,.1f} kB"


def render_deploy(result: dict) -> list[str]:
    if not result["deploy"]:
        return []
    s = result["settings"]
    batches = s["latency_batches"]
    lines = ["", f"### Deployment: {s['datasets'][0]} seed {s['seeds'][0]}, rate "
             f"{s['deploy_rate']:g}", "",
             "gcnshrink: dense safetensors → compacted → sparse safetensors (gzip -9 of the "
             "compacted file); torch-prune: `torch.save(state_dict)` with masks → after "
             "`prune.remove` (gzip); Torch-Pruning: `torch.save(model)` (gzip). ONNX latency "
             "(onnxruntime, CPU, the models interleaved: each round runs every model at each "
             f"batch size, in a shuffled order; median of {s['latency_repeats']} rounds after a "
             "warm-up round); FLOPs of one sample / dense.", "",
             "| method | params | file bytes | gzip | ONNX | "
             + " | ".join(f"latency b{b}" for b in batches)
             + " | FLOPs / dense | " + " | ".join(f"speed-up b{b}" for b in batches) + " |",
             "|---|---|---|---|---|" + "---|" * (2 * len(batches) + 1)]  # fmt: skip
    for r in result["deploy"]:
        if "error" in r:
            lines.append(f"| {r['method']} | fails: {r['error']} |")
            continue
        if r["method"] == "torch-prune":
            files = f"{kb(r['bytes_state_dict_with_masks'])} → {kb(r['bytes_state_dict_removed'])}"
        elif r["method"] == "torch-pruning":
            files = kb(r["bytes_model"])
        elif r["method"] == "dense":
            files = kb(r["bytes_dense"])
        else:
            files = f"{kb(r['bytes_dense'])} → {kb(r['bytes_compact'])} → {kb(r['bytes_sparse'])}"
        lines.append(
            f"| {r['method']} | {r['params']:,} | {files} | {kb(r.get('bytes_gzip'))} | "
            f"{kb(r['bytes_onnx'])} | "
            + " | ".join(f"{r[f'latency_ms_b{b}']:.3f} ms" for b in batches)
            + f" | {r['flop_ratio']:.3f} | "
            + " | ".join(f"{r[f'speedup_b{b}']:.2f}×" for b in batches)
            + " |"
        )
    return lines


def render_scale(result: dict) -> list[str]:
    if not result["scale"]:
        return []
    c = result["settings"]["scale"]
    lines = ["", "### Scale: stgcn training throughput", "",
             f"`stgcn` base width {c['base_width']}, input (N, 3, {c['frames']}, 25, 2), batch "
             f"{c['batch_size']}, 60 classes; median of {c['steps']} steps after {c['warmup']} "
             "warm-up, one process, one thread; methods at rate 0.9 (mrmp 0.5 and 0.9).", "",
             "| method | samples/s | relative to dense |", "|---|---|---|"]  # fmt: skip
    dense = next((r for r in result["scale"] if r["method"] == "dense"), None)
    for r in result["scale"]:
        if "samples_per_s" in r:
            rel = f"{r['samples_per_s'] / dense['samples_per_s']:.2f}" if dense else "-"
            lines.append(f"| {r['method']} | {r['samples_per_s']:.1f} | {rel} |")
        else:
            lines.append(f"| {r['method']} | fails: {r.get('error')} | - |")
    return lines


# ---------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="one seed, two rates: ~7 min on 2 cores")
    mode.add_argument("--smoke", action="store_true", help="seconds; what the tests run")
    parser.add_argument("--parts", default="accuracy,deploy,scale")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (per process)")
    parser.add_argument(
        "--jobs", type=int, default=1,
        help="worker processes for the accuracy part's (dataset, seed) units (default 1: none)",
    )  # fmt: skip
    parser.add_argument("--out", default=None, help="output stem (writes .json and .md)")
    parser.add_argument(
        "--scale-steps", type=int, default=None,
        help="timed training steps per method in the scale part (default: the preset's)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    torch.set_num_threads(args.threads)
    preset = SMOKE if args.smoke else QUICK if args.quick else FULL
    s = Settings(**preset)
    if args.scale_steps:
        s.scale = {**s.scale, "steps": args.scale_steps}
    parts = args.parts.split(",")
    if "torch-pruning" in s.peers:
        try:
            import torch_pruning  # noqa: F401
        except ImportError:
            if not args.smoke:
                print("Torch-Pruning is not installed: pip install -e '.[bench]'", file=sys.stderr)
                sys.exit(2)
            s.peers = [p for p in s.peers if p != "torch-pruning"]  # the smoke runs without it
    stem = "run_smoke" if args.smoke else "run_quick" if args.quick else "run"
    out = Path(args.out) if args.out else RESULTS / stem
    out.parent.mkdir(parents=True, exist_ok=True)
    available = available_methods()
    methods = [m for m in s.methods if m.partition(":")[0] in available]
    started, load_before = time.time(), list(os.getloadavg())

    def log(text: str) -> None:
        print(f"[{time.time() - started:6.0f} s] {text}", flush=True)

    workers = min(args.jobs, len(s.datasets) * len(s.seeds))
    result: dict = {
        "command": "python benchmarks/run.py" + (" --quick" if args.quick else " --smoke" if args.smoke else "")
                   + (f" --jobs {args.jobs}" if args.jobs > 1 else "")
                   + (f" --parts {args.parts}" if args.parts != "accuracy,deploy,scale" else "")
                   + (f" --scale-steps {args.scale_steps}" if args.scale_steps else ""),
        "settings": {**asdict(s), "jobs": args.jobs, "timing_note": timing_note(workers)},
        "methods": methods,
        "missing_methods": [m for m in s.methods if m not in methods],
        "load_before": load_before,
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "accuracy": [], "torch_pruning_attempts": [], "timing": [], "deploy": [], "scale": [],
    }  # fmt: skip

    def save(complete: bool = False) -> None:  # after every part: a stopped run keeps its results
        result["machine"] = machine()
        result["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        result["complete"] = complete
        result["wall_seconds"] = time.time() - started
        own, children = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        result["cpu_seconds"] = sum(r.ru_utime + r.ru_stime for r in (own, children))
        out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        out.with_suffix(".md").write_text(render(result))

    # the run's own files: ONNX exports, the deployment models a worker hands back
    with tempfile.TemporaryDirectory(prefix="gcnshrink-run-") as tmp:
        deploy_models = {}
        if "accuracy" in parts or "deploy" in parts:
            run = {"jobs": args.jobs, "threads": args.threads, "started": started, "work": tmp}
            deploy_models = accuracy_part(s, methods, log, result, save, run)
        if "deploy" in parts:
            data = load_data(s.datasets[0], seed=s.seeds[0])
            result["deploy"] = deploy_part(s, deploy_models, data, Path(tmp), log)
            save()
    if "scale" in parts:
        result["scale"] = scale_part(
            s, [m for m in s.scale_methods if m == "dense" or m in available], log
        )
        if "torch-pruning" in s.peers and s.tp_stgcn:
            c = s.scale
            data = ntu_data(1, 2, c["frames"])
            torch.manual_seed(0)
            stgcn = create_model("stgcn", num_classes=60, layout=data.layout,
                                 base_width=c["base_width"]).eval()  # fmt: skip
            tried, _ = tp_attempts(stgcn, data.x_train[:2], s.tp_cpu_limit)
            result["torch_pruning_stgcn"] = [{"data": "random:ntu", "attempts": tried}]
            for t in tried:
                log(f"  torch-pruning stgcn [{t['config']}]: {t['outcome']}")
    save(complete=True)
    log(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
