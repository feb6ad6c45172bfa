"""Run every benchmark with the arguments that produced benchmarks/results/ (hours on 2 CPUs).

python benchmarks/run_all.py            # what `make bench` runs; rewrites benchmarks/results/
python benchmarks/run_all.py --quick    # smoke run of each script, results in a temporary folder
"""

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
TRAINING = ["--epochs", "150", "--finetune", "20"]


def runs(results: Path) -> list[list]:
    return [
        ["tcp_vs_mp.py", "--datasets", "synthetic:hands", *TRAINING, "--out", results / "tcp_vs_mp_hands"],
        ["tcp_vs_mp.py", "--datasets", "synthetic:sbu", *TRAINING, "--out", results / "tcp_vs_mp_sbu"],
        [
            "tcp_vs_mp.py", "--datasets", "synthetic:hands", "--seeds", "0",
            "--methods", "structured,tcp", "--rates", "0.9,0.95,0.99", *TRAINING,
            "--out", results / "structured_vs_tcp_hands",
        ],
        ["tcp_ablations.py", "--out", results / "tcp_ablations"],
        ["export_sizes.py", "--out", results / "export_sizes"],
        ["zoo.py", "--out", results / "zoo"],
        ["fuzz_loaders.py", "--out", results / "fuzz_loaders"],
        ["run.py", "--out", results / "run"],  # gcnshrink beside its peers, all parts
    ]  # fmt: skip


if __name__ == "__main__":
    extra = sys.argv[1:]
    results = (
        Path(tempfile.mkdtemp(prefix="gcnshrink-bench-"))
        if "--quick" in extra
        else HERE / "results"
    )
    for script, *args in runs(results):
        command = [sys.executable, str(HERE / script), *map(str, args), *extra]
        print("==", " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True)
    print(f"results in {results}")
