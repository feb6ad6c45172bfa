"""Helpers shared by the benchmark scripts (imported as ``common``: each script runs with
benchmarks/ first on sys.path)."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess

import torch


def fmt(values: list[float]) -> str:
    """Accuracies as ``mean ± std`` in percent (one value: itself; none: ``-``)."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1%}"
    return f"{statistics.mean(values):.1%} ± {statistics.stdev(values):.1%}"


def machine() -> dict:
    """What the numbers were measured on: CPU, cores, torch, load average (``uptime``)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        uptime = ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_average": list(os.getloadavg()),
        "uptime": uptime,
    }
