"""Run every benchmark (long on 2 CPUs): python benchmarks/run_all.py [--quick]."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent

if __name__ == "__main__":
    extra = sys.argv[1:]
    for script in ("tcp_vs_mp.py", "export_sizes.py"):
        print(f"== {script}", flush=True)
        subprocess.run([sys.executable, str(HERE / script), *extra], check=True)
