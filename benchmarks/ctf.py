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
    python benchmarks/ctf.py --align-compare 8 --work W   # compaction with and without --align 8
    python benchmarks/ctf.py --profile STEM,STEM --work W # onnxruntime time per operator
    python benchmarks/ctf.py --align-study   # dense stgcn at base widths 12..20

Single methods or rates can run side by side, each in its own ``--work``; ``--import-work``
adds their results to one folder and ``--measure-only`` times what is there without pruning
more; ``--combine a.json,b.json`` merges per-architecture results into one report.

Pruned results are kept in ``--work`` (default: a folder under the system temp dir), so an
interrupted run resumes where it stopped. Writes ``--out``.json and .md (default
benchmarks/results/ctf). Nothing is asserted: it is a measurement.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch
from common import machine, onnx_runner, round_robin_ms  # benchmarks/common.py

from gcnshrink import api
from gcnshrink.checkpoint import load_checkpoint, save_checkpoint
from gcnshrink.compact import compact_model
from gcnshrink.data import load_data
from gcnshrink.defaults import FINETUNE_LR
from gcnshrink.graph import masks_from_weights
from gcnshrink.measure import count_flops, flops_by_operator
from gcnshrink.models import create_model
from gcnshrink.onnx_export import export_onnx, read_onnx
from gcnshrink.pruning.ctf import removed_by_granularity
from gcnshrink.train import TrainConfig

RESULTS = Path(__file__).parent / "results"


# ---------------------------------------------------------------------------- measuring
def interleaved_latency_ms(
    paths: dict[str, Path], x: np.ndarray, rounds: int, threads: int, warmup: int = 3
):
    """Median onnxruntime time (ms) of one run of ``x`` as a batch, per model; the models take
    turns within every round, the order rotating from round to round."""
    runners = {key: onnx_runner(path, max(1, len(x)), threads) for key, path in paths.items()}
    calls = {
        key: partial(
            r.session.run, None, {r.input_name: np.ascontiguousarray(x, dtype=r.input_dtype)}
        )
        for key, r in runners.items()
    }
    return round_robin_ms(calls, rounds, warmup)


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
        if value in ("true", "false"):
            options[key] = value == "true"
            continue
        try:
            options[key] = float(value)
        except ValueError:
            options[key] = value
    return name, options


def run_stem(arch: str, seed: int, method: str, rate: float) -> str:
    """The stem of a run's checkpoint and ONNX file in --work: ``stgcn-s0-dense``,
    ``stgcn-s0-ctf-0.9`` (``:`` and ``;`` of a method's options become ``_``)."""
    if method == "dense":
        return f"{arch}-s{seed}-dense"
    return f"{arch}-s{seed}-{method.replace(':', '_').replace(';', '_')}-{rate:g}"


def import_work(work: Path, folders: list[str], records: list[dict]) -> list[dict]:
    """Add the pruned results of other ``--work`` folders (runs of single methods or rates side by
    side, from the same dense checkpoint) to this one: their records and their files."""
    done = {(r["arch"], r["seed"], r["method"], r["rate"]) for r in records}
    for folder in map(Path, folders):
        for r in json.loads((folder / "records.json").read_text()):
            key = (r["arch"], r["seed"], r["method"], r["rate"])
            if r["method"] == "dense" or key in done:
                continue
            stem = run_stem(r["arch"], r["seed"], r["method"], r["rate"])
            for suffix in (".onnx", ".pt"):
                source = folder / f"{stem}{suffix}"
                if source.exists():
                    shutil.copyfile(source, work / source.name)
            records.append(r)
            done.add(key)
    return records


def run(args) -> dict:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    partial = work / "records.json"
    records = json.loads(partial.read_text()) if partial.exists() else []
    if args.import_work:
        records = import_work(work, args.import_work.split(","), records)
        partial.write_text(json.dumps(records, indent=1))
    done = {(r["arch"], r["seed"], r["method"], r["rate"]) for r in records}
    methods = args.methods.split(",")
    rates = [float(r) for r in args.rates.split(",")]
    latency = []
    for case in cases(args):
        arch = case["arch"]
        for seed in [int(s) for s in args.seeds.split(",")]:
            data = load_data(case["data"], seed=seed)
            calibration = data.x_val[: args.calibration]
            dense_path = work / f"{run_stem(arch, seed, 'dense', 0.0)}.pt"
            if dense_path.exists():
                ckpt = load_checkpoint(dense_path)
            else:
                config = TrainConfig(epochs=case["epochs"], seed=seed, progress=False)
                ckpt, _ = api.train(data, arch, config=config, model_config=case["config"])
                save_checkpoint(ckpt, dense_path)
            onnx_paths = {"dense": dense_path.with_suffix(".onnx")}
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
                    tag = run_stem(arch, seed, method, rate)
                    if (arch, seed, method, rate) in done:
                        onnx_paths[(method, rate)] = work / f"{tag}.onnx"
                        continue
                    if args.measure_only:  # time what the side-by-side runs finished
                        continue
                    onnx_paths[(method, rate)] = work / f"{tag}.onnx"
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
                    # kept for --align-compare: compaction with and without width alignment
                    save_checkpoint(outcome.checkpoint, work / f"{tag}.pt", force=True)
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


def command_of(a: dict) -> str:
    quick = " --quick" if a["quick"] else ""
    return (
        f"python benchmarks/ctf.py{quick} --archs {a['archs']} --gcn-data {a['gcn_data']} "
        f"--stgcn-data {a['stgcn_data']} --stgcn-width {a['stgcn_width']} "
        f"--gcn-epochs {a['gcn_epochs']} --stgcn-epochs {a['stgcn_epochs']} "
        f"--finetune {a['finetune']} --stgcn-finetune {a['stgcn_finetune'] or a['finetune']} "
        f"--lr {a['lr']:g} --rates {a['rates']} "
        f"--methods {shlex.quote(a['methods'])} --seeds {a['seeds']} --rounds {a['rounds']} "
        f"--threads {a['threads']} --ort-threads {a['ort_threads']}"
        + (f" --import-work {a['import_work']}" if a.get("import_work") else "")
        + (" --measure-only" if a.get("measure_only") else "")
    )


def render(result: dict) -> str:
    a = result["args"]
    commands = [f"Command: `{command_of(a)}`"]
    if result.get("parts"):  # run side by side, one architecture each, then merged
        commands = [
            f"Command: `{command_of(part)}` (--work {part['work']})" for part in result["parts"]
        ]
        commands.append(f"Merged: `python benchmarks/ctf.py --combine {a['combine']} --out OUT`")
    lines = [
        *commands,
        "",
        f"Dense training {a['gcn_epochs']} (gcn) / {a['stgcn_epochs']} (stgcn) epochs; every "
        f"method fine-tuned {a['finetune']} (gcn) / {a['stgcn_finetune'] or a['finetune']} "
        f"(stgcn) epochs with Adam at {a['lr']:g}, best epoch on "
        f"validation; test accuracy. Seeds {a['seeds']}: each row is the mean over its seeds, "
        "compared with the dense models of the same seeds. Parameters and FLOPs (one sample) "
        "of the compacted model; latency: onnxruntime CPU, compacted ONNX, models interleaved, "
        f"median of {a['rounds']} rounds, {a['ort_threads'] or 'default'} onnxruntime "
        "thread(s). FLOPs ×: dense FLOPs / compacted FLOPs (the ideal "
        "speed-up); b1 ×, b32 ×: measured speed-up over the dense ONNX at batch 1 and 32. "
        "Removed by: share of the removed weights in whole channels / rows / columns / single "
        "entries.",
    ]
    recs, lat = result["records"], result["latency"]
    reused = sorted({r["reused_from"] for r in recs if r.get("reused_from")})
    if reused:  # resumed from records of an earlier run in the same --work folder
        lines.append(
            "† accuracy, parameters, FLOPs and removed-by of this row come from another run "
            "(its record's `reused_from`: "
            + " / ".join(reused)
            + "); its latency was measured in this run, interleaved with the others."
        )
    for arch in dict.fromkeys(r["arch"] for r in recs):
        mine = [r for r in recs if r["arch"] == arch]
        dense = [r for r in mine if r["method"] == "dense"]
        config = dense[0]["config"] if dense else {}
        width = f", base width {config['base_width']}" if "base_width" in config else ""
        dense_acc = mean([r["accuracy"] for r in dense])

        def ms(model, batch, seeds=None, arch=arch):
            return mean(
                [
                    x["ms"]
                    for x in lat
                    if x["arch"] == arch
                    and x["model"] == model
                    and x["batch"] == batch
                    and (seeds is None or x["seed"] in seeds)
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
            "| rate | method | seeds | accuracy | Δ vs dense | params | MFLOPs | FLOPs × | b1 ms "
            "| b1 × | b32 ms | b32 × | removed by ch / row / col / entry |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        rates = sorted({r["rate"] for r in mine if r["method"] != "dense"})
        methods = list(dict.fromkeys(r["method"] for r in mine if r["method"] != "dense"))
        for rate in rates:
            for method in methods:
                rs = [r for r in mine if r["method"] == method and r["rate"] == rate]
                if not rs:
                    continue
                acc = mean([r["accuracy"] for r in rs])
                mark = " †" if any(r.get("reused_from") for r in rs) else ""
                flops = mean([r["flops"] for r in rs])
                key = f"{method}@{rate:g}"
                # against the dense models of the same seeds: a method run on fewer seeds than
                # dense is compared with those seeds' dense accuracy, FLOPs and latency
                seeds = sorted({r["seed"] for r in rs})
                own = [r for r in dense if r["seed"] in seeds] or dense
                row_acc = mean([r["accuracy"] for r in own])
                row_flops = mean([r["flops"] for r in own])
                b1, b32 = ms(key, 1, seeds), ms(key, 32, seeds)
                r1, r32 = ms("dense", 1, seeds), ms("dense", 32, seeds)
                shares = {
                    g: mean([r["removed_by"][g] for r in rs])
                    for g in ("channels", "rows", "columns", "entries")
                }
                lines.append(
                    f"| {rate:g} | {method}{mark} | {','.join(map(str, seeds))} | {acc:.1%} | "
                    f"{(acc - row_acc) * 100:+.1f} pp | "
                    f"{mean([r['params'] for r in rs]):,.0f} | {flops / 1e6:,.2f} | "
                    f"{row_flops / flops:.2f} | {b1:.3f} | {r1 / b1:.2f} | {b32:.2f} | "
                    f"{r32 / b32:.2f} | "
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


def align_compare(args) -> dict:
    """Does ``--align N`` pay? Every pruned checkpoint of a finished run (``--work``) compacted
    as pruned and with ``align=N`` (the same logits: restored units keep their pruned weights),
    both exported to ONNX and timed interleaved on real test inputs at batch 1 and 32."""
    work = Path(args.work)
    records = json.loads((work / "records.json").read_text())
    n = args.align_compare
    started = machine()
    paths, facts = {}, {}
    by_arch = {}
    for r in records:
        if r["method"] == "dense":
            continue
        tag = run_stem(r["arch"], r["seed"], r["method"], r["rate"])
        pruned = work / f"{tag}.pt"
        if not pruned.exists():
            continue
        if r["arch"] not in by_arch:
            by_arch[r["arch"]] = load_data(r["data"], seed=r["seed"])
        data = by_arch[r["arch"]]
        model = load_checkpoint(pruned).build_model().eval()
        key = f"{r['arch']} {r['method']}@{r['rate']:g}"
        for align in (1, n):
            result = compact_model(model, data.x_val[: args.calibration], align=align)
            path = work / f"{tag}-align{align}.onnx"
            export_onnx(result.model, data.x_val[:2], path, force=True)
            paths[(key, align)] = path
            facts[(key, align)] = {
                "arch": r["arch"],
                "flops": count_flops(result.model, data.x_val.shape[2]),
                "params": result.params_after,
                "off_multiple": sum(
                    1
                    for name, s in result.spaces.items()
                    if s.role == "hidden" and s.width_after % n and s.width_after != s.width_before
                ),
                "restored": sum(
                    len(s.kept_notes.get("restored to align the width", []))
                    for s in result.spaces.values()
                ),
                "relative_diff": result.relative_diff,
            }
    rows = []
    for arch, data in by_arch.items():
        mine = {f"{k}|{a}": p for (k, a), p in paths.items() if facts[(k, a)]["arch"] == arch}
        for batch in (1, 32):
            medians = interleaved_latency_ms(
                mine, data.x_test[:batch].numpy(), args.rounds, args.ort_threads
            )
            for name, ms in medians.items():
                key, align = name.split("|")
                fact = facts[(key, int(align))]
                rows.append({"model": key, "align": int(align), "batch": batch, "ms": ms, **fact})
    return {"args": vars(args), "rows": rows, "machine": {"start": started, "end": machine()}}


def load_note(result: dict) -> list[str]:
    """The machine and its load average at the start and the end (runs older than the field:
    nothing)."""
    m = result.get("machine")
    if not m:
        return []
    start, end = m["start"], m["end"]
    return [
        f"Machine: {start['cpu']}, {start['cores']} cores, torch {start['torch']}; load average "
        f"(1/5/15 min) {'/'.join(f'{x:.2f}' for x in start['load_average'])} at the start, "
        f"{'/'.join(f'{x:.2f}' for x in end['load_average'])} at the end.",
        "",
    ]


def render_align_compare(result: dict) -> str:
    a = result["args"]
    n = a["align_compare"]
    lines = [
        f"Command: `python benchmarks/ctf.py --align-compare {n} --work WORK --rounds "
        f"{a['rounds']} --ort-threads {a['ort_threads']}` (WORK: the folder of a main run, which "
        "keeps every pruned checkpoint)",
        "",
        *load_note(result),
        f"Each pruned model compacted as pruned and with `--align {n}` (every width a multiple of "
        f"{n} or the dense width; the logits are the same), onnxruntime CPU, both interleaved "
        f"with the other models of the architecture, median of {a['rounds']} rounds. Off-"
        f"multiple: hidden spaces whose compacted width is no multiple of {n}; ×: as pruned ms / "
        "aligned ms (> 1: alignment is faster).",
        "",
        "| model | off-multiple | restored units | params | MFLOPs | b1 ms | b1 × | b32 ms | b32 × |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["model"], r["align"], r["batch"]): r for r in result["rows"]}
    for key in dict.fromkeys(r["model"] for r in result["rows"]):
        p1, a1 = by[(key, 1, 1)], by[(key, n, 1)]
        p32, a32 = by[(key, 1, 32)], by[(key, n, 32)]
        lines.append(
            f"| {key} | {p1['off_multiple']} → {a1['off_multiple']} | {a1['restored']} | "
            f"{p1['params']:,} → {a1['params']:,} | {p1['flops'] / 1e6:,.2f} → "
            f"{a1['flops'] / 1e6:,.2f} | {p1['ms']:.3f} → {a1['ms']:.3f} | "
            f"{p1['ms'] / a1['ms']:.2f} | {p32['ms']:.2f} → {a32['ms']:.2f} | "
            f"{p32['ms'] / a32['ms']:.2f} |"
        )
    ratios = {
        b: [by[(k, 1, b)]["ms"] / by[(k, n, b)]["ms"] for k, _, bb in by if bb == b]
        for b in (1, 32)
    }
    lines += [
        "",
        "Median × over all models: "
        + ", ".join(f"batch {b}: {statistics.median(v):.2f}" for b, v in ratios.items() if v),
    ]
    return "\n".join(lines) + "\n"


def profile(args) -> dict:
    """Where does onnxruntime spend the time of a compacted model? ``--profile`` names ONNX files
    of ``--work`` (stems, e.g. ``stgcn-s0-dense,stgcn-s0-ctf-0.9``); each runs ``--rounds`` times
    at batch 1 and 32 with onnxruntime's profiler, and the node times are summed per operator
    type (median run)."""
    import onnxruntime as ort

    work = Path(args.work)
    data = load_data(args.stgcn_data if "stgcn" in args.profile else args.gcn_data)
    rows, flops = [], []
    for stem in args.profile.split(","):
        path = work / f"{stem}.onnx"
        checkpoint = work / f"{stem}.pt"
        if checkpoint.exists():  # the FLOPs of the model exported: the checkpoint compacted
            model = load_checkpoint(checkpoint).build_model().eval()
            compacted = compact_model(model, data.x_val[:8]).model
            for op, count in flops_by_operator(compacted, data.x_test.shape[2]).items():
                flops.append({"model": stem, "op": op, "flops": count})
        for batch in (1, 32):
            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.intra_op_num_threads = max(args.ort_threads, 1)
            options.inter_op_num_threads = 1
            options.enable_profiling = True
            options.profile_file_prefix = str(work / f"profile-{stem}-b{batch}")
            session = ort.InferenceSession(
                read_onnx(path)[0], options, providers=["CPUExecutionProvider"]
            )
            name = session.get_inputs()[0].name
            x = np.ascontiguousarray(data.x_test[:batch].numpy(), dtype=np.float32)
            for _ in range(3 + args.rounds):
                session.run(None, {name: x})
            trace = json.loads(Path(session.end_profiling()).read_text())
            runs: list[dict[str, float]] = []
            for event in trace:
                if event.get("cat") == "Session" and event.get("name") == "model_run":
                    runs.append({})
                elif event.get("cat") == "Node" and runs and event["name"].endswith("_kernel_time"):
                    op = event.get("args", {}).get("op_name", "?")
                    runs[-1][op] = runs[-1].get(op, 0.0) + event["dur"] / 1000.0
            runs = runs[3:]  # warm-up
            ops = sorted({op for run in runs for op in run})
            for op in ops:
                rows.append(
                    {
                        "model": stem,
                        "batch": batch,
                        "op": op,
                        "ms": statistics.median(run.get(op, 0.0) for run in runs),
                    }
                )
    return {"args": vars(args), "rows": rows, "flops": flops}


def operator_table(models: list[str], ops: list[str], by: dict) -> list[str]:
    """A markdown table of ``by[(model, op)]`` with a total row; with two models (dense,
    compacted) a last column gives the first's value over the second's."""
    ratio = len(models) == 2

    def cells(values: list[float]) -> str:
        text = " | ".join(f"{v:.3f}" for v in values)
        if ratio:
            text += f" | {values[0] / values[1]:.2f}" if values[1] > 0 else " | –"
        return text

    lines = [
        "| op | " + " | ".join(models) + (" | × |" if ratio else " |"),
        "|---|" + "---|" * (len(models) + ratio),
    ]
    for op in ops:
        lines.append(f"| {op} | " + cells([by.get((m, op), 0.0) for m in models]) + " |")
    totals = [sum(v for (m, _), v in by.items() if m == model) for model in models]
    return [*lines, "| total | " + cells(totals) + " |"]


def render_profile(result: dict) -> str:
    a = result["args"]
    lines = [
        f"Command: `python benchmarks/ctf.py --profile {a['profile']} --work WORK --rounds "
        f"{a['rounds']} --ort-threads {a['ort_threads']}`",
        "",
        "onnxruntime CPU profiler: kernel time per operator type, median over "
        f"{a['rounds']} runs (ms); runs are not interleaved (a profile, not a latency benchmark).",
    ]
    for batch in (1, 32):
        mine = [r for r in result["rows"] if r["batch"] == batch]
        models = list(dict.fromkeys(r["model"] for r in mine))
        ops = sorted(
            {r["op"] for r in mine},
            key=lambda op: -max(r["ms"] for r in mine if r["op"] == op),
        )
        by = {(r["model"], r["op"]): r["ms"] for r in mine}
        lines += ["", f"Batch {batch}:", "", *operator_table(models, ops, by)]
    counted = result.get("flops", [])
    if counted:
        models = list(dict.fromkeys(r["model"] for r in counted))
        by = {(r["model"], r["op"]): r["flops"] / 1e6 for r in counted}
        ops = sorted({r["op"] for r in counted}, key=lambda op: -by.get((models[0], op), 0))
        lines += [
            "",
            "FLOPs of one sample per aten operator (MFLOPs; torch's FlopCounterMode on the "
            "compacted model, the count behind the FLOP ratio: `convolution` is ONNX's Conv and "
            "FusedConv, `bmm` its Einsum, `addmm` its Gemm):",
            "",
            *operator_table(models, ops, by),
        ]
    return "\n".join(lines) + "\n"


def combine(paths: list[str]) -> dict:
    """One result from runs on different architectures (run side by side): each architecture's
    settings come from the run that measured it."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    args = dict(parts[0]["args"])
    for part in parts:
        a = part["args"]
        archs = a["archs"].split(",")
        if "gcn" in archs:
            args.update({k: a[k] for k in ("gcn_data", "gcn_epochs", "finetune")})
        if "stgcn" in archs:
            keys = ("stgcn_data", "stgcn_width", "stgcn_epochs")
            args.update(
                {k: a[k] for k in keys}, stgcn_finetune=a["stgcn_finetune"] or a["finetune"]
            )
    args["archs"] = ",".join(p["args"]["archs"] for p in parts)
    args["combine"] = ",".join(paths)
    return {
        "args": args,
        "parts": [p["args"] for p in parts],
        "records": [r for p in parts for r in p["records"]],
        "latency": [x for p in parts for x in p["latency"]],
    }


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
        "--align-compare",
        type=int,
        default=0,
        help="instead: time the pruned models of --work compacted as pruned and with --align N",
    )
    parser.add_argument(
        "--import-work",
        default=None,
        help="comma-separated --work folders of side-by-side runs: add their results first",
    )
    parser.add_argument(
        "--measure-only",
        action="store_true",
        help="prune nothing: time and report the results already in --work",
    )
    parser.add_argument(
        "--profile",
        default=None,
        help="instead: onnxruntime profile per operator of these ONNX stems of --work",
    )
    parser.add_argument(
        "--combine",
        default=None,
        help="instead: merge comma-separated result .json files (one per arch) into --out",
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
    if args.combine:
        result = combine(args.combine.split(","))
        out = Path(args.out)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(render(result))
        print(out.with_suffix(".md").read_text())
        return
    if args.profile:
        out = Path(args.out if args.out != str(RESULTS / "ctf") else RESULTS / "ctf_profile")
        result = profile(args)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(render_profile(result))
        print(out.with_suffix(".md").read_text())
        return
    if args.align_compare:
        out = Path(args.out if args.out != str(RESULTS / "ctf") else RESULTS / "ctf_align")
        result = align_compare(args)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(render_align_compare(result))
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
