"""benchmarks/run.py, the side-by-side benchmark, in its smallest configuration (``--smoke``): every
part runs and writes its JSON and Markdown, so a change that breaks the harness fails here and not
hours into a full run. Figures are not checked: they are measurements (docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_writes_every_part(tmp_path):
    stem = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", "--out", str(stem)],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(stem.with_suffix(".json").read_text())
    summary = stem.with_suffix(".md").read_text()

    peers = ["torch-prune"]
    if importlib.util.find_spec("torch_pruning") is not None:
        peers.append("torch-pruning")
    assert result["settings"]["peers"] == peers
    # one record per method and peer at the rate, each with an accuracy or a recorded failure
    cells = {r["method"]: r for r in result["accuracy"] if r["rate"] == 0.9}
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
