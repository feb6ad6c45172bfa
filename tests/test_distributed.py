"""``torchrun -m gcnshrink ...`` with two CPU processes (gloo): the single-process result with the
same global batch, in the single-process file format, written once; a failure on one rank ends the
run with its message and keeps the state, and ``--resume`` then gives the uninterrupted result;
``sweep`` trains every cell on both ranks with identical mask decisions (MRMP's rates, CTF's
annealing) and writes once. Each launch costs two interpreters, so the launches are shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

TINY = "synthetic:hands?train=120&test=60"
# a hang would be a bug: every launch ends well within this
LAUNCH_TIMEOUT = 600


def torchrun(*args, cwd, script: str | None = None) -> subprocess.CompletedProcess:
    """Two gloo processes running ``gcnshrink ARGS`` (or ``script`` with ARGS, which calls it)."""
    target = [str(script)] if script else ["-m", "gcnshrink"]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        *target, *map(str, args),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, env=env, cwd=cwd
    )


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


def prune_args(dense) -> list:
    return [
        "prune", dense, "--data", TINY, "--method", "tcp", "--rate", "0.9", "--epochs", "2",
        "--batch-size", "32", "--json",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def two_processes(dense_without_dropout, tmp_path_factory):
    """The uninterrupted 2-process prune: (its folder, its stdout)."""
    folder = tmp_path_factory.mktemp("ddp-run")
    launched = torchrun(*prune_args(dense_without_dropout), "-o", folder / "ddp.pt", cwd=folder)
    assert launched.returncode == 0, launched.stderr[-3000:]
    return folder, launched.stdout


def assert_same_checkpoint(one: dict, two: dict, atol: float) -> None:
    assert one.keys() == two.keys() and one["format"] == two["format"]
    assert one["state_dict"].keys() == two["state_dict"].keys()
    for key, mask in one["masks"].items():
        assert torch.equal(mask, two["masks"][key]), key
    for key, value in one["state_dict"].items():
        assert torch.allclose(value.float(), two["state_dict"][key].float(), atol=atol), key


def test_two_processes_match_one_with_the_same_global_batch(
    dense_without_dropout, two_processes, cli, tmp_path
):
    single = cli(*prune_args(dense_without_dropout), "-o", tmp_path / "single.pt")
    assert single.exit_code == 0, single.output
    folder, stdout = two_processes
    # rank 0 alone printed the summary and wrote the file
    summary = json.loads(stdout)
    assert summary["output"] == str(folder / "ddp.pt")
    assert sorted(p.name for p in folder.iterdir()) == ["ddp.pt"]  # and no state left behind
    one = torch.load(tmp_path / "single.pt", weights_only=True)
    two = torch.load(folder / "ddp.pt", weights_only=True)
    assert_same_checkpoint(one, two, atol=1e-3)
    single_summary = json.loads(single.stdout)
    assert abs(summary["accuracy"] - single_summary["accuracy"]) <= 1 / 60 + 1e-9
    assert summary["realized_rate"] == single_summary["realized_rate"]


# Runs the gcnshrink command given as arguments, with a failure on rank 1 in its second epoch (at
# its second step: rank 0 has written the state of epoch 1 by then, since the first step of epoch 2
# needed it).
FAILING_RANK = """
import os, sys
from gcnshrink import cli, train
from gcnshrink.errors import GcnshrinkError

step = train.MethodHooks.on_step_start

def failing(self, loop, progress):
    if os.environ["RANK"] == "1" and loop.step == loop.steps_per_epoch + 1:
        raise GcnshrinkError("the disk of this node went away")
    step(self, loop, progress)

train.MethodHooks.on_step_start = failing
sys.argv = ["gcnshrink", *sys.argv[1:]]
cli.main()
"""


def test_a_failure_on_one_rank_ends_the_run_and_resume_gives_the_uninterrupted_result(
    dense_without_dropout, two_processes, tmp_path
):
    script = tmp_path / "failing_rank.py"
    script.write_text(textwrap.dedent(FAILING_RANK))
    output, state = tmp_path / "out.pt", tmp_path / "out.state.pt"
    args = [*prune_args(dense_without_dropout), "-o", output]
    failed = torchrun(*args, cwd=tmp_path, script=script)  # no hang: the timeout would raise
    assert failed.returncode != 0
    # the failing rank's message, once; rank 0 stopped (by the backend's error or by torchrun's
    # SIGTERM) and said how to continue
    assert failed.stderr.count("error (rank 1): the disk of this node went away") == 1
    assert f"the run's state after epoch 1 is in {state}" in failed.stderr
    assert f"torchrun command with --resume {state}" in failed.stderr
    assert not output.exists()
    assert state.is_file()  # kept: the failure was not this run's input
    assert torch.load(state, weights_only=True)["epoch"] == 1

    resumed = torchrun(*args, "--resume", state, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    folder, stdout = two_processes
    uninterrupted = torch.load(folder / "ddp.pt", weights_only=True)
    assert_same_checkpoint(uninterrupted, torch.load(output, weights_only=True), atol=0)
    summary, expected = json.loads(resumed.stdout), json.loads(stdout)
    assert summary["accuracy"] == expected["accuracy"]
    assert summary["best_epoch"] == expected["best_epoch"]
    assert not state.exists()  # done with: success removes it


# Runs the gcnshrink command given as arguments; every fine-tune of every rank leaves what its
# method decided at each step and the masks it selected in rank<R>-<n>.pt. ONNX export and timing
# (rank 0's measurements, most of a sweep's time on a tiny model) are skipped.
RECORDING = """
import os, sys, torch
from gcnshrink import cli, measure, train

measure.onnx_size_and_latency = lambda model, example, workdir=None: {"bytes_onnx": 1, "latency_ms": 1.0}

step, run, runs = train.MethodHooks.on_step_start, train.TrainingLoop.run, []

def recording(self, loop, progress):
    step(self, loop, progress)
    m = self.method
    if m.name == "mrmp":  # the step's rate and the sampled rates it distils into
        decided = (m.current_rate, m.controller.temperature, m.student_rates())
    else:  # ctf: the annealed temperature and whether the masks are frozen
        decided = (m.controller.temperature, m.controller.frozen is not None)
    m.__dict__.setdefault("decided", []).append(decided)

def recorded(self):
    result = run(self)
    log = {"method": self.method.name, "decided": self.method.decided, "masks": result.masks}
    torch.save(log, f"rank{os.environ['RANK']}-{len(runs)}.pt")
    runs.append(log)
    return result

train.MethodHooks.on_step_start, train.TrainingLoop.run = recording, recorded
sys.argv = ["gcnshrink", *sys.argv[1:]]
cli.main()
"""


def test_sweep_trains_every_cell_on_every_rank_with_the_same_decisions(
    dense_without_dropout, tmp_path
):
    script = tmp_path / "recording.py"
    script.write_text(textwrap.dedent(RECORDING))
    launched = torchrun(
        "sweep", dense_without_dropout, "--data", TINY, "--methods", "mrmp,ctf",
        "--rates", "0.5,0.9", "--epochs", "1", "-o", tmp_path / "sweep",
        cwd=tmp_path, script=script,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-3000:]
    # mrmp trains once for both rates, ctf once per rate: three fine-tunes, on both ranks
    logs = [[torch.load(tmp_path / f"rank{r}-{n}.pt") for n in range(3)] for r in (0, 1)]
    assert not (tmp_path / "rank0-3.pt").exists() and not (tmp_path / "rank1-3.pt").exists()
    assert [log["method"] for log in logs[0]] == ["mrmp", "ctf", "ctf"]
    for on_rank0, on_rank1 in zip(*logs, strict=True):
        assert on_rank0["decided"] == on_rank1["decided"]  # every step's decision
        assert on_rank0["masks"].keys() == on_rank1["masks"].keys()
        for rate, masks in on_rank0["masks"].items():
            for name, mask in masks.items():
                assert torch.equal(mask, on_rank1["masks"][rate][name]), (rate, name)
    # the mrmp run sampled more than one rate to distil into, and ctf froze its masks
    assert len({tuple(d[2]) for d in logs[0][0]["decided"]}) > 1
    assert logs[0][1]["decided"][-1][1] is True
    # rank 0 alone wrote and printed: one line per written file, every cell present
    printed = [line.split(":")[0] for line in launched.stdout.splitlines() if ": " in line]
    assert printed.count("results") == 1
    results = json.loads((tmp_path / "sweep" / "results.json").read_text())
    cells = {(c["method"], c["rate"]) for c in results["records"]}
    assert cells >= {("mrmp", 0.5), ("mrmp", 0.9), ("ctf", 0.5), ("ctf", 0.9)}


def test_only_a_lost_peer_becomes_one_line(monkeypatch):
    """The backend's error after another rank stopped is one line; a bug stays a traceback."""
    from gcnshrink import distributed
    from gcnshrink.errors import PeerFailure

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    gloo = "[pair.cc:553] Connection closed by peer [127.0.0.1]:8363. This is typically caused by"
    with pytest.raises(PeerFailure, match="another process of this torchrun run stopped"):
        with distributed.peer_failures():
            raise RuntimeError(gloo)
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied"):
        with distributed.peer_failures():
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: nothing is translated
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        with distributed.peer_failures():
            raise RuntimeError(gloo)
