"""Bytes and latency after pruning + compaction, for ``gcn`` and ``stgcn`` at rates 0.9 and 0.99.

For each model: train briefly on built-in data (the weights' values matter little for sizes, the
masks do), prune with each method (tcp, and structured for comparison), then measure

- bytes of the dense checkpoint's tensors as safetensors (dense), of the compacted model (compact),
  of the compacted model in sparse safetensors (sparse), gzip -9 of the compacted dense file (gzip),
  and the bound: kept values plus the cheaper index encoding (bitmask or CSR), per tensor;
- onnxruntime latency of one sample, dense ONNX vs compacted ONNX (median of repeated runs).

    python benchmarks/export_sizes.py            # gcn on synthetic:hands, stgcn (base 64) on synthetic:sbu
    python benchmarks/export_sizes.py --quick    # small stgcn, fewer epochs

Writes benchmarks/results/export_sizes.json and .md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from gcnshrink import api
from gcnshrink.compact import compact_model
from gcnshrink.data import load_data
from gcnshrink.export import export_model, exportable_state
from gcnshrink.onnx_export import export_onnx, onnx_latency_ms
from gcnshrink.sparse_format import save_tensors, size_report
from gcnshrink.train import TrainConfig

RESULTS = Path(__file__).parent / "results"


def measure(model, calibration, workdir: Path, tag: str) -> dict:
    state = exportable_state(model.state_dict())
    sizes = size_report(state)
    info = save_tensors(workdir / f"{tag}.sparse.safetensors", state, {}, sparse=True, force=True)
    onnx_path = workdir / f"{tag}.onnx"
    export_onnx(model, calibration[:2], onnx_path, force=True)
    sparse_onnx_path = workdir / f"{tag}.sparse.onnx"
    export_onnx(model, calibration[:2], sparse_onnx_path, sparse=True, force=True)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "nonzero": sum(int((p != 0).sum()) for p in model.parameters()),
        "bytes_dense": sizes["bytes_dense"],
        "bytes_sparse": sizes["bytes_sparse"],
        "bytes_gzip": sizes["bytes_gzip"],
        "bytes_bound": info["bytes_bound"],
        "bytes_onnx": onnx_path.stat().st_size,
        "bytes_onnx_sparse": sparse_onnx_path.stat().st_size,
        "latency_ms": onnx_latency_ms(onnx_path, calibration[:1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest for these models)"
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--methods",
        default="tcp,structured",
        help="structured (whole units) shows what a structured method buys in latency",
    )
    parser.add_argument("--out", default=str(RESULTS / "export_sizes"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [
        ("gcn", "synthetic:hands", {}, 20 if not args.quick else 5),
        (
            "stgcn",
            "synthetic:sbu",
            {"base_width": 16 if args.quick else 64},
            6 if not args.quick else 2,
        ),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for arch, spec, config, epochs in cases:
            data = load_data(spec)
            ckpt, dense_summary = api.train(
                data, arch, config=TrainConfig(epochs=epochs, progress=False), model_config=config
            )
            calibration = data.x_val[:32]
            dense_model = ckpt.build_model()
            dense = measure(dense_model, calibration, work, f"{arch}-dense")
            for method in args.methods.split(","):
                for rate in (0.9, 0.99):
                    outcome = api.prune(
                        ckpt,
                        data,
                        method=method,
                        rate=rate,
                        epochs=2 if not args.quick else 1,
                        progress=False,
                    )
                    tag = f"{arch}-{method}-{rate}"
                    result = compact_model(outcome.model, calibration)
                    compact = measure(result.model, calibration, work, tag)
                    # what `gcnshrink export --sparse` writes: the same tensors plus the metadata
                    # gcnshrink needs to rebuild the model (config, class names, provenance)
                    exported = export_model(
                        outcome.checkpoint, work / f"{tag}-export", calibration=calibration,
                        onnx=False, sparse=True,
                    )  # fmt: skip
                    compact["bytes_export_sparse"] = exported["files"][0]["bytes"]
                    row = {
                        "arch": arch,
                        "data": spec,
                        "config": config,
                        "method": method,
                        "rate": rate,
                        "accuracy": outcome.summary["accuracy"],
                        "dense_accuracy": dense_summary["accuracy"],
                        "dense": dense,
                        "compact": compact,
                        "compaction_relative_diff": result.relative_diff,
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    out.with_suffix(".md").write_text(render(rows, args.quick))
    print(out.with_suffix(".md").read_text())


def kb(n: int) -> str:
    return f"{n / 1000:,.1f} kB"


def render(rows: list[dict], quick: bool) -> str:
    lines = [
        f"Command: `python benchmarks/export_sizes.py{' --quick' if quick else ''}`",
        "",
        "| model | method | rate | params dense → compact | dense safetensors | compact safetensors | sparse | gzip (compact) | bound | sparse / bound | `export --sparse` file (/ bound) | ONNX dense → compact | ONNX compact, sparse initializers | latency dense → compact (1 sample) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d, c = r["dense"], r["compact"]
        name = r["arch"] + (
            f" (base {r['config']['base_width']})" if "base_width" in r["config"] else ""
        )
        lines.append(
            f"| {name} | {r['method']} | {r['rate']:g} | {d['params']:,} → {c['params']:,} | {kb(d['bytes_dense'])} | {kb(c['bytes_dense'])} | "
            f"{kb(c['bytes_sparse'])} | {kb(c['bytes_gzip'])} | {kb(c['bytes_bound'])} | {c['bytes_sparse'] / c['bytes_bound']:.2f} | "
            f"{kb(c['bytes_export_sparse'])} ({c['bytes_export_sparse'] / c['bytes_bound']:.2f}) | "
            f"{kb(d['bytes_onnx'])} → {kb(c['bytes_onnx'])} | {kb(c['bytes_onnx_sparse'])} | {d['latency_ms']:.3f} → {c['latency_ms']:.3f} ms |"
        )
    lines += [
        "",
        "The sparse column holds the tensors alone, as the bound does; the `export --sparse` file adds gcnshrink's metadata (config, class names, provenance), which it needs to rebuild the model.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
