"""MRMP's point, measured: one training that serves every rate, against per-rate methods.

For each dataset and seed: train the default ``gcn`` (selection on validation), then

- ``mrmp`` once, for the trained rates (default 0.5, 0.9, 0.95, 0.99), and extract from that one
  multi-rate checkpoint the trained rates, rates between them (0.97, 0.985) and beyond them
  (0.995), without data or training (``api.extract``);
- every per-rate method (default ``srmp``, ``mp``, ``tcp``) fine-tuned separately at each of those
  rates.

Every fine-tune (mrmp's one, and each per-rate one) gets the same number of epochs (``--finetune``;
``--mrmp-finetune`` gives mrmp's its own) at the same learning rate, so mrmp's total training time
is one run against the per-rate methods' sum over rates. Test accuracy per rate, MRMP's gap to per-rate SRMP, the realized rates, total
fine-tune time per method, and the time of one extraction of the default ``gcn`` in-process.

    python benchmarks/mrmp.py                    # hands and sbu, 3 seeds (hours on 2 CPUs)
    python benchmarks/mrmp.py --datasets synthetic:hands --seeds 0     # one seed
    python benchmarks/mrmp.py --quick            # smoke run: one seed, short training

Affordable on a shared machine: ``--cache DIR`` keeps each dense model (per dataset, seed and
epochs) so that separate processes and reruns train it once; ``--methods`` chooses what a process
runs (``mrmp`` included or not), so the per-rate methods and mrmp can run in separate processes,
each with its own ``--out``, and ``--merge A.json B.partial.json ...`` renders their records
together into ``--out``. ``--mrmp-options key=value,...`` sets mrmp's options (recorded).

Writes benchmarks/results/mrmp.json and .md (``--out``); resumes from mrmp.partial.json after an
interruption. Nothing here is asserted: it is a measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from gcnshrink import api
from gcnshrink.checkpoint import load_checkpoint, save_checkpoint
from gcnshrink.data import load_data
from gcnshrink.defaults import FINETUNE_LR
from gcnshrink.train import TrainConfig
from gcnshrink.train import evaluate as test_metrics

sys.path.insert(0, str(Path(__file__).parent))
from common import epochs_for_steps  # noqa: E402  (benchmarks/common.py)

RESULTS = Path(__file__).parent / "results"


def parse_rates(text: str) -> list[float]:
    return [float(r) for r in text.split(",") if r]


def extraction_seconds(ckpt, rate: float, repeats: int = 5) -> tuple[float, float]:
    """Median wall and CPU (process) time of ``api.extract`` at ``rate``, in-process (the
    checkpoint in memory). On a loaded machine the CPU time is the one to read."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        api.extract(ckpt, rate)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def parse_options(text: str) -> dict:
    """``key=value,...`` -> a dict (true/false as booleans, whole numbers as ints, other numbers
    as floats, the rest as strings)."""
    options = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if value.lower() in ("true", "false"):
            options[key.replace("-", "_")] = value.lower() == "true"
            continue
        if value.isdigit():
            options[key.replace("-", "_")] = int(value)
            continue
        try:
            options[key.replace("-", "_")] = float(value)
        except ValueError:
            options[key.replace("-", "_")] = value
    return options


def dense_model(spec: str, seed: int, epochs: int, data, cache: str | None):
    """The default gcn trained ``epochs`` epochs with ``seed`` (selection on validation), and its
    summary; kept in ``cache`` when given, so every process and rerun uses the same model."""
    if cache:
        stem = Path(cache) / f"{spec.replace(':', '_')}-seed{seed}-e{epochs}"
        if stem.with_suffix(".json").exists():
            return load_checkpoint(stem.with_suffix(".pt")), json.loads(
                stem.with_suffix(".json").read_text()
            )
    config = TrainConfig(epochs=epochs, seed=seed, progress=False)
    ckpt, dense = api.train(data, "gcn", config=config)
    if cache:
        stem.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(ckpt, stem.with_suffix(".pt"), force=True)
        stem.with_suffix(".json").write_text(json.dumps(dense))  # last: marks the pair complete
    return ckpt, dense


def merge(paths: list[str], out: Path, note: str = "") -> None:
    """Render the records of several runs (``.json`` or ``.partial.json``) as one result; the
    first file's arguments head it, the methods are those the records hold."""
    loaded = [json.loads(Path(p).read_text()) for p in paths]
    args = dict(next(d["args"] for d in loaded if "args" in d))
    # runs compare only on the same dense models: one trained on another machine (another CPU's
    # kernels) differs in its last bits and its fine-tunes are not paired with these
    dense: dict[tuple, set] = {}
    for d in loaded:
        for r in d["records"]:
            if r["method"] == "dense":
                dense.setdefault((r["data"], r["seed"]), set()).add(r["accuracy"])
    for (data, seed), accuracies in dense.items():
        if len(accuracies) > 1:
            raise SystemExit(
                f"{data} seed {seed}: the runs start from different dense models (test accuracy "
                f"{', '.join(f'{a:.4f}' for a in sorted(accuracies))}); rerun them on one machine"
            )
    records, seen = [], set()
    for d in loaded:
        run = d.get("args", {})
        for r in d["records"]:
            if run:  # runs older than the field: their arguments
                mrmp = r["method"] == "mrmp" and run.get("mrmp_finetune")
                r.setdefault("finetune_epochs", mrmp or run["finetune"])
            key = (r["data"], r["seed"], r["method"], r["rate"])
            if key not in seen:
                seen.add(key)
                records.append(r)
    found = {r["method"] for r in records} - {"dense", "mrmp", "extract-timing"}
    order = ["srmp", "mp", "tcp"]
    args.pop("methods_run", None)
    args["methods"] = ",".join(
        sorted(found, key=lambda m: (order.index(m) if m in order else 9, m))
    )
    args["seeds"] = ",".join(str(s) for s in sorted({r["seed"] for r in records}))
    args["datasets"] = ",".join(dict.fromkeys(r["data"] for r in records))
    args["merged"] = [str(p) for p in paths]
    args["sources"] = list(dict.fromkeys(command(d["args"]) for d in loaded if "args" in d))
    args["note"] = note
    result = {"args": args, "records": records}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(render(result))
    print(out.with_suffix(".md").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="synthetic:hands,synthetic:sbu")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rates", default="0.5,0.9,0.95,0.99", help="mrmp's trained rates")
    parser.add_argument("--between", default="0.97,0.985", help="untrained rates between them")
    parser.add_argument("--beyond", default="0.995", help="untrained rates beyond them")
    parser.add_argument(
        "--methods",
        default="mrmp,srmp,mp,tcp",
        help="mrmp (trained once) and per-rate methods, method[:score] (mp:lamp) or "
        "method:key=value;key=value (srmp:average=5)",
    )
    parser.add_argument("--mrmp-options", default="", help="mrmp options, key=value,...")
    parser.add_argument(
        "--mrmp-finetune", type=int, default=None, help="mrmp's fine-tune epochs (--finetune)"
    )
    parser.add_argument("--cache", default=None, help="folder that keeps the dense models")
    parser.add_argument("--merge", nargs="+", default=None, help="render these runs together")
    parser.add_argument("--note", default="", help="a paragraph added to a merged .md")
    parser.add_argument("--epochs", type=int, default=150, help="dense training epochs")
    parser.add_argument(
        "--finetune", type=int, default=20, help="fine-tune epochs of every run, mrmp's included"
    )
    parser.add_argument(
        "--finetune-steps",
        type=int,
        default=None,
        help="instead of --finetune: each dataset's epochs give at least this many optimizer "
        "steps (batch 64), so datasets of different sizes get the same budget",
    )
    parser.add_argument("--lr", type=float, default=FINETUNE_LR)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke run: one seed, short runs")
    parser.add_argument("--out", default=str(RESULTS / "mrmp"))
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, Path(args.out), args.note)
        return
    if args.quick:
        args.datasets, args.seeds, args.epochs, args.finetune = "synthetic:hands", "0", 10, 2
        args.rates, args.between, args.beyond = "0.5,0.9,0.99", "0.97", "0.995"
        if args.out == str(RESULTS / "mrmp"):
            args.out = str(RESULTS / "mrmp_quick")
    torch.set_num_threads(args.threads)
    trained = parse_rates(args.rates)
    between, beyond = parse_rates(args.between), parse_rates(args.beyond)
    eval_rates = sorted({*trained, *between, *beyond})
    methods = [m for m in args.methods.split(",") if m != "mrmp"]
    if any(m.partition(":")[0] == "mrmp" for m in methods):
        # a per-rate method named mrmp would train a single-rate mrmp at each rate, not one run
        parser.error("mrmp's own options go in --mrmp-options key=value,... (not mrmp:...)")
    mrmp_options = parse_options(args.mrmp_options)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.json")
    done = json.loads(partial.read_text()) if partial.exists() else {"records": []}
    records = done["records"]

    def finished(spec, seed, method, rate=None) -> bool:
        return any(
            (r["data"], r["seed"], r["method"]) == (spec, seed, method)
            and (rate is None or r["rate"] == rate)
            for r in records
        )

    def save(record: dict) -> None:
        records.append(record)
        partial.write_text(json.dumps({"records": records}, indent=1))

    for spec in args.datasets.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            data = load_data(spec, seed=seed)
            finetune = args.finetune
            if args.finetune_steps:
                finetune = epochs_for_steps(args.finetune_steps, len(data.y_train))
            mrmp_epochs = args.mrmp_finetune or finetune
            ckpt, dense = dense_model(spec, seed, args.epochs, data, args.cache)
            print(f"{spec} seed {seed}: dense {dense['accuracy']:.3f}", flush=True)
            if not finished(spec, seed, "dense"):
                save(
                    {"data": spec, "seed": seed, "method": "dense", "rate": 0.0,
                     "accuracy": dense["accuracy"], "seconds": dense["seconds"]}
                )  # fmt: skip
            if "mrmp" in args.methods.split(",") and not finished(spec, seed, "mrmp"):
                outcome = api.prune(
                    ckpt, data, method="mrmp", rates=trained, epochs=mrmp_epochs, lr=args.lr,
                    seed=seed, progress=False, **mrmp_options,
                )  # fmt: skip
                multi = outcome.checkpoint
                seconds = outcome.summary["finetune_seconds"]
                for rate in eval_rates:
                    started = time.perf_counter()
                    extracted = api.extract(multi, rate)
                    took = time.perf_counter() - started
                    test = test_metrics(extracted.model, data.x_test, data.y_test, data.num_classes)
                    kind = "trained" if rate in trained else "between" if rate in between else (
                        "beyond"
                    )  # fmt: skip
                    save(
                        {"data": spec, "seed": seed, "method": "mrmp", "rate": rate,
                         "kind": kind, "accuracy": test["accuracy"],
                         "realized_rate": extracted.summary["realized_rate"],
                         "extract_seconds": took,
                         "finetune_seconds": seconds if rate == eval_rates[0] else 0.0,
                         "best_epoch": outcome.summary["best_epoch"],
                         "finetune_epochs": mrmp_epochs,
                         "options": mrmp_options}
                    )  # fmt: skip
                    print(f"  mrmp   @ {rate:g} ({kind}): {test['accuracy']:.3f}", flush=True)
                if seed == int(args.seeds.split(",")[0]):
                    wall, cpu = extraction_seconds(multi, 0.99)
                    save(
                        {"data": spec, "seed": seed, "method": "extract-timing", "rate": 0.99,
                         "seconds": wall, "cpu_seconds": cpu}
                    )  # fmt: skip
            for rate in sorted(eval_rates, reverse=True):  # the high rates first
                for method in methods:
                    if finished(spec, seed, method, rate):
                        continue
                    name, _, extra = method.partition(":")
                    if "=" in extra:  # srmp:average=5;kl_weight=2
                        options = parse_options(extra.replace(";", ","))
                    else:
                        options = {"score": extra} if extra else {}
                    outcome = api.prune(
                        ckpt, data, method=name, rate=rate, epochs=finetune, lr=args.lr,
                        seed=seed, progress=False, allow_collapse=True, **options,
                    )  # fmt: skip
                    s = outcome.summary
                    save(
                        {"data": spec, "seed": seed, "method": method, "rate": rate,
                         "accuracy": s["accuracy"], "realized_rate": s["realized_rate"],
                         "finetune_seconds": s["finetune_seconds"], "finetune_epochs": finetune}
                    )  # fmt: skip
                    print(f"  {method:<6} @ {rate:g}: {s['accuracy']:.3f}", flush=True)
    result = {
        "args": {**vars(args), "methods": ",".join(methods), "methods_run": args.methods},
        "records": records,
    }
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(render(result))
    partial.unlink(missing_ok=True)
    print(out.with_suffix(".md").read_text())


def fmt(values: list[float], pp: bool = False) -> str:
    if not values:
        return "-"
    scale, unit = (100.0, " pp") if pp else (100.0, "%")
    sign = "+" if pp else ""
    if len(values) == 1:
        return f"{values[0] * scale:{sign}.1f}{unit}"
    mean, std = statistics.mean(values), statistics.stdev(values)
    return f"{mean * scale:{sign}.1f}{unit} ± {std * scale:.1f}"


def command(a: dict) -> str:
    # a run's "methods" are its per-rate ones; none: it ran mrmp alone
    methods = a.get("methods_run") or a["methods"] or "mrmp"
    flags = "--quick" if a["quick"] else (
        f"--datasets {a['datasets']} --seeds {a['seeds']} --rates {a['rates']} "
        f"--between {a['between']} --beyond {a['beyond']} --methods {methods} "
        f"--epochs {a['epochs']} --lr {a['lr']:g} "
        + (f"--finetune-steps {a['finetune_steps']}" if a.get("finetune_steps")
           else f"--finetune {a['finetune']}")
    )  # fmt: skip
    if a.get("mrmp_finetune"):
        flags += f" --mrmp-finetune {a['mrmp_finetune']}"
    if a.get("mrmp_options"):
        flags += f" --mrmp-options {a['mrmp_options']}"
    if a.get("cache"):
        flags += " --cache DIR"
    return f"python benchmarks/mrmp.py {flags}"


def finetune_epochs(records: list[dict], a: dict) -> str:
    """The fine-tune epochs of these records: ``E epochs`` for every run, or with mrmp's apart."""

    def shown(rs):
        return ", ".join(
            str(e) for e in sorted({r.get("finetune_epochs", a["finetune"]) for r in rs})
        )

    runs = [r for r in records if r["method"] not in ("dense", "extract-timing")]
    mrmp = shown(r for r in runs if r["method"] == "mrmp")
    others = shown(r for r in runs if r["method"] != "mrmp")
    if not others or mrmp == others:
        return f"{mrmp or others} epochs"
    return f"{others} epochs (mrmp's: {mrmp})" if mrmp else f"{others} epochs"


def render(result: dict) -> str:
    a = result["args"]
    recs = result["records"]
    seeds = a["seeds"].split(",")
    spread = f"mean ± std over seeds {a['seeds']}" if len(seeds) > 1 else f"seed {a['seeds']}"
    methods = [m for m in a["methods"].split(",") if m]
    budget_per_dataset = len({finetune_epochs([r for r in recs if r["data"] == d], a)
                              for d in a["datasets"].split(",")}) > 1  # fmt: skip
    if a.get("merged"):
        head = [
            "Merged by `python benchmarks/mrmp.py --merge " + " ".join(a["merged"]) + "` from:",
            "",
            *[f"- `{c}`" for c in a["sources"]],
        ]
    else:
        head = [f"Command: `{command(a)}`"]
    lines = [
        *head,
        "",
        f"Default `gcn`, dense training {a['epochs']} epochs. `mrmp` is fine-tuned **once** for "
        f"rates {a['rates']} and every rate is extracted from that one checkpoint; each per-rate "
        f"method is fine-tuned separately at each rate. Every fine-tune: "
        f"{finetune_epochs(recs, a) if not budget_per_dataset else 'see each dataset'}, "
        f"Adam {a['lr']:g}, best epoch on validation. Test accuracy, "
        f"{spread}. "
        "Δ: mrmp − srmp, per seed.",
    ]
    for spec in a["datasets"].split(","):
        mine = [r for r in recs if r["data"] == spec]
        if not any(r["method"] == "mrmp" for r in mine):
            continue
        dense = [r["accuracy"] for r in mine if r["method"] == "dense"]
        rates = sorted({r["rate"] for r in mine if r["method"] == "mrmp"})
        header = ["rate", "kind", "mrmp", *methods]
        if "srmp" in methods:
            header.append("Δ mrmp − srmp")
        lines += [
            "",
            f"### {spec} (dense {fmt(dense)})",
            "",
            *([f"Fine-tune: {finetune_epochs(mine, a)} each.", ""] if budget_per_dataset else []),
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for rate in rates:
            cells = {
                m: {
                    r["seed"]: r["accuracy"] for r in mine if r["method"] == m and r["rate"] == rate
                }
                for m in ["mrmp", *methods]
            }
            kind = next(r["kind"] for r in mine if r["method"] == "mrmp" and r["rate"] == rate)
            row = [f"{rate:g}", kind] + [fmt(list(cells[m].values())) for m in ["mrmp", *methods]]
            if "srmp" in methods:
                gaps = [
                    cells["mrmp"][s] - cells["srmp"][s] for s in cells["mrmp"] if s in cells["srmp"]
                ]
                row.append(fmt(gaps, pp=True))
            lines.append("| " + " | ".join(row) + " |")
        totals = []
        for m in ["mrmp", *methods]:
            per_seed = {}
            for r in mine:
                if r["method"] == m:
                    per_seed[r["seed"]] = per_seed.get(r["seed"], 0.0) + r["finetune_seconds"]
            totals.append(statistics.mean(per_seed.values()) if per_seed else float("nan"))
        lines += [
            "",
            f"Total fine-tune time for all {len(rates)} rates (seconds, mean over seeds): "
            + ", ".join(
                f"{m} {t:.0f}"
                for m, t in zip(["mrmp", *methods], totals, strict=True)
                if t == t  # a method with no run on this dataset (NaN) is left out
            )
            + (
                f"; mrmp / srmp = {totals[0] / totals[1 + methods.index('srmp')]:.2f}"
                if "srmp" in methods
                else ""
            )
            + ".",
        ]
        realized = [abs(r["realized_rate"] - r["rate"]) for r in mine if r["method"] == "mrmp"]
        if not realized:
            continue
        timing = [r for r in mine if r["method"] == "extract-timing"]
        cpu = [f", {r['cpu_seconds'] * 1e3:.0f} ms CPU" for r in timing if "cpu_seconds" in r]
        took = (
            f"; one extraction at 0.99 takes {timing[0]['seconds'] * 1e3:.0f} ms in-process "
            f"(wall{''.join(cpu[:1])})"
            if timing
            else ""
        )
        lines.append(
            f"mrmp extractions: largest |realized − requested rate| {max(realized):.1e}{took}."
        )
    if a.get("note"):
        lines += ["", a["note"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
