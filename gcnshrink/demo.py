"""``gcnshrink demo``: the whole pipeline on the built-in hand-gesture data, in a few minutes.

Train the default ``gcn`` on ``synthetic:hands``; prune it with ``tcp`` and, for comparison, ``mp``
at the same rate and fine-tune budget; compact and export the ``tcp`` model (sparse safetensors and
verified ONNX); write the accuracy-versus-size report. Everything lands in one folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from gcnshrink import api
from gcnshrink.arguments import check_int
from gcnshrink.checkpoint import save_checkpoint
from gcnshrink.data import load_data
from gcnshrink.errors import GcnshrinkError
from gcnshrink.files import check_folder_writable
from gcnshrink.pruning.budget import check_rate
from gcnshrink.train import TrainConfig

DEMO_DATA = "synthetic:hands"


def run_demo(
    out: Path, *, epochs: int, finetune_epochs: int, rate: float, force: bool, console: Console
) -> dict:
    out = Path(out)
    # every refusal comes before the folder is created and before minutes of training
    check_int("--epochs", epochs, 1)
    check_int("--finetune-epochs", finetune_epochs, 0)
    check_rate(rate)
    if out.exists() and not out.is_dir():
        raise GcnshrinkError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise GcnshrinkError(f"{out} is not empty; pass --force to reuse it")
    check_folder_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(DEMO_DATA)
    console.print(f"[bold]1/4 train[/] gcn on {data.summary()}")
    dense_path = out / "dense.pt"
    ckpt, summary = api.train(data, "gcn", config=TrainConfig(epochs=epochs))
    save_checkpoint(ckpt, dense_path, force=True)
    console.print(
        f"    dense: {summary['params']:,} params, test accuracy {summary['accuracy']:.2%} -> {dense_path}"
    )

    console.print(
        f"[bold]2/4 prune[/] tcp and mp at rate {rate:g} ({finetune_epochs} fine-tune epochs each), measured"
    )
    sweep_dir = out / "sweep"
    paths = api.sweep(
        dense_path,
        DEMO_DATA,
        sweep_dir,
        methods=["mp", "tcp"],
        rates=[rate],
        epochs=finetune_epochs,
        seeds=[0],
    )

    tcp_path = sweep_dir / "cells" / f"tcp-r{rate:g}-s0.pt"
    console.print(
        f"[bold]3/4 export[/] {tcp_path} (compacted, sparse safetensors + ONNX checked by onnxruntime)"
    )
    export = api.export(tcp_path, out / "export", data=data, onnx=True, sparse=True, force=True)
    for item in export["files"]:
        console.print(f"    {item['path']}: {item['bytes']:,} bytes  {item.get('note', '')}")

    console.print("[bold]4/4 report[/]")
    # the cells' own JSON: it also holds the topology before compaction, which results.py skips
    results = json.loads(Path(paths["results"]).read_text())
    dense = results["dense"]
    console.print(
        f"    dense: accuracy {dense['accuracy']:.2%}, {dense['nonzero']:,} nonzero, {dense['bytes_sparse']:,} sparse bytes"
    )
    for rec in results["records"]:
        console.print(
            f"    {rec['method']:>4} @ {rec['rate']:g}: accuracy {rec['accuracy']:.2%}, {rec['nonzero']:,} nonzero, "
            f"{rec['bytes_sparse']:,} sparse bytes, inconsistent connections before compaction {rec['inconsistent_connections']}"
        )
    for name, path in paths.items():
        console.print(f"    {name}: {path}")
    return {"dense": dense_path, "export": out / "export", **paths}
