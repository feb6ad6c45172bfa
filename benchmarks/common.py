"""Helpers shared by the benchmark scripts (imported as ``common``: each script runs with
benchmarks/ first on sys.path)."""

from __future__ import annotations

import math
import os
import platform
import random
import statistics
import subprocess
import time
from collections.abc import Callable, Hashable
from pathlib import Path

import torch


def fmt(values: list[float]) -> str:
    """Accuracies as ``mean ± std`` in percent (one value: itself; none: ``-``)."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1%}"
    return f"{statistics.mean(values):.1%} ± {statistics.stdev(values):.1%}"


def epochs_for_steps(steps: int, samples: int, batch_size: int = 64) -> int:
    """Whole epochs that give at least ``steps`` optimizer steps on ``samples`` training samples:
    a fine-tune budget in steps is the same on datasets of different sizes."""
    return math.ceil(steps / math.ceil(samples / batch_size))


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


def onnx_runner(path: Path, batch: int, threads: int = 0):
    """gcnshrink's onnxruntime runner (``gcnshrink.onnx_export.OnnxRunner``), its session rebuilt
    with ``threads`` intra-op threads (0: onnxruntime's default, one per core): on a shared
    machine, idle threads that spin waiting for work make the timings of small models noisy."""
    import onnxruntime as ort

    from gcnshrink.onnx_export import OnnxRunner, read_onnx

    out = OnnxRunner(path, batch_size=batch)
    if threads:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        out.session = ort.InferenceSession(
            read_onnx(path)[0], options, providers=["CPUExecutionProvider"]
        )
    return out


def round_robin_ms(
    calls: dict[Hashable, Callable[[], object]],
    rounds: int,
    warmup: int,
    shuffle_seed: int | None = None,
) -> dict[Hashable, float]:
    """Median wall time (ms) of each call, the calls timed *interleaved*: every round runs each
    call once, so every call sees the same machine load. The order rotates from round to round,
    or, with ``shuffle_seed``, is shuffled every round by a generator seeded with it. The first
    ``warmup`` rounds are not timed."""
    keys = list(calls)
    times: dict[Hashable, list[float]] = {key: [] for key in keys}
    order = random.Random(shuffle_seed)
    for i in range(warmup + rounds):
        if shuffle_seed is None:
            shift = i % len(keys)
            turn = keys[shift:] + keys[:shift]
        else:
            turn = order.sample(keys, len(keys))
        for key in turn:
            start = time.perf_counter()
            calls[key]()
            if i >= warmup:
                times[key].append((time.perf_counter() - start) * 1000.0)
    return {key: statistics.median(values) for key, values in times.items()}
