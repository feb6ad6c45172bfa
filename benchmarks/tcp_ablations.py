"""The choices behind tcp's defaults, measured: fine-tune learning rate, final-mask rule, score.

On synthetic:hands (seed 0, the default gcn trained 150 epochs), rate 0.99, 20 fine-tune epochs:

- every method at Adam 1e-3 and 3e-3 (the default),
- ``tcp`` with the final mask re-ranking every latent weight by score (``final=scores``, the rule
  gcnshrink used first) instead of ranking the trained subnetwork first (``final=trained``),
- ``tcp`` with raw magnitudes instead of LAMP scores.

    python benchmarks/tcp_ablations.py

Writes benchmarks/results/tcp_ablations.json and .md. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from gcnshrink import api
from gcnshrink.data import load_data
from gcnshrink.pruning.tcp import ConsistentProjection, TopologicallyConsistentPruning
from gcnshrink.train import TrainConfig

RESULTS = Path(__file__).parent / "results"

# (label, method, options, final-mask rule)
VARIANTS = [
    ("mp", "mp", {}, None),
    ("mp:lamp", "mp", {"score": "lamp"}, None),
    ("tcp-posthoc", "tcp-posthoc", {}, None),
    ("tcp", "tcp", {}, "trained"),
    ("tcp, final=scores", "tcp", {}, "scores"),
    ("tcp:magnitude", "tcp", {"score": "magnitude"}, "trained"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=0.99)
    parser.add_argument("--lrs", default="0.001,0.003")
    parser.add_argument("--finetune", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=150, help="dense training epochs")
    parser.add_argument("--quick", action="store_true", help="smoke run: short training")
    parser.add_argument("--out", default=str(RESULTS / "tcp_ablations"))
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.finetune = 10, 2
    torch.set_num_threads(1)
    data = load_data("synthetic:hands", seed=0)
    config = TrainConfig(epochs=args.epochs, seed=0, progress=False)
    ckpt, dense = api.train(data, "gcn", config=config)
    print(f"dense test accuracy {dense['accuracy']:.3f}", flush=True)
    trained_rule = TopologicallyConsistentPruning.compute_masks
    rows = []
    for lr in [float(x) for x in args.lrs.split(",")]:
        for label, method, options, final in VARIANTS:
            # the earlier rule, restored for this measurement only: project the latent weights by
            # score, ignoring which subnetwork the fine-tune trained
            TopologicallyConsistentPruning.compute_masks = (
                ConsistentProjection.projected_masks if final == "scores" else trained_rule
            )
            outcome = api.prune(
                ckpt, data, method=method, rate=args.rate, epochs=args.finetune, lr=lr, seed=0,
                progress=False, allow_collapse=True, **options,
            )  # fmt: skip
            rows.append({"variant": label, "lr": lr, "accuracy": outcome.summary["accuracy"]})
            print(json.dumps(rows[-1]), flush=True)
    TopologicallyConsistentPruning.compute_masks = trained_rule
    out = Path(args.out)
    out.with_suffix(".json").write_text(
        json.dumps(
            {"args": vars(args), "dense_accuracy": dense["accuracy"], "rows": rows}, indent=1
        )
    )
    lrs = sorted({r["lr"] for r in rows})
    lines = [
        f"Command: `python benchmarks/tcp_ablations.py{' --quick' if args.quick else ''}`",
        "",
        f"synthetic:hands, seed 0, dense {args.epochs} epochs, rate {args.rate:g}, "
        f"{args.finetune} fine-tune epochs; dense "
        f"{dense['accuracy']:.1%}. Test accuracy.",
        "",
        "| variant | " + " | ".join(f"Adam {lr:g}" for lr in lrs) + " |",
        "|---|" + "---|" * len(lrs),
    ]
    for label, *_ in VARIANTS:
        cells = [
            f"{r['accuracy']:.1%}"
            for lr in lrs
            for r in rows
            if r["variant"] == label and r["lr"] == lr
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
