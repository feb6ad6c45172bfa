"""TCP vs magnitude pruning at very high rates, on the built-in datasets (the papers' claim).

For each dataset and seed: train the default ``gcn`` (model selection on validation), then prune it
with every method at every rate with the same fine-tune budget, and measure test accuracy, the
realized rate, and how many of the kept weights are inconsistent (lead nowhere or start nowhere).
Also times one fine-tune step of ``tcp`` against one of ``mp`` on the same model and batch.

    python benchmarks/tcp_vs_mp.py                      # the full grid (takes a while on 2 CPUs)
    python benchmarks/tcp_vs_mp.py --quick              # one seed, two rates: a smoke run

Writes benchmarks/results/tcp_vs_mp.json and .md. Nothing here is asserted: it is a measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from common import fmt  # benchmarks/common.py

from gcnshrink import api
from gcnshrink.data import load_data
from gcnshrink.defaults import FINETUNE_LR
from gcnshrink.graph import masks_from_weights
from gcnshrink.graph.propagation import topology_summary
from gcnshrink.pruning import PruneSpec, create_method
from gcnshrink.train import TrainConfig

RESULTS = Path(__file__).parent / "results"


def inconsistent_fraction(model) -> float:
    graph = model.unit_graph()
    masks = masks_from_weights(graph, dict(model.named_parameters()))
    summary = topology_summary(graph, masks)
    kept = sum(int(m.sum()) for m in masks.values())
    return summary["inconsistent_connections"] / max(kept, 1)


def step_times(ckpt, data, methods: list[str], rate: float, lr: float, steps: int = 60) -> dict:
    """Median seconds of one fine-tune step (forward, loss, backward, Adam) per method.

    The methods' steps alternate (mp, tcp, mp, tcp, ...) on the same batch, so both see the same
    machine load: on a shared 2-core machine, timing one method after the other gave ratios
    that moved by 0.3 between runs.
    """
    runs = []
    for method in methods:
        model = ckpt.build_model().train()
        pruner = create_method(method, PruneSpec((rate,), allow_collapse=True))
        pruner.attach(model, model.unit_graph())
        runs.append((method, model, pruner, torch.optim.Adam(model.parameters(), lr=lr), []))
    x, y = data.x_train[:64], data.y_train[:64]
    for i in range(steps + 5):
        for _, model, pruner, optimizer, times in runs:
            start = time.perf_counter()
            pruner.on_step(i / (steps + 4))  # tcp computes this step's masks here
            loss = torch.nn.functional.cross_entropy(model(x), y)
            extra = pruner.loss()
            if extra is not None:
                loss = loss + extra
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if i >= 5:  # warm-up steps are not counted
                times.append(time.perf_counter() - start)
    return {method: statistics.median(times) for method, *_, times in runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="synthetic:hands,synthetic:sbu")
    parser.add_argument(
        "--methods", default="mp,mp:lamp,tcp-posthoc,tcp", help="method[:score], e.g. mp:lamp"
    )
    parser.add_argument("--rates", default="0.9,0.95,0.98,0.99,0.995")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=150, help="dense training epochs")
    parser.add_argument(
        "--finetune", type=int, default=20, help="fine-tune epochs, the same for every method"
    )
    parser.add_argument(
        "--lr", type=float, default=FINETUNE_LR, help="fine-tune Adam learning rate, every method"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest for these models)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="one seed, rates 0.9 and 0.99, short training"
    )
    parser.add_argument("--out", default=str(RESULTS / "tcp_vs_mp"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.rates, args.epochs, args.finetune = "0", "0.9,0.99", 15, 5
    datasets = args.datasets.split(",")
    methods = args.methods.split(",")
    rates = [float(r) for r in args.rates.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records, timing = [], []
    partial = out.with_suffix(".partial.json")
    done = json.loads(partial.read_text()) if partial.exists() else {"records": [], "timing": []}
    records, timing = done["records"], done["timing"]
    finished = {(r["data"], r["seed"], r["method"], r["rate"]) for r in records}
    for spec in datasets:
        for seed in seeds:
            data = load_data(spec, seed=seed)
            ckpt, dense = api.train(
                data, "gcn", config=TrainConfig(epochs=args.epochs, seed=seed, progress=False)
            )
            records.append(
                {
                    "data": spec,
                    "seed": seed,
                    "method": "dense",
                    "rate": 0.0,
                    "accuracy": dense["accuracy"],
                    "val_accuracy": dense["val_accuracy"],
                }
            )
            print(f"{spec} seed {seed}: dense test accuracy {dense['accuracy']:.3f}", flush=True)
            if seed == seeds[0]:
                medians = step_times(ckpt, data, ["mp", "tcp"], 0.99, args.lr)
                mp_t, tcp_t = medians["mp"], medians["tcp"]
                timing.append(
                    {"data": spec, "mp_step_s": mp_t, "tcp_step_s": tcp_t, "ratio": tcp_t / mp_t}
                )
                print(
                    f"  step time mp {mp_t * 1e3:.1f} ms, tcp {tcp_t * 1e3:.1f} ms, ratio {tcp_t / mp_t:.2f}",
                    flush=True,
                )
            for rate in rates:
                for method in methods:
                    if (spec, seed, method, rate) in finished:
                        continue
                    name, _, score = method.partition(":")
                    options = {"score": score} if score else {}
                    outcome = api.prune(
                        ckpt,
                        data,
                        method=name,
                        rate=rate,
                        epochs=args.finetune,
                        lr=args.lr,
                        seed=seed,
                        progress=False,
                        allow_collapse=True,
                        **options,
                    )
                    s = outcome.summary
                    rec = {
                        "data": spec,
                        "seed": seed,
                        "method": method,
                        "rate": rate,
                        "realized_rate": s["realized_rate"],
                        "accuracy": s["accuracy"],
                        "dense_accuracy": s["dense_accuracy"],
                        "inconsistent_fraction": inconsistent_fraction(outcome.model),
                        "finetune_seconds": s["finetune_seconds"],
                    }
                    records.append(rec)
                    partial.write_text(json.dumps({"records": records, "timing": timing}, indent=1))
                    print(
                        f"  {method:>4} @ {rate}: acc {rec['accuracy']:.3f} inconsistent {rec['inconsistent_fraction']:.1%}",
                        flush=True,
                    )
    result = {"args": vars(args), "records": records, "timing": timing}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(render(result, datasets, methods, rates))
    partial.unlink(missing_ok=True)
    print(out.with_suffix(".md").read_text())


def render(result: dict, datasets, methods, rates) -> str:
    recs = result["records"]
    a = result["args"]
    command = f"python benchmarks/tcp_vs_mp.py --datasets {a['datasets']} --seeds {a['seeds']} --rates {a['rates']} --methods {a['methods']} --epochs {a['epochs']} --finetune {a['finetune']} --lr {a['lr']:g}"
    lines = [f"Command: `{command}`", ""]
    seeds = a["seeds"]
    spread = f"mean ± std over seeds {seeds}" if "," in seeds else f"seed {seeds}"
    lines.append(
        f"Dense training {result['args']['epochs']} epochs; every method fine-tuned {result['args']['finetune']} epochs with Adam at {result['args']['lr']:g}. Test accuracy, {spread}."
    )
    incons_header = ["mp kept weights inconsistent"] if "mp" in methods else []
    for spec in datasets:
        dense = [r["accuracy"] for r in recs if r["data"] == spec and r["method"] == "dense"]
        lines += [
            "",
            f"### {spec} (dense {fmt(dense)})",
            "",
            "| rate | " + " | ".join([*methods, *incons_header]) + " |",
            "|---|" + "---|" * (len(methods) + len(incons_header)),
        ]
        for rate in rates:
            row = [f"{rate:g}"]
            for method in methods:
                row.append(
                    fmt(
                        [
                            r["accuracy"]
                            for r in recs
                            if r["data"] == spec and r["method"] == method and r["rate"] == rate
                        ]
                    )
                )
            incons = [
                r["inconsistent_fraction"]
                for r in recs
                if r["data"] == spec and r["method"] == "mp" and r["rate"] == rate
            ]
            if incons_header:
                row.append(fmt(incons))
            lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Fine-tune step time (batch 64, rate 0.99, same run, mp and tcp steps interleaved, median of 60):",
        "",
        "| data | mp ms | tcp ms | tcp / mp |",
        "|---|---|---|---|",
    ]
    for t in result["timing"]:
        lines.append(
            f"| {t['data']} | {t['mp_step_s'] * 1e3:.1f} | {t['tcp_step_s'] * 1e3:.1f} | {t['ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
