"""Same command, same seed, same result: masks and accuracies of every method, recorded to compare
two versions of gcnshrink (run it before and after a refactor of the method contract).

    python benchmarks/contract_equivalence.py --out before.json     # on the old version
    python benchmarks/contract_equivalence.py --compare before.json # on the new one

For each dataset: the default ``gcn`` trained with the committed benchmark settings (seed 0), then
every method at each rate with the benchmark's fine-tune budget. A cell records the test accuracy,
the best epoch and a SHA-256 of the final keep-masks (in unit-graph order), so that "the same masks"
is checked bit for bit. ``--compare`` prints the cells that differ and exits 1 if any does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

from gcnshrink import api
from gcnshrink.data import load_data
from gcnshrink.train import TrainConfig

CELLS = [
    ("mp", {}),
    ("mp", {"score": "lamp"}),
    ("mp", {"schedule": "cubic"}),
    ("random", {}),
    ("structured", {}),
    ("tcp", {}),
    ("tcp-posthoc", {}),
]


def mask_digest(model) -> str:
    digest = hashlib.sha256()
    graph = model.unit_graph()
    named = dict(model.named_parameters())
    for binding in graph.prunable:
        mask = (named[binding.name].detach() != 0).to(torch.uint8).contiguous()
        digest.update(binding.name.encode())
        digest.update(mask.numpy().tobytes())
    return digest.hexdigest()


def run(args) -> dict:
    torch.set_num_threads(1)
    cells = {}
    for spec in args.datasets.split(","):
        data = load_data(spec, seed=0)
        config = TrainConfig(epochs=args.epochs, seed=0, progress=False)
        ckpt, dense = api.train(data, "gcn", config=config)
        cells[f"{spec} dense"] = {"accuracy": dense["accuracy"], "best_epoch": dense["best_epoch"]}
        print(spec, "dense", cells[f"{spec} dense"], flush=True)
        for rate in [float(r) for r in args.rates.split(",")]:
            for method, options in CELLS:
                label = method + "".join(f" {k}={v}" for k, v in options.items())
                outcome = api.prune(
                    ckpt, data, method=method, rate=rate, epochs=args.finetune, seed=0,
                    progress=False, allow_collapse=True, **options,
                )  # fmt: skip
                key = f"{spec} {label} @{rate:g}"
                cells[key] = {
                    "accuracy": outcome.summary["accuracy"],
                    "best_epoch": outcome.summary["best_epoch"],
                    "realized_rate": outcome.summary["realized_rate"],
                    "masks_sha256": mask_digest(outcome.model),
                }
                print(key, cells[key], flush=True)
    return {"args": vars(args), "cells": cells}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="synthetic:hands,synthetic:sbu")
    parser.add_argument("--rates", default="0.9,0.99")
    parser.add_argument("--epochs", type=int, default=150, help="dense training epochs")
    parser.add_argument("--finetune", type=int, default=20)
    parser.add_argument("--out", help="write the record here")
    parser.add_argument("--compare", help="a record made by an earlier version, same arguments")
    args = parser.parse_args()
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        for key in ("datasets", "rates", "epochs", "finetune"):
            setattr(args, key, before["args"][key])
    record = run(args)
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    if args.compare:
        differ = [key for key, cell in before["cells"].items() if record["cells"].get(key) != cell]
        for key in differ:
            print(f"DIFFERS {key}: before {before['cells'][key]} now {record['cells'].get(key)}")
        print(f"{len(before['cells']) - len(differ)} of {len(before['cells'])} cells identical")
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
