"""CTF against dense, mp, structured and tcp: accuracy, and whether compaction makes the model fast.

For each architecture (``gcn`` on ``--gcn-data``, ``stgcn`` on ``--stgcn-data``) and seed: train
the dense model, prune it with every method at every rate (the same fine-tune for every method),
compact each result (``gcnshrink.compact.compact_model``, logits checked) and export it to ONNX.
Then measure

- test accuracy of the pruned model (compaction keeps the logits);
- parameters and FLOPs (``gcnshrink.measure.count_flops``, one sample) of the compacted model;
- onnxruntime CPU latency of the compacted ONNX at batch 1 and batch 32 (real test inputs). The
  models of one architecture are timed *interleaved*: every round runs each model once, in an order
  that rotates from round to round, so every model sees the same machine load; the median over
  rounds is reported, with the speed-up over the dense ONNX next to the FLOP ratio (dense FLOPs /
  compacted FLOPs: the speed-up a perfect runtime would give);
- for each pruned model, the share of its removed weights that whole channels, rows, columns and
  single entries account for (``gcnshrink.pruning.ctf.removed_by_granularity``).

    python benchmarks/ctf.py                 # rates 0.5, 0.7, 0.9, 0.95; gcn and stgcn (base 64)
    python benchmarks/ctf.py --quick         # a smoke run: small stgcn, few epochs, two rates

Pruned results are kept in ``--work`` (default: a folder under the system temp dir), so an
interrupted run resumes where it stopped. Writes ``--out``.json and .md (default
benchmarks/results/ctf). Nothing is asserted: it is a measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gcnshrink import api
from gcnshrink.checkpoint import load_checkpoint, save_checkpoint
from gcnshrink.compact import compact_model
from gcnshrink.data import load_data
from gcnshrink.defaults import FINETUNE_LR
from gcnshrink.graph import masks_from_weights
from gcnshrink.measure import count_flops
from gcnshrink.onnx_export import OnnxRunner, export_onnx
from gcnshrink.pruning.ctf import removed_by_granularity
from gcnshrink.train import TrainConfig

RESULTS = Path(__file__).parent / "results"


# ---------------------------------------------------------------------------- measuring
def interleaved_latency_ms(paths: dict[str, Path], x: np.ndarray, rounds: int, warmup: int = 3):
    """Median onnxruntime time (ms) of one run of ``x`` as a batch, per model; the models take
    turns within every round, the order rotating from round to round."""
    runners = {key: OnnxRunner(path, batch_size=max(1, len(x))) for key, path in paths.items()}
    feeds = {
        key: {r.input_name: np.ascontiguousarray(x, dtype=r.input_dtype)}
        for key, r in runners.items()
    }
    keys = list(runners)
    times: dict[str, list[float]] = {key: [] for key in keys}
    for i in range(warmup + rounds):
        shift = i % len(keys)
        for key in keys[shift:] + keys[:shift]:
            start = time.perf_counter()
            runners[key].session.run(None, feeds[key])
            if i >= warmup:
                times[key].append((time.perf_counter() - start) * 1000.0)
    return {key: statistics.median(values) for key, values in times.items()}


def granularity(model) -> dict:
    graph = model.unit_graph()
    masks = masks_from_weights(graph, dict(model.named_parameters()))
    return removed_by_granularity(graph, masks)["shares"]


def compacted_record(model, data, calibration, onnx_path: Path) -> dict:
    result = compact_model(model.cpu().eval(), calibration)
    export_onnx(result.model, calibration[:2], onnx_path, force=True)
    return {
        "params": result.params_after,
        "params_before": result.params_before,
        "flops": count_flops(result.model, calibration.shape[2]),
        "compaction_relative_diff": result.relative_diff,
        "widths": {k: [s.width_before, s.width_after] for k, s in result.spaces.items()},
    }


# ---------------------------------------------------------------------------- the run
def cases(args) -> list[dict]:
    out = []
    for arch in args.archs.split(","):
        if arch == "gcn":
            out.append(
                {"arch": "gcn", "data": args.gcn_data, "config": {}, "epochs": args.gcn_epochs}
            )
        elif arch == "stgcn":
            out.append(
                {
                    "arch": "stgcn",
                    "data": args.stgcn_data,
                    "config": {"base_width": args.stgcn_width},
                    "epochs": args.stgcn_epochs,
                }
            )
        else:
            raise SystemExit(f"unknown architecture {arch} (gcn or stgcn)")
    return out


def method_spec(method: str) -> tuple[str, dict]:
    """``name`` or ``name:key=value;key=value`` (e.g. ``ctf:channel_share=0.7``)."""
    name, _, rest = method.partition(":")
    options = {}
    for item in filter(None, rest.split(";")):
        key, _, value = item.partition("=")
        try:
            options[key] = float(value)
        except ValueError:
            options[key] = value
    return name, options


def run(args) -> dict:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    partial = work / "records.json"
    records = json.loads(partial.read_text()) if partial.exists() else []
    done = {(r["arch"], r["seed"], r["method"], r["rate"]) for r in records}
    methods = args.methods.split(",")
    rates = [float(r) for r in args.rates.split(",")]
    latency = []
    for case in cases(args):
        arch = case["arch"]
        for seed in [int(s) for s in args.seeds.split(",")]:
            data = load_data(case["data"], seed=seed)
            calibration = data.x_val[: args.calibration]
            dense_path = work / f"{arch}-s{seed}-dense.pt"
            if dense_path.exists():
                ckpt = load_checkpoint(dense_path)
            else:
                config = TrainConfig(epochs=case["epochs"], seed=seed, progress=False)
                ckpt, _ = api.train(data, arch, config=config, model_config=case["config"])
                save_checkpoint(ckpt, dense_path)
            onnx_paths = {"dense": work / f"{arch}-s{seed}-dense.onnx"}
            if (arch, seed, "dense", 0.0) not in done:
                model = ckpt.build_model().eval()
                export_onnx(model, calibration[:2], onnx_paths["dense"], force=True)
                records.append(
                    {
                        "arch": arch,
                        "data": case["data"],
                        "config": case["config"],
                        "seed": seed,
                        "method": "dense",
                        "rate": 0.0,
                        "accuracy": api.evaluate(ckpt, data)["accuracy"],
                        "params": sum(p.numel() for p in model.parameters()),
                        "flops": count_flops(model, calibration.shape[2]),
                    }
                )
                partial.write_text(json.dumps(records, indent=1))
            for rate in rates:
                for method in methods:
                    tag = f"{arch}-s{seed}-{method.replace(':', '_').replace(';', '_')}-{rate:g}"
                    onnx_paths[(method, rate)] = work / f"{tag}.onnx"
                    if (arch, seed, method, rate) in done:
                        continue
                    name, options = method_spec(method)
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
                    record = {
                        "arch": arch,
                        "data": case["data"],
                        "config": case["config"],
                        "seed": seed,
                        "method": method,
                        "rate": rate,
                        "realized_rate": s["realized_rate"],
                        "accuracy": s["accuracy"],
                        "finetune_seconds": s["finetune_seconds"],
                        "removed_by": granularity(outcome.model),
                        **compacted_record(
                            outcome.model, data, calibration, onnx_paths[(method, rate)]
                        ),
                    }
                    records.append(record)
                    partial.write_text(json.dumps(records, indent=1))
                    print(
                        f"{arch} s{seed} {method} @ {rate:g}: acc {record['accuracy']:.3f}, "
                        f"params {record['params']:,}, flops {record['flops']:,}",
                        flush=True,
                    )
            keys = {
                ("dense" if key == "dense" else f"{key[0]}@{key[1]:g}"): path
                for key, path in onnx_paths.items()
            }
            for batch in (1, 32):
                x = data.x_test[:batch].numpy()
                medians = interleaved_latency_ms(keys, x, args.rounds)
                for key, ms in medians.items():
                    latency.append(
                        {"arch": arch, "seed": seed, "model": key, "batch": batch, "ms": ms}
                    )
                print(f"{arch} s{seed} batch {batch}: {json.dumps(medians)}", flush=True)
    archs = {case["arch"] for case in cases(args)}
    seeds = {int(x) for x in args.seeds.split(",")}
    mine = [  # the work folder may hold other runs' records
        r
        for r in records
        if r["arch"] in archs
        and r["seed"] in seeds
        and (r["method"] == "dense" or (r["method"] in methods and r["rate"] in rates))
    ]
    return {"args": vars(args), "records": mine, "latency": latency}


# ---------------------------------------------------------------------------- the report
def mean(values):
    return statistics.mean(values) if values else float("nan")


def render(result: dict) -> str:
    a = result["args"]
    quick = " --quick" if a["quick"] else ""
    command = (
        f"python benchmarks/ctf.py{quick} --archs {a['archs']} --gcn-data {a['gcn_data']} "
        f"--stgcn-data {a['stgcn_data']} --stgcn-width {a['stgcn_width']} "
        f"--gcn-epochs {a['gcn_epochs']} --stgcn-epochs {a['stgcn_epochs']} "
        f"--finetune {a['finetune']} --lr {a['lr']:g} --rates {a['rates']} "
        f"--methods {a['methods']} --seeds {a['seeds']} --rounds {a['rounds']} "
        f"--threads {a['threads']}"
    )
    lines = [
        f"Command: `{command}`",
        "",
        f"Dense training {a['gcn_epochs']} (gcn) / {a['stgcn_epochs']} (stgcn) epochs; every "
        f"method fine-tuned {a['finetune']} epochs with Adam at {a['lr']:g}, best epoch on "
        f"validation; test accuracy. Seeds {a['seeds']} (mean). Parameters and FLOPs (one sample) "
        "of the compacted model; latency: onnxruntime CPU, compacted ONNX, models interleaved, "
        f"median of {a['rounds']} rounds. FLOPs ×: dense FLOPs / compacted FLOPs (the ideal "
        "speed-up); b1 ×, b32 ×: measured speed-up over the dense ONNX at batch 1 and 32. "
        "Removed by: share of the removed weights in whole channels / rows / columns / single "
        "entries.",
    ]
    recs, lat = result["records"], result["latency"]
    for arch in dict.fromkeys(r["arch"] for r in recs):
        mine = [r for r in recs if r["arch"] == arch]
        dense = [r for r in mine if r["method"] == "dense"]
        config = dense[0]["config"] if dense else {}
        width = f", base width {config['base_width']}" if "base_width" in config else ""
        dense_acc = mean([r["accuracy"] for r in dense])

        def ms(model, batch, arch=arch):
            return mean(
                [
                    x["ms"]
                    for x in lat
                    if x["arch"] == arch and x["model"] == model and x["batch"] == batch
                ]
            )

        d1, d32 = ms("dense", 1), ms("dense", 32)
        dense_flops = mean([r["flops"] for r in dense])
        lines += [
            "",
            f"### {arch} on {dense[0]['data'] if dense else '?'}{width}",
            "",
            f"Dense: {dense_acc:.1%}, {mean([r['params'] for r in dense]):,.0f} parameters, "
            f"{dense_flops / 1e6:,.2f} MFLOPs, {d1:.3f} ms (batch 1), {d32:.2f} ms (batch 32).",
            "",
            "| rate | method | accuracy | Δ vs dense | params | MFLOPs | FLOPs × | b1 ms | b1 × "
            "| b32 ms | b32 × | removed by ch / row / col / entry |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        rates = sorted({r["rate"] for r in mine if r["method"] != "dense"})
        methods = list(dict.fromkeys(r["method"] for r in mine if r["method"] != "dense"))
        for rate in rates:
            for method in methods:
                rs = [r for r in mine if r["method"] == method and r["rate"] == rate]
                if not rs:
                    continue
                acc = mean([r["accuracy"] for r in rs])
                flops = mean([r["flops"] for r in rs])
                key = f"{method}@{rate:g}"
                b1, b32 = ms(key, 1), ms(key, 32)
                shares = {
                    g: mean([r["removed_by"][g] for r in rs])
                    for g in ("channels", "rows", "columns", "entries")
                }
                lines.append(
                    f"| {rate:g} | {method} | {acc:.1%} | {(acc - dense_acc) * 100:+.1f} pp | "
                    f"{mean([r['params'] for r in rs]):,.0f} | {flops / 1e6:,.2f} | "
                    f"{dense_flops / flops:.2f} | {b1:.3f} | {d1 / b1:.2f} | {b32:.2f} | "
                    f"{d32 / b32:.2f} | "
                    + " / ".join(f"{100 * v:.0f}" for v in shares.values())
                    + " % |"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="gcn,stgcn")
    parser.add_argument("--gcn-data", default="synthetic:hands")
    parser.add_argument("--stgcn-data", default="synthetic:sbu")
    parser.add_argument("--stgcn-width", type=int, default=64, help="stgcn base width")
    parser.add_argument("--gcn-epochs", type=int, default=150, help="dense training epochs")
    parser.add_argument("--stgcn-epochs", type=int, default=30, help="dense training epochs")
    parser.add_argument("--finetune", type=int, default=20, help="fine-tune epochs, every method")
    parser.add_argument("--lr", type=float, default=FINETUNE_LR)
    parser.add_argument("--rates", default="0.5,0.7,0.9,0.95")
    parser.add_argument(
        "--methods",
        default="mp,structured,tcp,ctf",
        help="method or method:option=value;option=value, comma-separated",
    )
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--rounds", type=int, default=30, help="latency rounds (median)")
    parser.add_argument("--calibration", type=int, default=64, help="compaction inputs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (training)")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--work", default=None, help="folder for checkpoints and ONNX files")
    parser.add_argument("--out", default=str(RESULTS / "ctf"))
    args = parser.parse_args()
    if args.quick:
        args.stgcn_width, args.gcn_epochs, args.stgcn_epochs = 8, 5, 2
        args.finetune, args.rates, args.rounds = 2, "0.5,0.9", 5
        if args.out == str(RESULTS / "ctf"):
            args.out = str(RESULTS / "ctf_quick")
    if args.work is None:
        args.work = str(Path(tempfile.gettempdir()) / f"gcnshrink-{Path(args.out).name}")
    torch.set_num_threads(args.threads)
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(render(result))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
