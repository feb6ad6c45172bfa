"""The choices behind srmp's and mrmp's defaults, measured (docs/methods.md, "SRMP and MRMP").

On synthetic:hands (seed 0, the default gcn trained 150 epochs), 20 fine-tune epochs at Adam 3e-3:

- references at 0.99: ``mp`` with LAMP scores and ``tcp``;
- ``srmp`` at rate 0.99 with each open choice changed alone from the defaults: the band-stop's
  half-width in training (the prior's a(r) or the empirical quantile), how the prior's scale is
  fitted, the prior family, the KL estimator and weight (0 = no alignment), the band-stop soft or
  straight-through, the split of the budget among tensors, ``--scope layer``;
- ``mrmp`` trained for 0.5, 0.9, 0.95, 0.99 with each way of choosing the networks a step trains
  (distillation, rate sampling), evaluated at its trained rates, between them (0.97, 0.985) and
  beyond them (0.995).

For every run: test accuracy of the delivered model at each rate, the KL at the start and the end
of the fine-tune, the kept weights per tensor, and how far the prior's quantile map is from the
rate on the trained weights (the fraction the prior's band-stop a(r) removes at the end, minus r).

    python benchmarks/mrmp_ablations.py                     # about an hour on 2 shared CPUs
    python benchmarks/mrmp_ablations.py --dense dense.pt    # start from a trained checkpoint
    python benchmarks/mrmp_ablations.py --quick             # smoke run

Writes benchmarks/results/mrmp_ablations.json and .md. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gcnshrink import api
from gcnshrink.data import load_data
from gcnshrink.pruning import PruneSpec, create_method, delivering
from gcnshrink.train import TrainConfig, evaluate, fit

RESULTS = Path(__file__).parent / "results"

SRMP_VARIANTS = [
    ("defaults (laplace, lamp, empirical, quantile fit, histogram, λ=1, ste)", {}),
    ("threshold=prior", {"threshold": "prior"}),
    ("threshold=prior, fit=likelihood", {"threshold": "prior", "fit": "likelihood"}),
    ("prior=gaussian", {"prior": "gaussian"}),
    ("kl=moments", {"kl": "moments"}),
    ("kl-weight=0 (no prior alignment)", {"kl_weight": 0.0}),
    ("kl-weight=10", {"kl_weight": 10.0}),
    ("mask=soft", {"mask": "soft"}),
    ("allocation=pooled", {"allocation": "pooled"}),
    ("scope=layer", {"scope": "layer"}),
]
MRMP_VARIANTS = [
    # between=all: the default when these were measured (benchmarks/mrmp_gap.py chose top since)
    ("distill=sandwich (default)", {"between": "all"}),
    ("distill=sandwich, kl-weight=0", {"kl_weight": 0.0, "between": "all"}),
    ("distill=sandwich, threshold=prior", {"threshold": "prior", "between": "all"}),
    ("distill=highest, sampling=cycle", {"distill": "highest"}),
    ("distill=none, sampling=cycle", {"distill": "none"}),
    ("distill=none, sampling=weighted", {"distill": "none", "sampling": "weighted"}),
    ("distill=none, sampling=interval", {"distill": "none", "sampling": "interval"}),
]


def run_method(ckpt, data, method, rates, options, eval_rates, args, seed=0) -> dict:
    """Fine-tune ``method`` for ``rates`` and measure the delivered model at ``eval_rates`` (the
    in-memory method's masks: what ``api.extract`` gives, see tests/test_mrmp.py)."""
    options = dict(options)
    scope = options.pop("scope", "global")
    model = ckpt.build_model().train()
    torch.manual_seed(seed)
    pruner = create_method(method, PruneSpec(tuple(rates), scope), options, seed=seed)
    pruner.attach(model, model.unit_graph())
    with torch.no_grad():
        kl_start = float(pruner.kl())
    config = TrainConfig(epochs=args.finetune, lr=args.lr, seed=seed, progress=False)
    started = time.perf_counter()
    result = fit(model, data, config, pruner)
    seconds = time.perf_counter() - started
    model = result.model
    with torch.no_grad():
        kl_end = float(pruner.kl())
    accuracy, val_accuracy, quantile_error, kept = {}, {}, {}, {}
    for rate in eval_rates:
        masks = pruner.masks_at(rate)
        with delivering(model, masks):
            metrics = evaluate(model, data.x_test, data.y_test, data.num_classes)
            val = evaluate(model, data.x_val, data.y_val, data.num_classes)
        accuracy[f"{rate:g}"] = metrics["accuracy"]
        val_accuracy[f"{rate:g}"] = val["accuracy"]
        kept[f"{rate:g}"] = {name: int(m.sum()) for name, m in masks.items()}
        quantile_error[f"{rate:g}"] = pruner.prior_fraction_removed(rate) - rate
    return {
        "accuracy": accuracy,
        "val_accuracy": val_accuracy,
        "kl_start": kl_start,
        "kl_end": kl_end,
        "quantile_error": quantile_error,
        "kept": kept,
        "seconds": seconds,
        "best_epoch": result.best_epoch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic:hands")
    parser.add_argument("--rate", type=float, default=0.99, help="srmp's rate")
    parser.add_argument("--rates", default="0.5,0.9,0.95,0.99", help="mrmp's trained rates")
    parser.add_argument("--eval-rates", default="0.5,0.9,0.95,0.97,0.985,0.99,0.995")
    parser.add_argument("--epochs", type=int, default=150, help="dense training epochs")
    parser.add_argument("--finetune", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--only", default="srmp,mrmp,reference", help="which groups to run")
    parser.add_argument("--dense", help="a dense checkpoint to start from (skips training)")
    parser.add_argument("--quick", action="store_true", help="smoke run: short training")
    parser.add_argument("--out", default=str(RESULTS / "mrmp_ablations"))
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.finetune = 10, 2
    torch.set_num_threads(1)
    data = load_data(args.data, seed=0)
    if args.dense:
        ckpt = api.as_checkpoint(args.dense)
        dense_accuracy = evaluate(ckpt.build_model(), data.x_test, data.y_test, data.num_classes)[
            "accuracy"
        ]
    else:
        config = TrainConfig(epochs=args.epochs, seed=0, progress=False)
        ckpt, dense = api.train(data, "gcn", config=config)
        dense_accuracy = dense["accuracy"]
    print(f"dense test accuracy {dense_accuracy:.3f}", flush=True)
    groups = args.only.split(",")
    trained = [float(r) for r in args.rates.split(",")]
    eval_rates = [float(r) for r in args.eval_rates.split(",")]
    rows = []
    if "reference" in groups:
        for label, method, options in [("mp:lamp", "mp", {"score": "lamp"}), ("tcp", "tcp", {})]:
            outcome = api.prune(
                ckpt, data, method=method, rate=args.rate, epochs=args.finetune, lr=args.lr,
                seed=0, progress=False, allow_collapse=True, **options,
            )  # fmt: skip
            rows.append(
                {
                    "group": "reference",
                    "variant": label,
                    "accuracy": {f"{args.rate:g}": outcome.summary["accuracy"]},
                    "seconds": outcome.summary["finetune_seconds"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    if "srmp" in groups:
        for label, options in SRMP_VARIANTS:
            row = run_method(ckpt, data, "srmp", [args.rate], options, [args.rate], args)
            rows.append({"group": "srmp", "variant": label, **row})
            print(json.dumps(rows[-1]), flush=True)
    if "mrmp" in groups:
        for label, options in MRMP_VARIANTS:
            row = run_method(ckpt, data, "mrmp", trained, options, eval_rates, args)
            rows.append({"group": "mrmp", "variant": label, **row})
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"args": vars(args), "dense_accuracy": dense_accuracy, "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(render(result, eval_rates))
    print(out.with_suffix(".md").read_text())


def render(result: dict, eval_rates: list[float]) -> str:
    a = result["args"]
    command = "python benchmarks/mrmp_ablations.py" + (" --quick" if a["quick"] else "")
    if a["dense"]:
        command += " --dense dense.pt"
    made = (
        " (dense.pt: the default gcn trained 150 epochs with seed 0 by `api.train`, the recipe "
        "the script uses without --dense)"
        if a["dense"]
        else ""
    )
    lines = [
        f"Command: `{command}`{made}",
        "",
        f"{a['data']}, seed 0, dense {a['epochs']} epochs ({result['dense_accuracy']:.1%}), "
        f"{a['finetune']} fine-tune epochs, Adam {a['lr']:g}. Test accuracy of the delivered "
        "model. *a(r) error*: the fraction the prior's band-stop a(r) removes from the trained "
        "latent weights, minus r (0: the prior's quantile map is exact).",
        "",
    ]
    srmp = [r for r in result["rows"] if r["group"] in ("reference", "srmp")]
    if srmp:
        lines += [
            f"**srmp at {a['rate']:g}**",
            "",
            "| variant | accuracy | KL start → end | a(r) error | fine-tune s |",
            "|---|---|---|---|---|",
        ]
        for r in srmp:
            acc = next(iter(r["accuracy"].values()))
            kl = f"{r['kl_start']:.3f} → {r['kl_end']:.3f}" if "kl_start" in r else "–"
            err = next(iter(r["quantile_error"].values())) if "quantile_error" in r else None
            err_text = "–" if err is None else f"{err:+.4f}"
            lines.append(f"| {r['variant']} | {acc:.1%} | {kl} | {err_text} | {r['seconds']:.0f} |")
        lines.append("")
    mrmp = [r for r in result["rows"] if r["group"] == "mrmp"]
    if mrmp:
        shown = [f"{x:g}" for x in eval_rates]
        lines += [
            f"**mrmp trained for {a['rates']}**, accuracy at each rate (a(r) error at 0.99):",
            "",
            "| variant | " + " | ".join(shown) + " | mean | KL start → end | a(0.99) error |",
            "|---|" + "---|" * (len(shown) + 3),
        ]
        for r in mrmp:
            accs = [r["accuracy"][x] for x in shown]
            err = r["quantile_error"].get("0.99")
            lines.append(
                f"| {r['variant']} | "
                + " | ".join(f"{v:.1%}" for v in accs)
                + f" | {sum(accs) / len(accs):.1%} | {r['kl_start']:.3f} → {r['kl_end']:.3f} | "
                + ("–" if err is None else f"{err:+.4f}")
                + " |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
