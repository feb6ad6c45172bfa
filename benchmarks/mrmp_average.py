"""Weight averaging for mrmp, measured: which epoch (or average of epochs) to keep.

mrmp's networks between its trained rates are trained only by the random distillation students,
and their accuracy swings from one epoch to the next (hands seed 0: 0.97 between 74 and 84 % on
test over the last four epochs while the trained rates hold). This script runs mrmp once per seed
with ``--average 1`` (no averaging) and records, after every epoch, validation and test accuracy
at a grid of rates; at the end it also evaluates the averages of the last N epochs' weights
(N in ``--windows``). Each selection rule (the epoch with the best mean validation accuracy over
mrmp's selection grid, and that plus the average of the last N) then picks from the same run,
and the table gives each rule's test accuracy at the benchmark's rates, against per-rate ``srmp``
on the same dense models (the records of a ``benchmarks/mrmp.py --methods srmp`` run).

The rule "best single epoch or the average of the last N, whichever scores higher" is what
``--average N`` does inside the training loop (``ValidationSelection``): ``benchmarks/mrmp.py``
with that default reproduces this table's row for it.

    python benchmarks/mrmp_average.py --data synthetic:hands --finetune 20 --cache DIR \\
        --srmp results/mrmp_runs/perrate_hands_srmp_2026-12-02.json
    python benchmarks/mrmp_average.py --data synthetic:sbu --finetune 60 --cache DIR --srmp S.json

Writes --out .json (the traces) and .md; resumes per seed from the .json. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from mrmp import dense_model  # noqa: E402  (benchmarks/mrmp.py)

from gcnshrink import api  # noqa: E402
from gcnshrink.data import load_data  # noqa: E402
from gcnshrink.pruning import PruneSpec, create_method, delivering  # noqa: E402
from gcnshrink.train import ValidationSelection, average_states, evaluate  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TRAINED = (0.5, 0.9, 0.95, 0.99)
REPORTED = (0.5, 0.9, 0.95, 0.97, 0.985, 0.99, 0.995)
# mrmp's selection grid for TRAINED with its defaults: the trained rates, the log-midpoint in kept
# fraction between neighbours (0.776, 0.929, 0.978) and the reach end (0.995)
SELECTION = create_method("mrmp", PruneSpec(TRAINED)).selection_rates()
# the reported rates, the selection grid and a few more between the trained rates
GRID = tuple(sorted({*REPORTED, *SELECTION, 0.6, 0.7, 0.85, 0.92, 0.94, 0.96, 0.9925}))


def accuracies(model, method, data) -> dict:
    """Validation and test accuracy of the network delivered at every rate of GRID."""
    row = {"val": {}, "test": {}}
    for rate in GRID:
        with delivering(model, method.masks_at(rate)):
            for split in ("val", "test"):
                x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
                row[split][f"{rate:g}"] = evaluate(model, x, y, data.num_classes)["accuracy"]
    return row


@contextlib.contextmanager
def traced(data, windows: list[int], trace: list, averaged: dict):
    """Within the block, every fine-tune's selection also records ``accuracies`` after each epoch
    and, at the end, for the average of the last N epochs' weights (N in ``windows``)."""
    epoch_end, fit_end = ValidationSelection.on_epoch_end, ValidationSelection.on_fit_end
    states: list[dict] = []

    def on_epoch_end(self, loop, record):
        if self.method is not None and self.method.ready():
            trace.append({"epoch": loop.epoch, **accuracies(loop.model, self.method, data)})
            states.append({k: v.detach().clone() for k, v in loop.model.state_dict().items()})
        epoch_end(self, loop, record)

    def on_fit_end(self, loop):
        if self.method is not None:
            last = {k: v.detach().clone() for k, v in loop.model.state_dict().items()}
            for n in windows:
                if len(states) >= n:
                    loop.model.load_state_dict(average_states(states[-n:]))
                    averaged[str(n)] = accuracies(loop.model, self.method, data)
            loop.model.load_state_dict(last)
        fit_end(self, loop)

    ValidationSelection.on_epoch_end, ValidationSelection.on_fit_end = on_epoch_end, on_fit_end
    try:
        yield
    finally:
        ValidationSelection.on_epoch_end, ValidationSelection.on_fit_end = epoch_end, fit_end


def selection_score(row: dict) -> float:
    """mrmp's selection score for TRAINED: the mean validation accuracy over its grid."""
    return statistics.mean(row["val"][f"{r:g}"] for r in SELECTION)


def pick(run: dict, window: int | None) -> tuple[str, dict]:
    """The rule's choice: the best single epoch (ties to the later), or the average of the last
    ``window`` epochs when it scores strictly higher (what ``--average N`` does)."""
    best = max(run["trace"], key=lambda r: (selection_score(r), r["epoch"]))
    choice = (f"epoch {best['epoch']}", best)
    if window is not None and str(window) in run["averaged"]:
        average = run["averaged"][str(window)]
        if selection_score(average) > selection_score(best):
            choice = (f"last {window}", average)
    return choice


def render(result: dict) -> str:
    a, runs = result["args"], result["runs"]
    srmp = result.get("srmp", {})
    shown = [f"{r:g}" for r in REPORTED]
    lines = [
        f"Command: `python benchmarks/mrmp_average.py --data {a['data']} --seeds {a['seeds']} "
        f"--epochs {a['epochs']} --finetune {a['finetune']} --lr {a['lr']:g} --windows "
        f"{a['windows']} --cache DIR" + (" --srmp S.json" if srmp else "") + "`",
        "",
        f"{a['data']}; mrmp trained for {', '.join(f'{r:g}' for r in TRAINED)} with --average 1, "
        f"{a['finetune']} fine-tune epochs; dense "
        + ", ".join(f"{runs[s]['dense']:.1%}" for s in sorted(runs))
        + f" (seeds {', '.join(sorted(runs))}). Each rule picks from the same runs on validation"
        " (mean over mrmp's selection grid); cells: test accuracy, mean over seeds"
        + (", and Δ against per-rate srmp of the same seeds (srmp's own runs)" if srmp else "")
        + ".",
        "",
        "| rule | picks | " + " | ".join(shown) + " | mean | worst Δ |",
        "|---|---|" + "---|" * (len(shown) + 2),
    ]
    windows = [None, *[int(w) for w in a["windows"].split(",")]]
    for window in windows:
        picks, cells = [], {r: [] for r in shown}
        for seed in sorted(runs):
            label, row = pick(runs[seed], window)
            picks.append(label)
            for r in shown:
                cells[r].append(row["test"][r] - (srmp[seed][r] if srmp else 0.0))
        means = {r: statistics.mean(v) * 100 for r, v in cells.items()}
        fmt = "{:+.1f}" if srmp else "{:.1f}%"
        name = (
            "best epoch" if window is None else f"best epoch or last {window} (--average {window})"
        )
        worst = f"{min(means.values()):+.1f}" if srmp else "–"
        lines.append(
            f"| {name} | {', '.join(picks)} | "
            + " | ".join(fmt.format(means[r]) for r in shown)
            + f" | {fmt.format(statistics.mean(means.values()))} | {worst} |"
        )
    if srmp:
        lines += [
            "",
            "Per-rate srmp (test accuracy, mean over the same seeds): "
            + ", ".join(
                f"{r} {statistics.mean(srmp[s][r] for s in sorted(runs)):.1%}" for r in shown
            )
            + ".",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic:hands")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=150, help="dense training epochs")
    parser.add_argument("--finetune", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--windows", default="2,3,5,8", help="averages of the last N epochs")
    parser.add_argument("--srmp", default=None, help="records of a benchmarks/mrmp.py srmp run")
    parser.add_argument("--cache", default=None, help="folder that keeps the dense models")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--render", action="store_true", help="only rewrite --out.md")
    parser.add_argument("--out", default=str(RESULTS / "mrmp_average"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    result = (
        json.loads(out.with_suffix(".json").read_text())
        if out.with_suffix(".json").exists()
        else {"runs": {}}
    )
    result["args"] = vars(args)
    if args.srmp:
        records = json.loads(Path(args.srmp).read_text())["records"]
        result["srmp"] = {
            str(s): {
                f"{r['rate']:g}": r["accuracy"]
                for r in records
                if r["method"] == "srmp" and r["seed"] == s and r["data"] == args.data
            }
            for s in [int(s) for s in args.seeds.split(",")]
        }
    for seed in [] if args.render else [int(s) for s in args.seeds.split(",")]:
        if str(seed) in result["runs"]:
            continue
        data = load_data(args.data, seed=seed)
        ckpt, dense = dense_model(args.data, seed, args.epochs, data, args.cache)
        trace, averaged = [], {}
        windows = [int(w) for w in args.windows.split(",")]
        with traced(data, windows, trace, averaged):
            api.prune(
                ckpt, data, method="mrmp", rates=list(TRAINED), epochs=args.finetune, lr=args.lr,
                seed=seed, progress=False, average=1,
            )  # fmt: skip
        result["runs"][str(seed)] = {
            "dense": dense["accuracy"],
            "trace": trace,
            "averaged": averaged,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        print(f"{args.data} seed {seed} done", flush=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(render(result))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
