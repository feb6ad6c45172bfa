"""Every method at the extreme rates (0.995 to 0.999) on the default ``gcn``, with tcp's ablations.

For each dataset and seed: the default ``gcn`` trained once (``--epochs``, selection on validation;
kept in ``--cache`` so that every process and rerun uses the same dense model), then every method
fine-tuned at every rate with the same budget: ``--finetune`` epochs of Adam at ``--lr``, batch 64,
best epoch on validation, accuracy on test. ``mrmp`` is multi-rate: it is trained once for all the
rates (one fine-tune of the same length) and each rate is extracted from that one checkpoint.

Besides accuracy, each record holds what the issue asks to see at these rates: the kept weights
per tensor and the units left alive (accessible and co-accessible) per hidden space of the
delivered model, so a collapse can be traced to the layer that lost its last units.

A method is written ``name`` or ``name:key=value+key=value`` (options of that method; ``mp:lamp``
is short for ``mp:score=lamp``), so tcp's alternatives are measured with its own options; ``lr`` and
``finetune`` there override ``--lr`` and ``--finetune`` for that method (``tcp:lr=0.01``):

    python benchmarks/tcp_extreme.py --cache /work/i11_cache                     # the full study
    python benchmarks/tcp_extreme.py --datasets synthetic:hands --seeds 0 \\
        --methods tcp,tcp:schedule=0 --out /tmp/ablation                         # one ablation
    python benchmarks/tcp_extreme.py --quick                                    # smoke run

Writes ``--out``.json and .md (default benchmarks/results/tcp_extreme); resumes from
``--out``.partial.json after an interruption; ``--merge A.json B.partial.json ...`` renders the
records of several runs together. Nothing here is asserted: it is a measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import epochs_for_steps, fmt  # noqa: E402  (benchmarks/common.py)
from mrmp import dense_model  # noqa: E402  (shared: the cached dense model)

from gcnshrink import api  # noqa: E402
from gcnshrink.data import load_data  # noqa: E402
from gcnshrink.defaults import FINETUNE_LR  # noqa: E402
from gcnshrink.graph import masks_from_weights  # noqa: E402
from gcnshrink.graph.propagation import topology_summary  # noqa: E402
from gcnshrink.train import evaluate  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DEFAULT_METHODS = "tcp,mp:lamp,srmp,mrmp,ctf"


def parse_method(text: str) -> tuple[str, dict]:
    """``name[:key=value+key=value]`` -> (name, options); ``mp:lamp`` is ``mp:score=lamp``."""
    name, _, rest = text.partition(":")
    options: dict = {}
    for item in filter(None, rest.split("+")):
        key, eq, value = item.partition("=")
        if not eq:
            options["score"] = key
            continue
        key = key.replace("-", "_")
        if value in ("true", "false"):
            options[key] = value == "true"
            continue
        try:
            options[key] = float(value)
        except ValueError:
            options[key] = value
    return name, options


def structure(model) -> dict:
    """Kept weights per prunable tensor and live units per hidden space of a delivered model."""
    graph = model.unit_graph()
    summary = topology_summary(graph, masks_from_weights(graph, dict(model.named_parameters())))
    return {
        "kept": {k: v["kept"] for k, v in summary["tensors"].items()},
        "alive": {k: v["width"] - v["dead"] for k, v in summary["spaces"].items()},
        "inconsistent": summary["inconsistent_connections"],
    }


def record(spec, seed, method, rate, accuracy, model, dense, extra=None) -> dict:
    return {
        "data": spec,
        "seed": seed,
        "method": method,
        "rate": rate,
        "accuracy": accuracy,
        "dense_accuracy": dense,
        **structure(model),
        **(extra or {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="synthetic:hands,synthetic:sbu")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="name[:key=value+...], ...")
    parser.add_argument("--rates", default="0.995,0.998,0.999")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=150, help="dense training epochs")
    parser.add_argument("--finetune", type=int, default=20, help="fine-tune epochs, every method")
    parser.add_argument(
        "--finetune-steps",
        type=int,
        default=None,
        help="instead of --finetune: this many optimizer steps (batches of 64) on every dataset, "
        "as whole epochs (synthetic:hands has 12 batches an epoch, synthetic:sbu 4)",
    )
    parser.add_argument("--lr", type=float, default=FINETUNE_LR, help="fine-tune Adam rate")
    parser.add_argument("--cache", default=None, help="folder keeping the dense models")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="one seed, one rate, short training")
    parser.add_argument("--out", default=str(RESULTS / "tcp_extreme"))
    parser.add_argument("--merge", nargs="+", help="render these runs' records together")
    args = parser.parse_args()
    out = Path(args.out)
    if args.merge:
        return merge(args.merge, out)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.rates, args.epochs, args.finetune = "0", "0.998", 10, 2
        if args.out == str(RESULTS / "tcp_extreme"):
            out = RESULTS / "tcp_extreme_quick"
    rates = [float(r) for r in args.rates.split(",")]
    partial = out.with_suffix(".partial.json")
    records = json.loads(partial.read_text())["records"] if partial.exists() else []
    done = {(r["data"], r["seed"], r["method"], r["rate"]) for r in records}

    def keep(rec: dict) -> None:
        records.append(rec)
        done.add((rec["data"], rec["seed"], rec["method"], rec["rate"]))
        partial.write_text(json.dumps({"args": vars(args), "records": records}, indent=1))
        print(
            f"  {rec['method']:>24} @ {rec['rate']:g}: {rec['accuracy']:.3f} alive {rec['alive']}",
            flush=True,
        )

    for spec in args.datasets.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            data = load_data(spec, seed=seed)
            epochs = args.finetune
            if args.finetune_steps:  # the same number of steps on every dataset
                epochs = epochs_for_steps(args.finetune_steps, len(data.x_train))
            ckpt, dense = dense_model(spec, seed, args.epochs, data, args.cache)
            print(f"{spec} seed {seed}: dense {dense['accuracy']:.3f}", flush=True)
            if (spec, seed, "dense", 0.0) not in done:
                keep(record(spec, seed, "dense", 0.0, dense["accuracy"], ckpt.build_model(),
                            dense["accuracy"]))  # fmt: skip
            for label in args.methods.split(","):
                name, options = parse_method(label)
                # fine-tune settings may be set per method too (``tcp:lr=0.01+finetune=40``)
                lr = float(options.pop("lr", args.lr))
                finetune = int(options.pop("finetune", epochs))
                todo = [r for r in rates if (spec, seed, label, r) not in done]
                if not todo:
                    continue
                if name == "mrmp":  # one multi-rate fine-tune, every rate extracted from it
                    multi = api.prune(
                        ckpt, data, method=name, rates=rates, epochs=finetune, lr=lr,
                        seed=seed, progress=False, **options,
                    )  # fmt: skip
                    for rate in todo:
                        got = api.extract(multi.checkpoint, rate)
                        acc = evaluate(got.model, data.x_test, data.y_test, data.num_classes)
                        keep(record(spec, seed, label, rate, acc["accuracy"], got.model,
                                    dense["accuracy"]))  # fmt: skip
                    continue
                for rate in todo:
                    outcome = api.prune(
                        ckpt, data, method=name, rate=rate, epochs=finetune, lr=lr,
                        seed=seed, progress=False, allow_collapse=True, **options,
                    )  # fmt: skip
                    s = outcome.summary
                    keep(record(spec, seed, label, rate, s["accuracy"], outcome.model,
                                dense["accuracy"], {"realized_rate": s["realized_rate"],
                                "finetune_seconds": s["finetune_seconds"],
                                "finetune_epochs": finetune}))  # fmt: skip
    write(out, {"args": vars(args), "records": records})
    partial.unlink(missing_ok=True)


def merge(paths: list[str], out: Path) -> None:
    loaded = [json.loads(Path(p).read_text()) for p in paths]
    records, seen = [], set()
    for d in loaded:
        for r in d["records"]:
            key = (r["data"], r["seed"], r["method"], r["rate"])
            if key not in seen:
                seen.add(key)
                records.append(r)
    write(out, {"args": loaded[0]["args"], "merged": paths, "records": records})


def write(out: Path, result: dict) -> None:
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(render(result))
    print(out.with_suffix(".md").read_text())


def epochs_by_data(recs: list[dict]) -> str:
    got = {r["data"]: r["finetune_epochs"] for r in recs if "finetune_epochs" in r}
    return ", ".join(f"{spec} {epochs}" for spec, epochs in got.items())


CHANCE = {"synthetic:hands": 1 / 14, "synthetic:sbu": 1 / 8}


def render(result: dict) -> str:
    recs = result["records"]
    a = result["args"]
    methods = list(dict.fromkeys(r["method"] for r in recs if r["method"] != "dense"))
    rates = sorted({r["rate"] for r in recs if r["method"] != "dense"})
    command = (
        f"python benchmarks/tcp_extreme.py --datasets {a['datasets']} --seeds {a['seeds']} "
        f"--rates {a['rates']} --methods {a['methods']} --epochs {a['epochs']} "
        + (
            f"--finetune-steps {a['finetune_steps']} "
            if a.get("finetune_steps")
            else f"--finetune {a['finetune']} "
        )
        + f"--lr {a['lr']:g}"
    )
    if result.get("merged"):
        command = f"{command} (several runs, merged: --merge {' '.join(result['merged'])})"
    lines = [
        f"Command: `{command}`",
        "",
        f"Default `gcn`, dense training {a['epochs']} epochs; every method fine-tuned "
        + (
            f"{a['finetune_steps']} steps (whole epochs: {epochs_by_data(recs)})"
            if a.get("finetune_steps")
            else f"{a['finetune']} epochs"
        )
        + f" with Adam at {a['lr']:g} (unless its label sets `lr` or "
        "`finetune`), batch 64, best epoch on validation "
        "(mrmp: one multi-rate fine-tune of that length for all the rates). Test accuracy, "
        "mean ± std over the seeds (n = seeds); a cell marked `(k at chance)` has k seeds within "
        "2 pp of chance.",
    ]
    for spec in dict.fromkeys(r["data"] for r in recs):
        dense = [r["accuracy"] for r in recs if r["data"] == spec and r["method"] == "dense"]
        lines += ["", f"### {spec} (dense {fmt(dense)})", ""]
        lines += ["| rate | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        for rate in rates:
            row = [f"{rate:g}"]
            for method in methods:
                got = [
                    r["accuracy"]
                    for r in recs
                    if r["data"] == spec and r["method"] == method and r["rate"] == rate
                ]
                chance = sum(1 for x in got if x <= CHANCE.get(spec, 0) + 0.02)
                row.append(fmt(got) + (f" ({chance} at chance)" if chance else ""))
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", f"Live units per hidden space (mean over seeds), {spec}:", ""]
        spaces = next(r["alive"] for r in recs if r["data"] == spec)
        lines += ["| method | rate | " + " | ".join(spaces) + " |"]
        lines += ["|---|---|" + "---|" * len(spaces)]
        for method in ["dense", *methods]:
            for rate in [0.0] if method == "dense" else rates:
                got = [
                    r["alive"]
                    for r in recs
                    if r["data"] == spec and r["method"] == method and r["rate"] == rate
                ]
                if got:
                    cells = [f"{statistics.mean(g[s] for g in got):.0f}" for s in spaces]
                    lines.append(f"| {method} | {rate:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
