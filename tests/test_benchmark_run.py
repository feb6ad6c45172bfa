"""benchmarks/run.py, the side-by-side benchmark, in its smallest configuration (``--smoke``, two
seeds): every part runs and writes its JSON and Markdown, so a change that breaks the harness fails
here and not hours into a full run. The smoke runs with ``--jobs 2`` (each seed in a worker
process) and its records are compared with the same units run in one process. Figures are not
checked: they are measurements (docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def smoke(folder: Path, *options: str) -> tuple[dict, str]:
    stem = folder / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", *options, "--out", str(stem)],
        capture_output=True, text=True, env=env, cwd=folder, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(stem.with_suffix(".json").read_text()), stem.with_suffix(".md").read_text()


@pytest.fixture(scope="module")
def smoke_jobs_2(tmp_path_factory):
    return smoke(tmp_path_factory.mktemp("jobs2"), "--jobs", "2")


def test_smoke_run_writes_every_part(smoke_jobs_2):
    result, summary = smoke_jobs_2

    peers = ["torch-prune"]
    if importlib.util.find_spec("torch_pruning") is not None:
        peers.append("torch-pruning")
    assert result["settings"]["peers"] == peers
    # per seed, one record per method and peer at the rate, with an accuracy or a recorded failure
    for seed in result["settings"]["seeds"]:
        cells = {
            r["method"]: r for r in result["accuracy"] if r["rate"] == 0.9 and r["seed"] == seed
        }
        assert set(cells) == {*result["methods"], *peers}
        for method, record in cells.items():
            assert "accuracy" in record or "error" in record, method
            assert 0.0 <= record.get("accuracy", 0.0) <= 1.0
        # gcnshrink's methods land on the rate exactly; torch's global L1 too
        for method in [*result["methods"], "torch-prune"]:
            assert abs(cells[method]["realized_rate"] - 0.9) < 1e-3, method
    if "torch-pruning" in peers:  # each configuration tried has an outcome, the last one ran
        attempts = result["torch_pruning_attempts"][0]["attempts"]
        assert all(a["outcome"] for a in attempts)
    # deployment: the dense row first (its speed-up is 1), a latency per batch size
    deploy = {r["method"]: r for r in result["deploy"]}
    assert list(deploy)[0] == "dense" and deploy["dense"]["speedup_b1"] == 1.0
    for row in deploy.values():
        assert row["latency_ms_b1"] > 0 and row["latency_ms_b4"] > 0
    assert deploy["mp"]["bytes_sparse"] < deploy["mp"]["bytes_dense"]
    peer = deploy["torch-prune"]  # masks make the state dict larger; prune.remove gives it back
    assert peer["bytes_state_dict_with_masks"] > peer["bytes_state_dict_removed"]
    assert [r["method"] for r in result["scale"]][0] == "dense"
    assert all("samples_per_s" in r for r in result["scale"]), result["scale"]
    for heading in ("### Accuracy", "### Cost of pruning", "### Deployment", "### Scale"):
        assert heading in summary
    assert "python benchmarks/run.py --smoke" in summary


def test_jobs_merge_the_units_back_in_order(smoke_jobs_2, tmp_path):
    """``--jobs 2`` ran each seed in its own worker: the records come back in (dataset, seed)
    order, the same as the units run one after the other in one process, and the first unit's
    models reached the deployment part."""
    result, summary = smoke_jobs_2
    assert result["settings"]["jobs"] == 2 and result["settings"]["seeds"] == [0, 1]
    assert "2 worker processes" in result["settings"]["timing_note"]
    assert "python benchmarks/run.py --smoke --jobs 2" in summary and "With `--jobs 2`" in summary
    alone, _ = smoke(tmp_path, "--parts", "accuracy")  # --jobs 1: the same units in this process
    assert alone["settings"]["jobs"] == 1

    def units(records):
        return [(r["data"], r["seed"]) for r in records]

    assert units(result["accuracy"]) == units(alone["accuracy"])
    assert units(result["accuracy"]) == sorted(units(result["accuracy"]))
    assert units(result["timing"]) == units(alone["timing"])
    assert units(result["torch_pruning_attempts"]) == units(alone["torch_pruning_attempts"])

    def same(record):  # everything but the timings; the seeds make the rest repeat
        return {k: v for k, v in record.items() if k != "finetune_seconds"}

    assert [same(r) for r in result["accuracy"]] == [same(r) for r in alone["accuracy"]]
    assert result["torch_pruning_attempts"] == alone["torch_pruning_attempts"]
    # the deployment models came back from the worker of seed 0: every row measured
    deploy = [r["method"] for r in result["deploy"]]
    assert deploy == result["settings"]["deploy_methods"]
    for row in result["deploy"]:
        assert all(row[f"latency_ms_b{b}"] > 0 for b in result["settings"]["latency_batches"])


def test_mrmp_merge_refuses_runs_from_different_dense_models(tmp_path):
    """benchmarks/mrmp.py --merge pairs records seed by seed: runs whose dense models differ (made
    on another machine) are refused in one line, and nothing is written."""

    def run(name: str, method: str, dense: float) -> str:
        records = [
            {"data": "synthetic:sbu", "seed": 0, "method": "dense", "rate": 0.0, "accuracy": dense},
            {"data": "synthetic:sbu", "seed": 0, "method": method, "rate": 0.9, "accuracy": 0.9},
        ]
        args = {"finetune": 20, "mrmp_finetune": None, "methods": method}
        path = tmp_path / name
        path.write_text(json.dumps({"args": args, "records": records}))
        return str(path)

    merged = tmp_path / "merged"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "mrmp.py"), "--merge",
         run("a.json", "mrmp", 0.925), run("b.json", "srmp", 0.93125), "--out", str(merged)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "synthetic:sbu seed 0: the runs start from different dense models (test accuracy "
        "0.9250, 0.9313); rerun them on one machine"
    ]
    assert not list(tmp_path.glob("merged*"))
