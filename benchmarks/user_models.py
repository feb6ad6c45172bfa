"""A user's own GCN (``--arch PACKAGE.MODULE:CALLABLE``): deriving the unit graph, and a sweep.

Two measurements:

1. For every zoo model at its ``tiny_config()`` and at its default (published) config: whether the
   unit graph derived by tracing (one forward pass of 1 sample × 16 frames) equals the declared
   one, and how long the derivation takes.
2. For the three user models of tests/test_tracing.py (a Shift-GCN-like shift graph convolution,
   an InfoGCN-like self-attention GCN, a split/concat branch block), imported by name as a user
   would (``--arch test_tracing:ShiftGCN``): ``gcnshrink sweep`` from a seeded initialisation on
   ``synthetic:sbu`` with ``mp`` and ``tcp`` at ``--rates`` (default 0.5, 0.9) and ``--epochs``
   (default 3) of masked fine-tuning: test accuracy (selected on validation), parameters after
   compaction, the logit check of compaction. The dense row is the untrained initialisation.
   This is the run that covers the slow test ``test_cli_sweep_takes_the_users_model``.

    nice -n 10 python benchmarks/user_models.py                # both parts
    nice -n 10 python benchmarks/user_models.py --part zoo     # only the derivations
    python benchmarks/user_models.py --render                  # the tables of the last run

Writes benchmarks/results/user_models.json and .md. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "user_models"
USER_MODELS = {
    "shift (Shift-GCN-like)": "test_tracing:ShiftGCN",
    "attention (InfoGCN-like)": "test_tracing:InfoAttentionGCN",
    "split/concat": "test_tracing:SplitConcatGCN",
}


def zoo_part() -> list[dict]:
    from gcnshrink.graph.tracing import derive_unit_graph, graph_differences
    from gcnshrink.models import available_models, create_model, model_class

    rows = []
    for arch in available_models():
        for size, config in (("tiny", model_class(arch).tiny_config()), ("default", None)):
            if config is None:
                config = {"layout": "ntu25", "num_classes": 60}
            torch.manual_seed(0)
            model = create_model(arch, **config).eval()
            x = model.example_input(1, 16)
            start = time.perf_counter()
            derived = derive_unit_graph(model, x)
            seconds = time.perf_counter() - start
            differences = graph_differences(derived, model.unit_graph())
            rows.append(
                {
                    "arch": arch,
                    "config": size,
                    "params": sum(p.numel() for p in model.parameters()),
                    "spaces": len(derived.spaces),
                    "equal": not differences,
                    "differences": differences[:3],
                    "seconds": round(seconds, 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def user_part(rates: str, epochs: int) -> list[dict]:
    sys.path.insert(0, str(ROOT / "tests"))
    import test_tracing

    rows = []
    data = "synthetic:sbu"
    for label, spec in USER_MODELS.items():
        folder = Path(tempfile.mkdtemp(prefix="user_models_"))
        factory = getattr(test_tracing, spec.split(":")[1])
        torch.manual_seed(0)
        torch.save(factory(num_classes=8).state_dict(), folder / "init.pth")
        command = [
            sys.executable, "-m", "gcnshrink", "sweep", str(folder / "init.pth"),
            "--arch", spec, "--arch-config", '{"num_classes": 8}', "--layout", "sbu15",
            "--data", data, "--methods", "mp,tcp", "--rates", rates, "--epochs", str(epochs),
            "--output", str(folder / "sweep"),
        ]  # fmt: skip
        env = {"PYTHONPATH": str(ROOT / "tests"), "PATH": "/usr/bin:/bin"}
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            rows.append({"model": label, "error": done.stderr.strip()[-500:]})
            print(json.dumps(rows[-1]), flush=True)
            continue
        results = json.loads((folder / "sweep" / "results.json").read_text())
        for record in [results["dense"], *results["records"]]:
            rows.append(
                {
                    "model": label,
                    "method": record["method"],
                    "rate": record["rate"],
                    "accuracy": round(record["accuracy"], 4),
                    "params": record["params"],
                    "nonzero": record["nonzero"],
                    "dead_units": record.get("dead_units"),
                    "compaction_relative_diff": record.get("compaction_relative_diff"),
                    "sweep_seconds": round(seconds, 1),
                    "command": shlex.join(command[2:]).replace(str(folder), "TMP"),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def render(results: dict) -> str:
    lines = ["# A user's own GCN: derived unit graphs and a sweep", ""]
    lines += [f"Command: `{results['command']}`; machine: {results['machine']['cpu']}, "
              f"load {results['machine']['uptime']}.", ""]  # fmt: skip
    if results.get("zoo"):
        lines += ["| zoo model | config | params | spaces | derived = declared | seconds |",
                  "|---|---|---:|---:|---|---:|"]  # fmt: skip
        for r in results["zoo"]:
            same = "yes" if r["equal"] else "no: " + "; ".join(r["differences"])
            lines.append(
                f"| {r['arch']} | {r['config']} | {r['params']:,} | {r['spaces']} | {same} | "
                f"{r['seconds']} |"
            )
        lines.append("")
    if results.get("user"):
        lines += ["| user model | method | rate | test accuracy | params after compaction | "
                  "nonzero | compaction logit diff |", "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in results["user"]:
            if "error" in r:
                lines.append(f"| {r['model']} | error: {r['error']} | | | | | |")
                continue
            lines.append(
                f"| {r['model']} | {r['method']} | {r['rate']} | {r['accuracy']:.1%} | "
                f"{r['params']:,} | {r['nonzero']:,} | {r['compaction_relative_diff']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("zoo", "user", "both"), default="both")
    parser.add_argument("--rates", default="0.5,0.9")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--render", action="store_true")
    args = parser.parse_args()
    json_path, md_path = OUT.with_suffix(".json"), OUT.with_suffix(".md")
    if args.render:
        md_path.write_text(render(json.loads(json_path.read_text())))
        return
    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import machine

    results = {
        "command": "python benchmarks/user_models.py " + shlex.join(sys.argv[1:]),
        "machine": machine(),
    }
    if args.part in ("zoo", "both"):
        results["zoo"] = zoo_part()
    if args.part in ("user", "both"):
        results["user"] = user_part(args.rates, args.epochs)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    md_path.write_text(render(results))
    print(md_path.read_text())


if __name__ == "__main__":
    main()
