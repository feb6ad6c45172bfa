"""Training throughput (samples/s) of the full-size ST-GCN on NTU-sized input, dense and under each
pruning method, in one process and in two (torchrun, gloo), and on a GPU when there is one.

    python benchmarks/throughput.py                 # the committed configuration
    python benchmarks/throughput.py --quick         # a smoke run (small width, few steps)
    python benchmarks/throughput.py --render        # rewrite the .md from the .json

Input: V=25 joints (ntu25), M=2 persons, T=64 frames, 60 classes, random values (throughput does
not depend on them). Each configuration trains ``--warmup`` steps, then the median time of
``--steps`` steps of the training loop (forward, loss, backward, Adam, the method's on_step and
loss term) gives samples/s over the *global* batch. Two processes split each global batch between
them (the --batch-size is the global batch): on a 2-core machine each process has one core, so
this shows the cost of distribution more than a gain. The machine's load average (``uptime``)
before and after the run is recorded with the figures: on a shared machine they are contended.
Writes benchmarks/results/throughput.json and .md. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from gcnshrink.data.dataset import SkeletonData
from gcnshrink.layouts import Layout, get_layout
from gcnshrink.models import create_model
from gcnshrink.pruning import PruneSpec, available_methods, create_method
from gcnshrink.train import MethodHooks, TrainConfig, TrainingLoop

RESULTS = Path(__file__).parent / "results"
METHODS = ("dense", "mp", "tcp", "ctf", "mrmp")


def ntu_data(batch: int, steps: int, frames: int) -> SkeletonData:
    layout = get_layout("ntu25")
    layout = Layout(layout.name, layout.num_joints, layout.edges, layout.center, persons=2)
    n = batch * steps
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, frames, 25, 2, generator=generator)
    y = torch.randint(0, 60, (n,), generator=generator)
    names = [f"class{i}" for i in range(60)]
    return SkeletonData(x, y, x[:2], y[:2], x[:2], y[:2], layout, names, "random:ntu")


def worker(args) -> dict:
    """One configuration in this process (one rank of a torchrun launch, or alone)."""
    torch.set_num_threads(1)
    data = ntu_data(args.batch_size, args.warmup + args.steps, args.frames)
    torch.manual_seed(0)
    model = create_model(
        "stgcn", num_classes=60, layout=data.layout, base_width=args.base_width
    ).train()
    callbacks = []
    method = None
    if args.method != "dense":
        rates = (0.5, 0.9) if args.method == "mrmp" else (0.9,)
        method = create_method(args.method, PruneSpec(rates, allow_collapse=True))
        method.attach(model, model.unit_graph())
        callbacks.append(MethodHooks(method))
    config = TrainConfig(
        epochs=1, batch_size=args.batch_size, seed=0, progress=False, device=args.device,
        precision=args.precision,
    )  # fmt: skip
    loop = TrainingLoop(model, data, config, method, callbacks)
    times = []
    original = loop.optimizer.step

    def timed_step(*a, **k):  # the end of a training step: synchronise and read the clock
        out = original(*a, **k)
        if loop.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
        return out

    loop.optimizer.step = timed_step
    start = time.perf_counter()
    loop.train_epoch()
    marks = [start, *times][args.warmup :]
    step_seconds = statistics.median(b - a for a, b in zip(marks, marks[1:], strict=False))
    return {"samples_per_s": args.batch_size / step_seconds, "step_seconds": step_seconds}


def launch(args, method: str, processes: int, precision: str, device: str) -> dict:
    command = [
        str(Path(__file__).resolve()), "--worker", "--method", method, "--precision", precision,
        "--device", device, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
        "--warmup", str(args.warmup), "--frames", str(args.frames),
        "--base-width", str(args.base_width),
    ]  # fmt: skip
    if processes > 1:
        command = [
            "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
            *command,
        ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, *command], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="dense")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--base-width", type=int, default=64)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "throughput"))
    parser.add_argument(
        "--render", action="store_true", help="rewrite OUT.md from OUT.json, running nothing"
    )
    args = parser.parse_args()
    if args.render:
        out = Path(args.out)
        out.with_suffix(".md").write_text(render(json.loads(out.with_suffix(".json").read_text())))
        return
    if args.worker:
        result = worker(args)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result), flush=True)
        return
    if args.quick:
        args.steps, args.warmup, args.base_width, args.frames = 3, 1, 16, 32
    methods = [m for m in METHODS if m == "dense" or m in available_methods()]
    runs = [("cpu", "fp32", 1), ("cpu", "fp32", 2)]
    if torch.cuda.is_available():
        runs += [("cuda", precision, 1) for precision in ("fp32", "bf16", "fp16")]
    load_before = os.getloadavg()
    rows = []
    for device, precision, processes in runs:
        for method in methods:
            result = launch(args, method, processes, precision, device)
            rows.append(
                {"method": method, "device": device, "precision": precision,
                 "processes": processes, **result}
            )  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    load = {"before": list(load_before), "after": list(os.getloadavg())}
    setup = {k: getattr(args, k) for k in ("batch_size", "steps", "warmup", "frames", "base_width")}
    command = " ".join(["python benchmarks/throughput.py", *sys.argv[1:]])
    document = {
        "command": command, "machine": machine(), "args": setup, "load_average": load,
        "rows": rows,
    }  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(document, indent=1) + "\n")
    out.with_suffix(".md").write_text(render(document))
    print(render(document))


def machine() -> str:
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{os.cpu_count()} CPU cores{gpu}"


def render(document: dict) -> str:
    """The Markdown table of a results document (``--render`` rewrites it from the .json)."""
    setup, load = document["args"], document["load_average"]
    shown_load = ", ".join(
        f"{when} {' / '.join(f'{v:.1f}' for v in values)}" for when, values in load.items()
    )
    # files written before the machine was recorded were all made on this machine
    lines = [
        f"Command: `{document['command']}` ({document.get('machine') or machine()})",
        "",
        f"Load average (1 / 5 / 15 min) {shown_load}: the machine is shared, so these figures are "
        "contended and only comparable within this table.",
        "",
        f"stgcn base width {setup['base_width']}, input (N, 3, {setup['frames']}, 25, 2), global "
        f"batch {setup['batch_size']}; median of {setup['steps']} steps after {setup['warmup']} "
        'warm-up steps. "vs dense": samples/s relative to dense training with the same device, '
        "precision and process count.",
        "",
        "| method | device | precision | processes | samples/s | s/step | vs dense |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = document["rows"]
    for row in rows:
        if "samples_per_s" not in row:
            lines.append(
                f"| {row['method']} | {row['device']} | {row['precision']} | {row['processes']} "
                f"| {row['error']} | | |"
            )
            continue
        same = ("device", "precision", "processes")
        dense = next(
            (r for r in rows if r["method"] == "dense" and all(r[k] == row[k] for k in same)), {}
        )
        relative = (
            f"{row['samples_per_s'] / dense['samples_per_s']:.2f}×"
            if "samples_per_s" in dense
            else ""
        )
        lines.append(
            f"| {row['method']} | {row['device']} | {row['precision']} | {row['processes']} "
            f"| {row['samples_per_s']:.3g} | {row['step_seconds']:.1f} | {relative} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
