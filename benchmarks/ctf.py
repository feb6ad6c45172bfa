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
import shlex
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
from gcnshrink.models import create_model
from gcnshrink.onnx_export import OnnxRunner, export_onnx, read_onnx
from gcnshrink.pruning.ctf import removed_by_granularity
from gcnshrink.train import TrainConfig

RESULTS = Path(__file__).parent / "results"


# ---------------------------------------------------------------------------- measuring
def runner(path: Path, batch: int, threads: int) -> OnnxRunner:
    """gcnshrink's onnxruntime runner, its session rebuilt with ``threads`` intra-op threads (0:
    onnxruntime's default, one per core): on a shared machine, idle threads that spin waiting for
    work make the timings of small models noisy."""
    import onnxruntime as ort

    out = OnnxRunner(path, batch_size=batch)
    if threads:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        out.session = ort.InferenceSession(
            read_onnx(path)[0], options, providers=["CPUExecutionProvider"]
        )
    return out


def interleaved_latency_ms(
    paths: dict[str, Path], x: np.ndarray, rounds: int, threads: int, warmup: int = 3
):
    """Median onnxruntime time (ms) of one run of ``x`` as a batch, per model; the models take
    turns within every round, the order rotating from round to round."""
    runners = {key: runner(path, max(1, len(x)), threads) for key, path in paths.items()}
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
                {
                    "arch": "gcn",
                    "data": args.gcn_data,
                    "config": {},
                    "epochs": args.gcn_epochs,
                    "finetune": args.finetune,
                }
            )
        elif arch == "stgcn":
            out.append(
                {
                    "arch": "stgcn",
                    "data": args.stgcn_data,
                    "config": {"base_width": args.stgcn_width},
                    "epochs": args.stgcn_epochs,
                    "finetune": args.stgcn_finetune or args.finetune,
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
                        epochs=case["finetune"],
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
                medians = interleaved_latency_ms(keys, x, args.rounds, args.ort_threads)
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
        f"--finetune {a['finetune']} --stgcn-finetune {a['stgcn_finetune'] or a['finetune']} "
        f"--lr {a['lr']:g} --rates {a['rates']} "
        f"--methods {shlex.quote(a['methods'])} --seeds {a['seeds']} --rounds {a['rounds']} "
        f"--threads {a['threads']} --ort-threads {a['ort_threads']}"
    )
    lines = [
        f"Command: `{command}`",
        "",
        f"Dense training {a['gcn_epochs']} (gcn) / {a['stgcn_epochs']} (stgcn) epochs; every "
        f"method fine-tuned {a['finetune']} (gcn) / {a['stgcn_finetune'] or a['finetune']} "
        f"(stgcn) epochs with Adam at {a['lr']:g}, best epoch on "
        f"validation; test accuracy. Seeds {a['seeds']} (mean). Parameters and FLOPs (one sample) "
        "of the compacted model; latency: onnxruntime CPU, compacted ONNX, models interleaved, "
        f"median of {a['rounds']} rounds, {a['ort_threads'] or 'default'} onnxruntime "
        "thread(s). FLOPs ×: dense FLOPs / compacted FLOPs (the ideal "
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


def alignment_study(args) -> dict:
    """Does a width that is not a multiple of 8 cost onnxruntime time? Dense ``stgcn`` models at
    every base width in ``--align-widths`` (every block scales with it), timed interleaved at
    batch 1 and 32; latency per MFLOP shows what the width alone costs."""
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = load_data(args.stgcn_data)
    lo, hi = (int(w) for w in args.align_widths.split("-"))
    paths, flops = {}, {}
    for width in range(lo, hi + 1):
        torch.manual_seed(0)
        model = create_model(
            "stgcn",
            num_classes=data.num_classes,
            layout=data.layout,
            in_channels=data.in_channels,
            base_width=width,
        ).eval()
        paths[width] = work / f"align-stgcn-{width}.onnx"
        export_onnx(model, data.x_val[:2], paths[width], force=True)
        flops[width] = count_flops(model, data.x_val.shape[2])
    rows = []
    for batch in (1, 32):
        medians = interleaved_latency_ms(
            paths, data.x_test[:batch].numpy(), args.rounds, args.ort_threads
        )
        for width, ms in medians.items():
            rows.append({"width": width, "batch": batch, "ms": ms, "flops": flops[width]})
    return {"args": vars(args), "rows": rows}


def render_alignment(result: dict) -> str:
    a = result["args"]
    lines = [
        f"Command: `python benchmarks/ctf.py --align-study --align-widths {a['align_widths']} "
        f"--stgcn-data {a['stgcn_data']} --rounds {a['rounds']} --ort-threads {a['ort_threads']}`",
        "",
        "Dense stgcn at each base width (every block scales: base, 2·base, 4·base), random "
        "weights, onnxruntime CPU, models interleaved, median of "
        f"{a['rounds']} rounds. µs/MFLOP: latency per million FLOPs of one sample.",
        "",
        "| base width | MFLOPs | b1 ms | b1 µs/MFLOP | b32 ms | b32 µs/MFLOP |",
        "|---|---|---|---|---|---|",
    ]
    by = {(r["width"], r["batch"]): r for r in result["rows"]}
    for width in sorted({r["width"] for r in result["rows"]}):
        one, many = by[(width, 1)], by[(width, 32)]
        mflops = one["flops"] / 1e6
        lines.append(
            f"| {width}{' (×8)' if width % 8 == 0 else ''} | {mflops:,.1f} | {one['ms']:.3f} | "
            f"{1000 * one['ms'] / mflops:.2f} | {many['ms']:.2f} | "
            f"{1000 * many['ms'] / (32 * mflops):.2f} |"
        )
    return "\n".join(lines) + "\n"


def compacted_stgcn_config(record: dict, in_channels: int, num_classes: int, layout) -> dict:
    """The config of a compacted stgcn, from the widths its record keeps."""
    from gcnshrink.models.stgcn import default_blocks

    widths = record["widths"]
    blocks, prev = [], in_channels
    for i, spec in enumerate(default_blocks(in_channels, record["config"]["base_width"])):
        out = widths[f"block{i}.out"][1]
        blocks.append({**spec, "in": prev, "mid": widths[f"block{i}.gcn"][1], "out": out})
        prev = out
    return {
        "num_classes": num_classes,
        "layout": layout,
        "in_channels": in_channels,
        "base_width": record["config"]["base_width"],
        "blocks": blocks,
    }


def aligned(config: dict, n: int) -> dict:
    """Every block width rounded up to a multiple of ``n`` (never above the dense width)."""
    full = {}
    from gcnshrink.models.stgcn import default_blocks

    dense = default_blocks(config["in_channels"], config["base_width"])
    blocks, prev = [], config["in_channels"]
    for spec, top in zip(config["blocks"], dense, strict=True):
        mid = min(-(-spec["mid"] // n) * n, top["mid"])
        out = min(-(-spec["out"] // n) * n, top["out"])
        blocks.append({**spec, "in": prev, "mid": mid, "out": out})
        prev = out
    full.update(config, blocks=blocks)
    return full


def alignment_proxy(args) -> dict:
    """What ``--align N`` would buy on the compacted stgcn models of a finished run: each one
    against the same architecture with every width rounded up to a multiple of N (extra units
    kept, as compaction keeps any removable unit exactly), timed interleaved."""
    work = Path(args.work)
    records = json.loads((work / "records.json").read_text())
    data = load_data(args.stgcn_data)
    n = args.align_proxy
    paths, facts = {}, {}
    for r in records:
        if r["arch"] != "stgcn" or r["method"] == "dense":
            continue
        key = f"{r['method']}@{r['rate']:g}"
        config = compacted_stgcn_config(r, data.in_channels, data.num_classes, data.layout)
        for tag, cfg in (("compact", config), (f"align{n}", aligned(config, n))):
            torch.manual_seed(0)
            model = create_model("stgcn", **cfg).eval()
            path = work / f"proxy-{key.replace(':', '_').replace(';', '_')}-{tag}.onnx"
            export_onnx(model, data.x_val[:2], path, force=True)
            paths[(key, tag)] = path
            facts[(key, tag)] = {
                "flops": count_flops(model, data.x_val.shape[2]),
                "widths": [b["out"] for b in cfg["blocks"]],
            }
    rows = []
    for batch in (1, 32):
        medians = interleaved_latency_ms(
            {f"{k}|{t}": p for (k, t), p in paths.items()},
            data.x_test[:batch].numpy(),
            args.rounds,
            args.ort_threads,
        )
        for name, ms in medians.items():
            key, tag = name.split("|")
            rows.append({"model": key, "tag": tag, "batch": batch, "ms": ms, **facts[(key, tag)]})
    return {"args": vars(args), "rows": rows}


def render_alignment_proxy(result: dict) -> str:
    a = result["args"]
    n = a["align_proxy"]
    lines = [
        f"Command: `python benchmarks/ctf.py --align-proxy {n} --work WORK --stgcn-data "
        f"{a['stgcn_data']} --rounds {a['rounds']} --ort-threads {a['ort_threads']}` (WORK: the "
        "folder of the main run)",
        "",
        f"Each compacted stgcn of the main run against the same model with every width rounded up "
        f"to a multiple of {n} (random weights: latency does not depend on them), onnxruntime "
        f"CPU, interleaved, median of {a['rounds']} rounds. ×: compact ms / aligned ms (> 1: "
        "alignment is faster).",
        "",
        "| model | out widths compact → aligned | MFLOPs compact → aligned | b1 ms | b1 × | "
        "b32 ms | b32 × |",
        "|---|---|---|---|---|---|---|",
    ]
    by = {(r["model"], r["tag"], r["batch"]): r for r in result["rows"]}
    for key in dict.fromkeys(r["model"] for r in result["rows"]):
        c1, a1 = by[(key, "compact", 1)], by[(key, f"align{n}", 1)]
        c32, a32 = by[(key, "compact", 32)], by[(key, f"align{n}", 32)]
        lines.append(
            f"| {key} | {c1['widths']} → {a1['widths']} | {c1['flops'] / 1e6:,.1f} → "
            f"{a1['flops'] / 1e6:,.1f} | {c1['ms']:.3f} → {a1['ms']:.3f} | "
            f"{c1['ms'] / a1['ms']:.2f} | {c32['ms']:.2f} → {a32['ms']:.2f} | "
            f"{c32['ms'] / a32['ms']:.2f} |"
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
    parser.add_argument(
        "--stgcn-finetune",
        type=int,
        default=None,
        help="stgcn fine-tune epochs (default: --finetune)",
    )
    parser.add_argument("--lr", type=float, default=FINETUNE_LR)
    parser.add_argument("--rates", default="0.5,0.7,0.9,0.95")
    parser.add_argument(
        "--methods",
        default="mp,structured,tcp,ctf",
        help="method or method:option=value;option=value, comma-separated",
    )
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--rounds", type=int, default=30, help="latency rounds (median)")
    parser.add_argument(
        "--ort-threads", type=int, default=1, help="onnxruntime intra-op threads (0: default)"
    )
    parser.add_argument("--calibration", type=int, default=64, help="compaction inputs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (training)")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument(
        "--align-study",
        action="store_true",
        help="instead: time dense stgcn at every base width of --align-widths",
    )
    parser.add_argument("--align-widths", default="12-20", help="base widths, lo-hi")
    parser.add_argument(
        "--align-proxy",
        type=int,
        default=0,
        help="instead: time the compacted stgcn models of --work against widths rounded up to N",
    )
    parser.add_argument("--work", default=None, help="folder for checkpoints and ONNX files")
    parser.add_argument("--out", default=str(RESULTS / "ctf"))
    parser.add_argument(
        "--render", action="store_true", help="only rewrite --out.md from --out.json"
    )
    args = parser.parse_args()
    if args.render:
        out = Path(args.out)
        out.with_suffix(".md").write_text(render(json.loads(out.with_suffix(".json").read_text())))
        return
    if args.quick:
        args.stgcn_width, args.gcn_epochs, args.stgcn_epochs = 8, 5, 2
        args.finetune, args.rates, args.rounds = 2, "0.5,0.9", 5
        if args.out == str(RESULTS / "ctf"):
            args.out = str(RESULTS / "ctf_quick")
    if args.work is None:
        args.work = str(Path(tempfile.gettempdir()) / f"gcnshrink-{Path(args.out).name}")
    torch.set_num_threads(args.threads)
    if args.align_proxy:
        out = Path(args.out if args.out != str(RESULTS / "ctf") else RESULTS / "ctf_align_proxy")
        result = alignment_proxy(args)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(render_alignment_proxy(result))
        print(out.with_suffix(".md").read_text())
        return
    if args.align_study:
        out = Path(args.out if args.out != str(RESULTS / "ctf") else RESULTS / "ctf_alignment")
        result = alignment_study(args)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(render_alignment(result))
        print(out.with_suffix(".md").read_text())
        return
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(render(result))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
