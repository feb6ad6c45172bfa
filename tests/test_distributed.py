"""``torchrun -m gcnshrink prune``: two CPU processes (gloo) give the single-process result with the
same global batch, in the single-process file format, written once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

TINY = "synthetic:hands?train=120&test=60"


@pytest.fixture(scope="module")
def dense_without_dropout(tmp_path_factory, cli):
    """Dropout draws different masks for a sample in one process and in two (each rank has its own
    stream); without it, the two runs compute the same thing up to summation order."""
    path = tmp_path_factory.mktemp("ddp") / "dense.pt"
    result = cli(
        "train", "--data", TINY, "--epochs", "3", "--batch-size", "16", "--set", "dropout=0",
        "-o", path, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return path


def test_two_processes_match_one_with_the_same_global_batch(dense_without_dropout, cli, tmp_path):
    args = [
        "prune", dense_without_dropout, "--data", TINY, "--method", "tcp", "--rate", "0.9",
        "--epochs", "2", "--batch-size", "32", "--json",
    ]  # fmt: skip
    single = cli(*args, "-o", tmp_path / "single.pt")
    assert single.exit_code == 0, single.output
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launched = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "gcnshrink", *map(str, args), "-o", str(tmp_path / "ddp.pt"),
        ],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-3000:]
    # rank 0 alone printed the summary and wrote the file
    summary = json.loads(launched.stdout)
    assert summary["output"] == str(tmp_path / "ddp.pt")
    one = torch.load(tmp_path / "single.pt", weights_only=True)
    two = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert one.keys() == two.keys() and one["format"] == two["format"]
    assert one["state_dict"].keys() == two["state_dict"].keys()
    for key, mask in one["masks"].items():
        assert torch.equal(mask, two["masks"][key]), key
    for key, value in one["state_dict"].items():
        assert torch.allclose(value.float(), two["state_dict"][key].float(), atol=1e-3), key
    single_summary = json.loads(single.stdout)
    assert abs(summary["accuracy"] - single_summary["accuracy"]) <= 1 / 60 + 1e-9
    assert summary["realized_rate"] == single_summary["realized_rate"]
