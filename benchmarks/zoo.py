"""The zoo at its published NTU-60 widths, pruned at 0.9 with ``tcp`` and ``mp``: size and speed.

For every architecture (CTR-GCN ``ctrgcn``, pyskl's STGCN++ ``pyskl_stgcn``, 2s-AGCN ``agcn`` and
MS-AAGCN ``aagcn``, each with base width 64 and ten blocks, as published for NTU-60) on inputs of
``synthetic:sbu``'s size (C = 3, T = 32 frames, V = 15 joints, M = 2 persons, in the NTU
(N, C, T, V, M) layout), this prunes the model at 0.9 with each method and measures, before and
after compaction: parameters, nonzero weights, FLOPs of one sample, dense and sparse safetensors
bytes, ONNX bytes and onnxruntime latency of one sample (one thread).

It is cheap on purpose: these models take ~25 s per training step of 32 samples on one core of
the shared 2-core machine. So the dense model is its seeded initialisation (not trained), and the
masked fine-tune is ``--epochs`` (default 1) epoch of one batch (``--train`` samples, default 10,
of which 20 % are held out for validation). Accuracies are therefore not measured; sizes, FLOPs
and latencies depend on which weights each method keeps and on what compaction removes. Before
compaction a pruned model has the dense model's shapes: its ONNX file and latency are the dense
ones (dense kernels, zeros stored), so they are measured once, on the dense model.

    nice -n 10 python benchmarks/zoo.py                      # the four architectures
    nice -n 10 python benchmarks/zoo.py --archs ctrgcn       # one
    python benchmarks/zoo.py --render                        # tables of the finished ones

Writes benchmarks/results/zoo.json and .md. Nothing here is asserted: it is a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from gcnshrink import api
from gcnshrink.checkpoint import Checkpoint
from gcnshrink.compact import compact_model
from gcnshrink.data import load_data
from gcnshrink.measure import measure_module
from gcnshrink.models import create_model

RESULTS = Path(__file__).parent / "results"
ARCHS = "ctrgcn,pyskl_stgcn,agcn,aagcn"
COLUMNS = ("params", "nonzero", "flops", "bytes_dense", "bytes_sparse", "bytes_onnx", "latency_ms")


def measure(model, example: torch.Tensor, latency: bool = True) -> dict:
    numbers = measure_module(model, frames=example.shape[2], latency=latency, example=example)
    return {key: numbers.get(key) for key in COLUMNS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=ARCHS)
    parser.add_argument("--methods", default="mp,tcp")
    parser.add_argument("--rate", type=float, default=0.9)
    parser.add_argument("--train", type=int, default=10, help="synthetic:sbu training samples")
    parser.add_argument("--epochs", type=int, default=1, help="fine-tune epochs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=str(RESULTS / "zoo"))
    parser.add_argument(
        "--render", action="store_true", help="write the tables from the finished architectures"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: pyskl_stgcn with tcp")
    args = parser.parse_args()
    if args.quick:
        args.archs, args.methods = "pyskl_stgcn", "tcp"
    torch.set_num_threads(args.threads)
    spec = f"synthetic:sbu?train={args.train}&test=8"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # one architecture at a time goes into the partial file: an interrupted run resumes there
    partial = out.with_suffix(".partial.json")
    records = json.loads(partial.read_text())["records"] if partial.exists() else []
    if args.render:
        finish(args, spec, out, records)
        return
    data = load_data(spec, seed=0)
    example = data.x_test[:2]
    calibration = torch.cat([data.x_val, data.x_train])  # compaction's logit check
    done = {r["arch"] for r in records}
    for arch in args.archs.split(","):
        if arch in done:
            continue
        arch_records = []
        start = time.perf_counter()
        torch.manual_seed(0)
        dense = create_model(
            arch, num_classes=data.num_classes, layout=data.layout, in_channels=data.in_channels
        ).eval()
        ckpt = Checkpoint.from_model(dense, data.class_names, {"seed": 0, "data": spec})
        base = {"arch": arch, "config": "published NTU-60 widths (base 64, ten blocks)"}
        dense_numbers = measure(dense, example)
        arch_records.append({**base, "method": "dense", "stage": "dense", **dense_numbers})
        print(f"{arch}: dense {arch_records[-1]}", flush=True)
        for method in args.methods.split(","):
            outcome = api.prune(
                ckpt,
                data,
                method=method,
                rate=args.rate,
                epochs=args.epochs,
                batch_size=args.train,
                seed=0,
                progress=False,
                allow_collapse=True,
            )
            s = outcome.summary
            pruned = {
                **base,
                "method": method,
                "rate": args.rate,
                "realized_rate": s["realized_rate"],
                "finetune_seconds": s["finetune_seconds"],
            }
            before = measure(outcome.model, example, latency=False)
            before.update(bytes_onnx=dense_numbers["bytes_onnx"], latency_ms=None)
            arch_records.append({**pruned, "stage": "pruned", **before})
            result = compact_model(outcome.model.eval(), calibration)
            arch_records.append(
                {
                    **pruned,
                    "stage": "compacted",
                    "compaction_relative_diff": result.relative_diff,
                    **measure(result.model, example),
                }
            )
            print(
                f"{arch}: {method} {arch_records[-2]}\n  compacted {arch_records[-1]}", flush=True
            )
        records += arch_records
        partial.write_text(json.dumps({"records": records}, indent=1) + "\n")
        print(f"{arch}: {time.perf_counter() - start:.0f} s", flush=True)
    finish(args, spec, out, records)
    partial.unlink(missing_ok=True)


def finish(args, spec: str, out: Path, records: list[dict]) -> None:
    result = {
        "args": vars(args),
        "data": spec,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average": list(os.getloadavg()),
            "torch": torch.__version__,
        },
        "records": records,
    }
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(render(result))
    print(out.with_suffix(".md").read_text())


def render(result: dict) -> str:
    args = result["args"]
    load = ", ".join(f"{x:.1f}" for x in result["machine"]["load_average"])
    lines = [
        "# The zoo pruned at 0.9: size and speed before and after compaction",
        "",
        "Made by `nice -n 10 python benchmarks/zoo.py"
        + (f" --archs {args['archs']}" if args["archs"] != ARCHS else "")
        + "`.",
        "",
        f"Data `{result['data']}` (C = 3, T = 32, V = 15, M = 2); every model at its published "
        "NTU-60 widths, dense = its seeded initialisation (not trained); masked fine-tune "
        f"{args['epochs']} epoch of one batch, so no accuracy is reported. FLOPs of one sample; "
        "latency: onnxruntime, one sample, one thread. Before compaction the ONNX graph is the "
        "dense one (same file size; latency not re-measured: the dense row's). Machine: "
        f"{result['machine']['cpus']} CPUs shared with other jobs (load average at the end: "
        f"{load}), so latencies are indicative.",
        "",
        "| arch | method | stage | params | nonzero | FLOPs | dense file | sparse file | ONNX file "
        "| latency ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["records"]:
        lines.append(
            f"| {r['arch']} | {r['method']} | {r['stage']} | {r['params']:,} | {r['nonzero']:,} "
            f"| {r['flops'] / 1e6:,.1f} M | {r['bytes_dense'] / 1e6:.2f} MB "
            f"| {r['bytes_sparse'] / 1e6:.2f} MB | {r['bytes_onnx'] / 1e6:.2f} MB "
            f"| {'(dense)' if r['latency_ms'] is None else format(r['latency_ms'], '.2f')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
