"""Why ctf recomputes batch-norm statistics: one ctf fine-tune traced epoch by epoch.

Prunes a dense checkpoint with ``ctf`` with ``--no-batchnorm-recalibration`` (the behaviour before
the option existed) and, at every epoch, scores the delivered network on the validation split
twice: with the running statistics the fine-tune left (what the training loop then used to choose
the epoch) and with statistics recomputed for that network from the training split
(``gcnshrink.train.recalibrate_batchnorm``, what the default does). The recomputed copy is
scored and discarded, so the fine-tune itself is the unmodified one. Reports both columns, the
epoch chosen and the test accuracy of the result.

    python benchmarks/ctf_batchnorm.py --dense W/stgcn-s0-dense.pt --data synthetic:sbu --seed 0

(W: a ``benchmarks/ctf.py --work`` folder.) Nothing is asserted: it is a measurement.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from common import machine  # benchmarks/common.py

import gcnshrink.train as training
from gcnshrink import api
from gcnshrink.checkpoint import load_checkpoint
from gcnshrink.data import load_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense", required=True, help="dense checkpoint (a BatchNorm model)")
    parser.add_argument("--data", default="synthetic:sbu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/ctf_batchnorm")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(args.data, seed=args.seed)
    epochs: list[dict] = []
    plain = training.evaluate

    def traced(model, x, y, num_classes):
        result = plain(model, x, y, num_classes)
        if x is data.x_val:  # the selection's scoring, under the delivered masks
            recomputed = copy.deepcopy(model)
            with torch.random.fork_rng(devices=[]):  # its dropout draws leave the run's alone
                training.recalibrate_batchnorm(recomputed, data.x_train)
            again = plain(recomputed, x, y, num_classes)["accuracy"]
            epochs.append({"running": result["accuracy"], "recomputed": again})
            print(f"epoch {len(epochs)}: {result['accuracy']:.1%} / {again:.1%}", flush=True)
        return result

    training.evaluate = traced  # the selection calls it through the module
    outcome = api.prune(
        load_checkpoint(args.dense),
        data,
        method="ctf",
        rate=args.rate,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        progress=False,
        allow_collapse=True,
        batchnorm_recalibration=False,
    )
    result = {
        "args": vars(args),
        "machine": machine(),
        "epochs": epochs,
        "best_epoch": outcome.checkpoint.pruning["best_epoch"],
        "test_accuracy": outcome.summary["accuracy"],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [
        f"Command: `python benchmarks/ctf_batchnorm.py --dense {args.dense} --data {args.data} "
        f"--seed {args.seed} --rate {args.rate} --epochs {args.epochs} --lr {args.lr}`",
        "",
        f"ctf at {args.rate} with `--no-batchnorm-recalibration`: validation accuracy of the "
        "delivered network at each epoch with the running statistics / with statistics "
        f"recomputed from the training split. Epoch kept: {result['best_epoch']}; test accuracy "
        f"{result['test_accuracy']:.1%}.",
        "",
        "| epoch | running statistics | recomputed |",
        "|---|---|---|",
        *(
            f"| {i} | {e['running']:.1%} | {e['recomputed']:.1%} |"
            for i, e in enumerate(epochs, start=1)
        ),
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
