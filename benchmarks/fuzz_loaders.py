"""The long run of the loader fuzz test: thousands of byte-mutated files of every kind gcnshrink
reads (``.pt``, dense and sparse ``.safetensors``, ``.onnx``, ``.npz``, pyskl ``.pkl``, ST-GCN
and SBU folders), each either read or refused in one line (``gcnshrink.fuzz``).

    python benchmarks/fuzz_loaders.py                   # 500 mutants per kind, seeds 0 and 1
    python benchmarks/fuzz_loaders.py --cases 2000 --seeds 0,1,2,3
    python benchmarks/fuzz_loaders.py --quick           # 30 per kind, seed 0

Every case runs under an address-space cap (``--headroom-gb`` above what the process maps at
the start), so an allocation bomb shows up as an unclean MemoryError instead of the OOM killer.
Exits 1 if anything but a GcnshrinkError line came out, printing what reproduces it; writes
OUT.json and OUT.md (default benchmarks/results/fuzz_loaders).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from gcnshrink.fuzz import KINDS, fuzz

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=500, help="mutants per kind and seed")
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated file kinds")
    parser.add_argument("--headroom-gb", type=float, default=4.0, help="memory cap headroom")
    parser.add_argument("--out", type=Path, default=RESULTS / "fuzz_loaders", help="OUT.json/.md")
    parser.add_argument("--quick", action="store_true", help="30 mutants per kind, seed 0")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.quick:
        args.cases, args.seeds = 30, "0"
    torch.set_num_threads(1)
    kinds = [k for k in args.kinds.split(",") if k]
    rows, unclean, started = [], [], time.perf_counter()
    for seed in (int(s) for s in args.seeds.split(",") if s.strip()):
        with tempfile.TemporaryDirectory(prefix="gcnshrink-fuzz-") as tmp:
            report = fuzz(
                tmp, args.cases, seed, kinds, memory_headroom=int(args.headroom_gb * 2**30)
            )
        print(f"seed {seed}:\n{report.summary()}", flush=True)
        for kind, counts in report.counts.items():
            rows.append({"seed": seed, "kind": kind, **counts})
        unclean += report.unclean
    seconds = time.perf_counter() - started
    for line in unclean:
        print(f"UNCLEAN {line}")
    total = sum(r.get("read", 0) + r.get("refused", 0) + r.get("unclean", 0) for r in rows)
    print(f"{total} cases in {seconds:.0f} s: {len(unclean)} unclean")
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "cases_per_kind_and_seed": args.cases,
            "rows": rows,
            "unclean": unclean,
            "seconds": seconds,
            "torch": torch.__version__,
        }
        args.out.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
        lines = [
            "# Loader fuzzing (benchmarks/fuzz_loaders.py)",
            "",
            f"{total} byte-mutated files, {args.cases} per kind and seed, in {seconds:.0f} s; "
            f"{len(unclean)} ended in anything but a one-line refusal.",
            "",
            "| seed | kind | read | refused | unclean |",
            "|---|---|---|---|---|",
            *(
                f"| {r['seed']} | {r['kind']} | {r.get('read', 0)} | {r.get('refused', 0)} | "
                f"{r.get('unclean', 0)} |"
                for r in rows
            ),
        ]
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 1 if unclean else 0


if __name__ == "__main__":
    sys.exit(main())
