"""The ``gcnshrink`` command line, end to end on a tiny synthetic dataset.

One dense model is trained, pruned and exported once per session (tests/conftest.py); the tests
here check what users see: help texts, JSON outputs, exit codes, one-line errors, and that every
file the tools write evaluates to the same accuracy as the model it came from.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest
import torch
from typer.main import get_command

from gcnshrink.checkpoint import load_checkpoint
from gcnshrink.cli import app

COMMANDS = sorted(get_command(app).commands)


def ok_json(result) -> dict:
    assert result.exit_code == 0, result.output[-2000:]
    assert "Traceback" not in result.output
    obj = json.loads(result.stdout)  # the whole of stdout is one JSON object
    assert isinstance(obj, dict)
    return obj


def assert_bad_input(result) -> str:
    """Exit code 2, exactly one line on stderr, no traceback anywhere; returns that line."""
    assert result.exit_code == 2, (
        f"exit {result.exit_code}: {result.output[-2000:]!r} ({result.exception!r})"
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert result.stdout.strip() == ""
    return lines[0]


def accuracy(cli, model, spec) -> float:
    return ok_json(cli("eval", model, "--data", spec, "--json"))["accuracy"]


# ---------------------------------------------------------------------------- help
def test_commands_are_all_there():
    assert {
        "train",
        "eval",
        "inspect",
        "prune",
        "compact",
        "export",
        "sweep",
        "report",
        "gate",
        "demo",
    } <= set(COMMANDS)


def test_python_m_gcnshrink_help_runs_in_a_real_process():
    env = {**os.environ, "COLUMNS": "120", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "gcnshrink", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Example:" in proc.stdout
    for name in COMMANDS:
        assert name in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command, cli):
    result = cli(command, "--help")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert f"Example: gcnshrink {command}" in text
    assert "Usage:" in text


# ---------------------------------------------------------------------------- train / eval / inspect
def test_train_writes_a_loadable_checkpoint(trained_gcn, tiny_spec, tiny_data):
    path, summary = trained_gcn
    assert path.is_file()
    ckpt = load_checkpoint(path)
    assert ckpt.arch == "gcn"
    assert ckpt.config["num_classes"] == tiny_data.num_classes
    assert ckpt.class_names == tiny_data.class_names
    assert ckpt.provenance["data"] == tiny_spec
    assert ckpt.pruning is None
    assert 0.0 <= summary["accuracy"] <= 1.0
    assert summary["output"] == str(path)
    assert summary["params"] == sum(p.numel() for p in ckpt.build_model().parameters())
    assert 1 <= summary["best_epoch"] <= summary["epochs"]
    # no temporary files next to the output
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_train_stgcn_with_config_override(cli, tmp_path, tiny_spec):
    out = tmp_path / "st.pt"
    summary = ok_json(
        cli(
            "train",
            "--data",
            tiny_spec,
            "--arch",
            "stgcn",
            "--set",
            "base_width=4",
            "--epochs",
            "1",
            "-o",
            out,
            "--json",
        )
    )
    ckpt = load_checkpoint(out)
    assert ckpt.arch == "stgcn"
    assert ckpt.config["base_width"] == 4
    assert summary["params"] == sum(p.numel() for p in ckpt.build_model().parameters())


def test_eval_json_is_one_object_with_accuracy(cli, trained_gcn, tiny_spec, tiny_data):
    result = ok_json(cli("eval", trained_gcn[0], "--data", tiny_spec, "--json"))
    assert 0.0 <= result["accuracy"] <= 1.0
    assert 0.0 <= result["mean_class_accuracy"] <= 1.0
    assert result["samples"] == len(tiny_data.y_test)
    # the number train reported is the number eval measures
    assert result["accuracy"] == pytest.approx(trained_gcn[1]["accuracy"])


def test_eval_without_json_prints_the_accuracy(cli, trained_gcn, tiny_spec):
    result = cli("eval", trained_gcn[0], "--data", tiny_spec)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout and "%" in result.stdout


def test_inspect_json_reports_sizes_and_topology(cli, pruned_gcn):
    path, _ = pruned_gcn
    info = ok_json(cli("inspect", path, "--json"))
    for key in (
        "params",
        "nonzero",
        "flops",
        "bytes_dense",
        "bytes_sparse",
        "bytes_gzip",
        "inconsistent_connections",
        "dead_units",
    ):
        assert isinstance(info[key], int) and info[key] >= 0, key
    model = load_checkpoint(path).build_model()
    assert info["params"] == sum(p.numel() for p in model.parameters())
    assert info["nonzero"] == sum(int((p != 0).sum()) for p in model.parameters())
    assert info["nonzero"] < info["params"]  # it is pruned
    assert info["flops"] > 0
    assert info["bytes_sparse"] < info["bytes_dense"]
    assert info["bytes"] == path.stat().st_size


def test_inspect_table_output(cli, trained_gcn):
    result = cli("inspect", trained_gcn[0])
    assert result.exit_code == 0, result.output
    for fact in ("params", "nonzero", "FLOPs / sample", "bytes sparse", "dead units"):
        assert fact in result.stdout, fact


# ---------------------------------------------------------------------------- prune
def test_prune_json_hits_the_rate(pruned_gcn, trained_gcn, cli, tiny_spec):
    path, s = pruned_gcn
    for key in ("method", "rate", "realized_rate", "accuracy", "dense_accuracy"):
        assert key in s, key
    assert s["method"] == "tcp"
    assert s["rate"] == 0.9
    assert 0.0 <= s["accuracy"] <= 1.0
    assert s["dense_accuracy"] == pytest.approx(accuracy(cli, trained_gcn[0], tiny_spec))
    model = load_checkpoint(path).build_model()
    in_scope = sum(
        dict(model.named_parameters())[b.name].numel() for b in model.unit_graph().prunable
    )
    assert abs(s["realized_rate"] - s["rate"]) * in_scope <= 1.0 + 1e-6
    # the checkpoint's weights really are that sparse
    params = dict(model.named_parameters())
    zeros = sum(int((params[b.name] == 0).sum()) for b in model.unit_graph().prunable)
    assert abs(zeros - round(0.9 * in_scope)) <= 1
    assert load_checkpoint(path).pruning["method"] == "tcp"


# ---------------------------------------------------------------------------- bad input
class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


BAD_INPUTS = {
    "eval-missing-model": lambda m, spec, out: ["eval", "missing.pt", "--data", spec],
    "inspect-missing-model": lambda m, spec, out: ["inspect", "missing.pt"],
    "prune-missing-model": lambda m, spec, out: ["prune", "missing.pt", "--data", spec, "-o", out],
    "compact-missing-model": lambda m, spec, out: [
        "compact",
        "missing.pt",
        "--data",
        spec,
        "-o",
        out,
    ],
    "export-missing-model": lambda m, spec, out: [
        "export",
        "missing.pt",
        "--data",
        spec,
        "-o",
        out,
    ],
    "gate-missing-model": lambda m, spec, out: ["gate", "missing.pt", "--max-bytes", "1MB"],
    "compact-align-0": lambda m, spec, out: [
        "compact",
        m,
        "--data",
        spec,
        "-o",
        out,
        "--align",
        "0",
    ],
    "unknown-method": lambda m, spec, out: [
        "prune",
        m,
        "--data",
        spec,
        "-o",
        out,
        "--method",
        "nope",
    ],
    "rate-0": lambda m, spec, out: ["prune", m, "--data", spec, "-o", out, "--rate", "0"],
    "rate-1.5": lambda m, spec, out: ["prune", m, "--data", spec, "-o", out, "--rate", "1.5"],
    "rate-nan": lambda m, spec, out: ["prune", m, "--data", spec, "-o", out, "--rate", "nan"],
    "unknown-synthetic": lambda m, spec, out: ["eval", m, "--data", "synthetic:nope"],
    "missing-data-file": lambda m, spec, out: ["eval", m, "--data", "no/such/data.npz"],
    "unknown-data-option": lambda m, spec, out: ["eval", m, "--data", "synthetic:hands?bogus=1"],
    "wrong-data-for-model": lambda m, spec, out: [
        "eval",
        m,
        "--data",
        "synthetic:sbu?train=16&test=8",
    ],
    "unknown-arch": lambda m, spec, out: ["train", "--data", spec, "--arch", "msg3d", "-o", out],
    "bad-set": lambda m, spec, out: ["train", "--data", spec, "--set", "heads", "-o", out],
    "zero-epochs": lambda m, spec, out: ["train", "--data", spec, "--epochs", "0", "-o", out],
    # empty lists and entries in prune: tests/test_hardening.py (the docs/security.md table)
    "eval-rates-not-numbers": lambda m, spec, out: ["eval", m, "--data", spec, "--rates", "0.5,x"],
    "sweep-seeds-not-integers": lambda m, spec, out: [
        "sweep",
        m,
        "--data",
        spec,
        "--methods",
        "mp",
        "--rates",
        "0.5",
        "--seeds",
        "0,1.5",
        "-o",
        out,
    ],
    "sweep-no-methods": lambda m, spec, out: [
        "sweep",
        m,
        "--data",
        spec,
        "--methods",
        " , ",
        "--rates",
        "0.5",
        "-o",
        out,
    ],
    "empty-model-file": lambda m, spec, out: ["eval", "empty.pt", "--data", spec],
    "text-model-file": lambda m, spec, out: ["inspect", "notes.pt"],
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(case, cli, trained_gcn, tiny_spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    out = tmp_path / "out.pt"
    line = assert_bad_input(cli(*BAD_INPUTS[case](trained_gcn[0], tiny_spec, out)))
    assert line.startswith("error:")
    assert not out.exists()


@pytest.mark.parametrize(
    "command",
    [
        lambda m, spec, out: ["train", "--data", spec, "--epochs", "1", "-o", out],
        lambda m, spec, out: ["prune", m, "--data", spec, "--epochs", "1", "-o", out],
        lambda m, spec, out: ["compact", m, "--data", spec, "-o", out],
    ],
    ids=["train", "prune", "compact"],
)
def test_existing_output_needs_force_and_stays_unchanged(
    command, cli, trained_gcn, tiny_spec, tmp_path
):
    out = tmp_path / "taken.pt"
    out.write_bytes(b"somebody's results")
    line = assert_bad_input(cli(*command(trained_gcn[0], tiny_spec, out)))
    assert "--force" in line
    assert out.read_bytes() == b"somebody's results"


def test_export_refuses_existing_files_without_force(cli, exported_gcn, pruned_gcn, tiny_spec):
    before = {p.name: p.read_bytes() for p in exported_gcn.iterdir()}
    assert_bad_input(
        cli("export", pruned_gcn[0], "--onnx", "--sparse", "--data", tiny_spec, "-o", exported_gcn)
    )
    assert {p.name: p.read_bytes() for p in exported_gcn.iterdir()} == before


@pytest.mark.parametrize("command", ["eval", "inspect", "prune", "compact"])
def test_malicious_pickle_is_refused_and_never_runs(command, cli, tiny_spec, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": RunsCode(marker)}, evil)
    args = {
        "eval": ["eval", evil, "--data", tiny_spec],
        "inspect": ["inspect", evil],
        "prune": ["prune", evil, "--data", tiny_spec, "-o", tmp_path / "p.pt"],
        "compact": ["compact", evil, "--data", tiny_spec, "-o", tmp_path / "c.pt"],
    }[command]
    line = assert_bad_input(cli(*args))
    assert "evil.pt" in line
    assert not marker.exists()


# ---------------------------------------------------------------------------- gate
def test_gate_exit_codes(cli, exported_gcn):
    model = exported_gcn / "model.sparse.safetensors"
    size = model.stat().st_size
    assert cli("gate", model, "--max-bytes", "100MB").exit_code == 0
    assert cli("gate", model, "--max-bytes", str(size)).exit_code == 0  # the limit is inclusive
    over = cli("gate", model, "--max-bytes", str(size - 1))
    assert over.exit_code == 1, over.output
    assert "Traceback" not in over.output
    assert cli("gate", model, "--max-bytes", "10").exit_code == 1
    assert cli("gate", model, "--max-bytes", "10", "--warn-only").exit_code == 0
    line = assert_bad_input(cli("gate", model, "--max-bytes", "abc"))
    assert "abc" in line


def test_gate_json_and_accuracy_budget(cli, exported_gcn, pruned_gcn, tiny_spec):
    model = exported_gcn / "model.sparse.safetensors"
    result = cli("gate", model, "--max-bytes", "10", "--json")
    assert result.exit_code == 1
    json.loads(result.stdout)
    acc = pruned_gcn[1]["accuracy"]
    assert (
        cli(
            "gate", model, "--data", tiny_spec, "--min-accuracy", f"{max(acc - 0.01, 0):.4f}"
        ).exit_code
        == 0
    )
    assert (
        cli(
            "gate", model, "--data", tiny_spec, "--min-accuracy", f"{min(acc + 0.01, 1):.4f}"
        ).exit_code
        == 1
    )


# ---------------------------------------------------------------------------- compact / export
def test_compact_keeps_the_accuracy(cli, pruned_gcn, tiny_spec, tmp_path):
    path, summary = pruned_gcn
    out = tmp_path / "compact.pt"
    result = cli("compact", path, "--data", tiny_spec, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    assert (
        accuracy(cli, out, tiny_spec)
        == accuracy(cli, path, tiny_spec)
        == pytest.approx(summary["accuracy"])
    )
    before = ok_json(cli("inspect", path, "--json"))
    after = ok_json(cli("inspect", out, "--json"))
    assert after["params"] < before["params"]  # the tcp model at 90 % has dead units to remove
    assert (
        after["dead_units"] < before["dead_units"]
    )  # (dead node x channel entries of the flatten may stay)
    # same predictions sample by sample, not just the same count of right ones
    data_x = load_data_x(tiny_spec)
    with torch.no_grad():
        a = load_checkpoint(path).build_model()(data_x).argmax(1)
        b = load_checkpoint(out).build_model()(data_x).argmax(1)
    assert torch.equal(a, b)


def load_data_x(spec):
    from gcnshrink.data import load_data

    return load_data(spec).x_test


def test_compact_uses_the_training_data_by_default(cli, pruned_gcn, tmp_path, tiny_spec):
    out = tmp_path / "c.pt"
    assert cli("compact", pruned_gcn[0], "-o", out).exit_code == 0
    assert accuracy(cli, out, tiny_spec) == accuracy(cli, pruned_gcn[0], tiny_spec)


def test_exported_files_evaluate_like_the_checkpoint(cli, exported_gcn, pruned_gcn, tiny_spec):
    files = sorted(p.name for p in exported_gcn.iterdir())
    assert {"model.onnx", "model.sparse.safetensors"} <= set(files)
    assert not [f for f in files if f.endswith(".tmp")]
    reference = accuracy(cli, pruned_gcn[0], tiny_spec)
    assert accuracy(cli, exported_gcn / "model.onnx", tiny_spec) == reference
    assert accuracy(cli, exported_gcn / "model.sparse.safetensors", tiny_spec) == reference
    onnx_info = ok_json(cli("inspect", exported_gcn / "model.onnx", "--json"))
    sparse_info = ok_json(cli("inspect", exported_gcn / "model.sparse.safetensors", "--json"))
    assert sparse_info["bytes"] < pruned_gcn[0].stat().st_size
    assert onnx_info["format"] == "onnx" and onnx_info["params"] > 0


def test_compact_json_reports_widths_and_the_logit_check(cli, pruned_gcn, tmp_path):
    out = tmp_path / "c2.pt"
    report = ok_json(cli("compact", pruned_gcn[0], "-o", out, "--json"))
    assert report["params_after"] < report["params_before"]
    assert report["relative_diff"] <= 1e-5
    assert report["spaces"]["hidden"]["width_after"] <= report["spaces"]["hidden"]["width_before"]
    assert report["output"] == str(out)


def test_compact_align_keeps_widths_at_multiples_and_the_predictions(
    cli, pruned_gcn, tiny_spec, tmp_path
):
    plain = ok_json(cli("compact", pruned_gcn[0], "-o", tmp_path / "plain.pt", "--json"))
    out = tmp_path / "aligned.pt"
    report = ok_json(cli("compact", pruned_gcn[0], "-o", out, "--align", "8", "--json"))
    assert report["relative_diff"] <= 1e-5
    for name in ("hidden", "block0.out", "block1.out"):
        space, before = report["spaces"][name], plain["spaces"][name]
        assert space["width_after"] % 8 == 0 or space["width_after"] == space["width_before"]
        assert space["width_after"] >= before["width_after"]
    assert report["params_after"] >= plain["params_after"]
    data_x = load_data_x(tiny_spec)
    with torch.no_grad():
        a = load_checkpoint(pruned_gcn[0]).build_model()(data_x).argmax(1)
        b = load_checkpoint(out).build_model()(data_x).argmax(1)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------- the Python API
def test_api_verbs_return_what_the_cli_prints(cli, pruned_gcn, exported_gcn, tiny_spec, tmp_path):
    from gcnshrink import api
    from gcnshrink.errors import GcnshrinkError

    path = pruned_gcn[0]
    assert api.evaluate(path, tiny_spec) == ok_json(
        cli("eval", path, "--data", tiny_spec, "--json")
    )
    inspected = json.loads(json.dumps(api.inspect(path), default=str))
    assert inspected == ok_json(cli("inspect", path, "--json"))
    assert [row["name"] for row in inspected["layers"]]

    compacted = api.compact(path, tiny_spec)
    assert compacted.summary["params_after"] < compacted.summary["params_before"]
    assert compacted.checkpoint.provenance["compacted_from"] == str(path)

    model = exported_gcn / "model.sparse.safetensors"
    run = api.gate(model, max_bytes=model.stat().st_size - 1, config_dir=tmp_path)
    assert run.exit_code == 1 and [c.name for c in run.checks] == ["bytes"]
    with pytest.raises(GcnshrinkError, match="no budgets"):
        api.gate(model, config_dir=tmp_path)


@pytest.mark.parametrize("name", ["x[/].pt", "x[bold]y:smile:.pt", "[red]a[/red].pt"])
def test_markup_in_a_path_is_printed_as_it_is(cli, tmp_path, name):
    """A file name with rich markup or an emoji code is bad input like any other: one line that
    names it literally and exit code 2, never a MarkupError traceback or a smiley."""
    result = cli("inspect", tmp_path / name)
    assert result.exit_code == 2, result.output
    assert f"{name}: no such file" in result.stderr
    assert "Traceback" not in result.output and "MarkupError" not in repr(result.exception)
