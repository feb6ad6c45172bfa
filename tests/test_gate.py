"""The model gate: unit parsing, config files, evaluation, exit codes and CI output."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from gcnshrink import gate, quantities
from gcnshrink.errors import GcnshrinkError
from gcnshrink.gate import Budgets

# ------------------------------------------------------------------ units (gcnshrink.quantities)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64KB", 64_000),
        ("64kb", 64_000),
        ("1.5MB", 1_500_000),
        ("2 MiB", 2 * 1024 * 1024),
        ("1.5KiB", 1536),
        ("800k", 800_000),
        ("123", 123),
        ("123B", 123),
        ("0.29KB", 290),  # exact decimal arithmetic: a float would give 289
        ("1e3", 1000),
        ("1GB", 10**9),
        (64_000, 64_000),  # a TOML integer
    ],
)
def test_parse_size_accepts_common_spellings(text, expected):
    assert quantities.parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["", "abc", "-1", "-64KB", "64XB", "nan", "inf", "1e99", "64 K B", True, float("nan")]
)
def test_parse_size_refuses_garbage(text):
    with pytest.raises(GcnshrinkError) as info:
        quantities.parse_size(text, "--max-bytes")
    assert str(info.value).startswith("--max-bytes")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("50k", 50_000), ("1.2M", 1_200_000), ("3G", 3 * 10**9), ("20000", 20_000), (7, 7)],
)
def test_parse_count(text, expected):
    assert quantities.parse_count(text) == expected


@pytest.mark.parametrize("text", ["12MB", "-3", "x", "1.2.3"])
def test_parse_count_refuses_garbage(text):
    with pytest.raises(GcnshrinkError):
        quantities.parse_count(text)


def test_parse_fraction_and_latency():
    assert quantities.parse_fraction("0.8") == pytest.approx(0.8)
    assert quantities.parse_fraction("80%") == pytest.approx(0.8)
    assert quantities.parse_fraction("1pp") == pytest.approx(0.01)
    with pytest.raises(GcnshrinkError, match="0.8 or 80%"):
        quantities.parse_fraction("80")  # almost surely meant 80 %, but a gate must not guess
    with pytest.raises(GcnshrinkError):
        quantities.parse_fraction("120%")
    assert quantities.parse_latency_ms("12") == 12.0
    assert quantities.parse_latency_ms("0.5s") == 500.0
    assert quantities.parse_latency_ms("800us") == pytest.approx(0.8)


def test_human_formatting():
    assert quantities.format_bytes(64_000) == "64 KB"
    assert quantities.format_bytes(1_500_000) == "1.5 MB"
    assert quantities.format_bytes(812) == "812 B"
    assert quantities.format_count(20_500) == "20.5k"
    assert quantities.format_count(1_200_000) == "1.2M"
    assert quantities.format_count(None) == "—"


# ---------------------------------------------------------------------------------- config


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_budgets_from_pyproject(tmp_path):
    write(
        tmp_path / "pyproject.toml",
        """
[project]
name = "demo"

[tool.gcnshrink.gate]
model = "models/pruned.safetensors"
data = "data/val.npz"
max_bytes = "64KB"
max_nonzero = "20k"
min_accuracy = 0.8
""",
    )
    config = gate.load_config(tmp_path)
    assert config.source == tmp_path / "pyproject.toml"
    (target,) = config.targets
    assert target.model == tmp_path / "models/pruned.safetensors"
    assert target.data == tmp_path / "data/val.npz"
    assert target.budgets == Budgets(max_bytes=64_000, max_nonzero=20_000, min_accuracy=0.8)


def test_gcnshrink_toml_wins_over_pyproject(tmp_path):
    write(tmp_path / "pyproject.toml", '[tool.gcnshrink.gate]\nmax_bytes = "1MB"\n')
    write(tmp_path / "gcnshrink.toml", '[gate]\nmax_bytes = "2MB"\n')
    config = gate.load_config(tmp_path)
    assert config.source == tmp_path / "gcnshrink.toml"
    assert config.targets[0].budgets.max_bytes == 2_000_000


def test_gcnshrink_toml_without_gate_falls_back_to_pyproject(tmp_path):
    write(tmp_path / "gcnshrink.toml", "[sweep]\nrates = [0.5]\n")
    write(tmp_path / "pyproject.toml", '[tool.gcnshrink.gate]\nmax_bytes = "1MB"\n')
    assert gate.load_config(tmp_path).source == tmp_path / "pyproject.toml"


def test_no_config_is_empty(tmp_path):
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n')
    config = gate.load_config(tmp_path)
    assert config.source is None and config.targets == []


def test_several_models_with_shared_defaults(tmp_path):
    write(
        tmp_path / "gcnshrink.toml",
        """
[gate]
warn_only = true
min_accuracy = "80%"

[gate.models.joint]
model = "joint.safetensors"
max_bytes = "64KB"

[gate.models.bone]
model = "bone.safetensors"
max_bytes = "48KiB"
min_accuracy = 0.75
""",
    )
    config = gate.load_config(tmp_path)
    by_name = {t.name: t for t in config.targets}
    assert set(by_name) == {"joint", "bone"}
    assert by_name["joint"].budgets == Budgets(max_bytes=64_000, min_accuracy=0.8, warn_only=True)
    assert by_name["bone"].budgets == Budgets(
        max_bytes=48 * 1024, min_accuracy=0.75, warn_only=True
    )
    assert by_name["bone"].model == tmp_path / "bone.safetensors"


@pytest.mark.parametrize(
    ("file_name", "text", "message"),
    [
        ("pyproject.toml", '[tool.gcnshrink.gate]\nmax_byte = "64KB"\n', "'max_byte'"),
        ("gcnshrink.toml", '[gate]\nmax_bytes = "64KB"\nwarnonly = true\n', "'warnonly'"),
        (
            "gcnshrink.toml",
            '[gate.models.a]\nmodel = "a.pt"\nmin_acc = 0.8\n',
            "[gate.models.a]: unknown key 'min_acc'",
        ),
    ],
)
def test_unknown_keys_are_refused(tmp_path, file_name, text, message):
    write(tmp_path / file_name, text)
    with pytest.raises(GcnshrinkError, match="unknown key") as info:
        gate.load_config(tmp_path)
    assert message in str(info.value)


def test_unknown_key_suggests_the_right_one(tmp_path):
    write(tmp_path / "gcnshrink.toml", '[gate]\nmax_byte = "64KB"\n')
    with pytest.raises(GcnshrinkError, match="did you mean 'max_bytes'"):
        gate.load_config(tmp_path)


@pytest.mark.parametrize(
    "text",
    [
        '[gate]\nmax_bytes = "64 potatoes"\n',
        "[gate]\nwarn_only = 1\n",
        "[gate]\nmax_bytes = \n",  # invalid TOML
        '[gate.models.a]\nmax_bytes = "1MB"\n',  # model missing
        '[gate]\nmodel = "x"\n[gate.models.a]\nmodel = "a"\n',  # both forms
    ],
)
def test_bad_config_values_are_one_line_errors(tmp_path, text):
    write(tmp_path / "gcnshrink.toml", text)
    with pytest.raises(GcnshrinkError) as info:
        gate.load_config(tmp_path)
    assert "\n" not in str(info.value)


def test_flags_override_config(tmp_path):
    write(
        tmp_path / "gcnshrink.toml", '[gate]\nmodel = "m.pt"\nmax_bytes = "1MB"\nwarn_only = true\n'
    )
    config = gate.load_config(tmp_path)
    flags = gate.budgets_from_options(max_bytes="64KB", max_params="50k")
    (target,) = gate.resolve_targets(config, model=None, overrides=flags)
    assert target.model == tmp_path / "m.pt"
    # a flag wins; warn_only not given on the command line keeps the config's value
    assert target.budgets == Budgets(max_bytes=64_000, max_params=50_000, warn_only=True)


def test_flag_errors_name_the_flag():
    with pytest.raises(GcnshrinkError, match="^--max-nonzero: "):
        gate.budgets_from_options(max_nonzero="lots")


def test_resolve_targets_without_model_or_budgets(tmp_path):
    empty = gate.load_config(tmp_path)
    with pytest.raises(GcnshrinkError, match="no model given"):
        gate.resolve_targets(empty, model=None, overrides=Budgets())
    with pytest.raises(GcnshrinkError, match="no budgets"):
        gate.resolve_targets(empty, model="m.pt", overrides=Budgets())
    (target,) = gate.resolve_targets(empty, "m.pt", Budgets(max_bytes=10), data="val.npz")
    assert target.model == Path("m.pt") and target.data == Path("val.npz")


def test_resolve_targets_picks_the_named_model_from_several(tmp_path, monkeypatch):
    write(
        tmp_path / "gcnshrink.toml",
        '[gate.models.a]\nmodel = "a.pt"\nmax_bytes = 1\n[gate.models.b]\nmodel = "b.pt"\n'
        "max_bytes = 2\n",
    )
    monkeypatch.chdir(tmp_path)
    config = gate.load_config(".")
    assert [t.name for t in gate.resolve_targets(config, None, Budgets())] == ["a", "b"]
    (only_b,) = gate.resolve_targets(config, "b.pt", Budgets())
    assert only_b.budgets.max_bytes == 2


# ------------------------------------------------------------------------------ evaluation

METRICS = {
    "params": 40_000,
    "nonzero": 18_000,
    "flops": 90_000_000,
    "bytes": 70_000,
    "latency_ms": 1.5,
    "accuracy": 0.84,
}


def test_all_within_budget_exits_zero():
    budgets = Budgets(max_bytes=100_000, max_nonzero=50_000, min_accuracy=0.8)
    checks = gate.evaluate(METRICS, budgets)
    assert [c.name for c in checks] == ["bytes", "nonzero", "accuracy"]
    assert all(c.passed and c.severity == "ok" for c in checks)
    assert gate.exit_code(checks, budgets.warn_only) == 0


def test_over_budget_exits_one_and_warn_only_exits_zero():
    checks = gate.evaluate(METRICS, Budgets(max_bytes=64_000, max_nonzero=50_000))
    failed = [c for c in checks if not c.passed]
    assert [c.name for c in failed] == ["bytes"]
    assert failed[0].severity == "error"
    assert gate.exit_code(checks, warn_only=False) == 1

    warn_budgets = Budgets(max_bytes=64_000, warn_only=True)
    warn_checks = gate.evaluate(METRICS, warn_budgets)
    assert not warn_checks[0].passed and warn_checks[0].severity == "warning"
    assert gate.exit_code(warn_checks, warn_budgets.warn_only) == 0


def test_limits_are_inclusive_and_min_accuracy_fails_below():
    checks = gate.evaluate(METRICS, Budgets(max_bytes=70_000, min_accuracy=0.85))
    assert checks[0].passed  # exactly at the limit passes, as in size-limit
    assert not checks[1].passed and checks[1].bound == "min"


def test_near_limit_is_a_warning_that_passes():
    (check,) = gate.evaluate(METRICS, Budgets(max_bytes=75_000))  # 93 % of the limit
    assert check.passed and check.severity == "warning" and check.near_limit


def test_missing_metrics_are_errors_not_passes():
    no_accuracy = {**METRICS, "accuracy": None}
    with pytest.raises(GcnshrinkError, match="--min-accuracy needs --data"):
        gate.evaluate(no_accuracy, Budgets(min_accuracy=0.8))
    with pytest.raises(GcnshrinkError, match="--max-latency-ms needs"):
        gate.evaluate({"bytes": 1}, Budgets(max_latency_ms=5.0))
    with pytest.raises(GcnshrinkError, match="--max-accuracy-drop needs --baseline"):
        gate.evaluate(METRICS, Budgets(max_accuracy_drop=0.01))
    with pytest.raises(GcnshrinkError, match="no budgets"):
        gate.evaluate(METRICS, Budgets())


def test_baseline_deltas_and_accuracy_drop():
    baseline = {**METRICS, "bytes": 80_000, "accuracy": 0.85, "nonzero": None}
    budgets = Budgets(max_bytes=100_000, max_nonzero=20_000, max_accuracy_drop=0.01)
    by_name = {c.name: c for c in gate.evaluate(METRICS, budgets, baseline)}
    assert by_name["bytes"].delta_vs_baseline == -10_000
    assert by_name["nonzero"].delta_vs_baseline is None  # baseline did not measure it
    drop = by_name["accuracy_drop"]
    # 0.85 - 0.84 is 0.010000000000000009 in floats: it must still pass a 0.01 budget
    assert drop.value == pytest.approx(0.01) and drop.passed
    assert drop.delta_vs_baseline is None


def test_json_contract():
    budgets = Budgets(max_bytes=64_000, min_accuracy=0.8)
    checks = gate.evaluate(METRICS, budgets, {"bytes": 60_000}, model="m.safetensors")
    data = json.loads(gate.to_json(checks))
    assert isinstance(data, list) and len(data) == 2
    first = data[0]
    assert {"name", "value", "limit", "passed", "delta_vs_baseline"} <= set(first)
    assert first["name"] == "bytes"
    assert first["value"] == 70_000 and first["limit"] == 64_000
    assert first["passed"] is False and first["delta_vs_baseline"] == 10_000
    assert first["model"] == "m.safetensors"
    assert data[1]["delta_vs_baseline"] is None


def test_render_table_shows_values_and_verdicts():
    checks = gate.evaluate(METRICS, Budgets(max_bytes=64_000, min_accuracy=0.8))
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(gate.render_table(checks))
    text = console.file.getvalue()
    assert "70 KB" in text and "≤ 64 KB" in text and "FAIL" in text and "84.00 %" in text


def test_rounding_never_hides_why_a_check_failed():
    (check,) = gate.evaluate({"bytes": 64_001}, Budgets(max_bytes=64_000))
    (line,) = gate.github_annotations([check], "m.pt")
    assert "64,001 B" in line and "64,000 B" in line


# ------------------------------------------------------------------------------ GitHub output


def test_github_annotations():
    checks = gate.evaluate(
        METRICS, Budgets(max_bytes=64_000, max_nonzero=19_000, min_accuracy=0.8), model="m"
    )
    lines = gate.github_annotations(checks, "models/a,b.safetensors")
    assert len(lines) == 2  # bytes failed, nonzero near its limit, accuracy fine
    error, warning = lines
    assert error.startswith("::error file=models/a%2Cb.safetensors,title=")
    assert "::bytes 70 KB exceeds the limit 64 KB (max_bytes)" in error
    assert warning.startswith("::warning file=")
    assert "near budget" in warning and "95%25 of the limit" in warning


def test_warn_only_failures_are_warnings():
    checks = gate.evaluate(METRICS, Budgets(max_bytes=64_000, warn_only=True))
    (line,) = gate.github_annotations(checks, "m.pt")
    assert line.startswith("::warning ") and "warn-only" in line


def test_emit_github_writes_annotations_and_step_summary(tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n", encoding="utf-8")
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    checks = gate.evaluate(METRICS, Budgets(max_bytes=64_000, min_accuracy=0.8))
    out = io.StringIO()
    assert gate.emit_github(checks, "m.safetensors", env=env, stream=out)
    assert out.getvalue().startswith("::error file=m.safetensors,")
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("earlier step\n")  # appended, never overwritten
    assert "### gcnshrink gate `m.safetensors`: ❌ over budget" in text
    assert "| bytes | 70 KB | ≤ 64 KB | — | ❌ FAIL |" in text
    assert "| accuracy | 84.00 % | ≥ 80.00 % | — | ✅ pass |" in text


def test_emit_github_does_nothing_outside_github(tmp_path):
    summary = tmp_path / "summary.md"
    checks = gate.evaluate(METRICS, Budgets(max_bytes=64_000))
    out = io.StringIO()
    env = {"GITHUB_STEP_SUMMARY": str(summary)}
    assert not gate.emit_github(checks, "m", env=env, stream=out)
    assert out.getvalue() == "" and not summary.exists()


def test_step_summary_verdicts():
    ok = gate.evaluate(METRICS, Budgets(max_bytes=100_000))
    assert "✅ within budget" in gate.step_summary_markdown(ok, "m")
    warn = gate.evaluate(METRICS, Budgets(max_bytes=1, warn_only=True))
    assert "warn-only, not blocking" in gate.step_summary_markdown(warn, "m")


# ------------------------------------------------------------------------------- baselines


def test_baseline_from_results(tmp_path):
    results = {
        "format": "gcnshrink.sweep/1",
        "model": "m.pt",
        "data": "val.npz",
        "dense": {"accuracy": 0.85, "params": 100, "nonzero": 100, "bytes_sparse": 400},
        "records": [
            {"method": "magnitude", "rate": 0.5, "accuracy": 0.84, "bytes_sparse": 210},
            {"method": "magnitude", "rate": 0.7, "accuracy": 0.82, "bytes_sparse": 130},
            {"method": "taylor", "rate": 0.5, "accuracy": 0.83, "bytes_onnx": 99},
        ],
    }
    path = write(tmp_path / "results.json", json.dumps(results))
    dense = gate.baseline_from_results(path)
    assert dense["accuracy"] == 0.85 and dense["bytes"] == 400 and dense["flops"] is None
    assert gate.baseline_from_results(path, "magnitude", 0.7)["bytes"] == 130
    assert gate.baseline_from_results(path, "taylor", bytes_field="bytes_onnx")["bytes"] == 99
    with pytest.raises(GcnshrinkError, match="pick a rate"):
        gate.baseline_from_results(path, "magnitude")
    with pytest.raises(GcnshrinkError, match="no method 'random'"):
        gate.baseline_from_results(path, "random")


def test_explicit_config_path(tmp_path):
    custom = write(tmp_path / "budgets.toml", '[gate]\nmax_flops = "2G"\n')
    config = gate.load_config(path=custom)
    assert config.targets[0].budgets.max_flops == 2 * 10**9
    with pytest.raises(GcnshrinkError, match="gate config not found"):
        gate.load_config(path=tmp_path / "missing.toml")
    odd = write(tmp_path / "pyproject.toml", "[tool]\ngcnshrink = 1\n")
    assert gate.load_config(tmp_path).source is None  # unrelated shapes are not a gate table
    with pytest.raises(GcnshrinkError, match="no such table"):
        gate.load_config(path=odd)


# ------------------------------------------------------------------------------- run_gate


def test_run_gate_checks_every_configured_model(tmp_path, make_model):
    from gcnshrink.checkpoint import Checkpoint, save_checkpoint

    model = Checkpoint.from_model(make_model("gcn"), [], {})
    size = save_checkpoint(model, tmp_path / "models" / "m.pt").stat().st_size
    write(
        tmp_path / "gcnshrink.toml",
        f'[gate.models.a]\nmodel = "models/m.pt"\nmax_bytes = {size}\n\n'
        f'[gate.models.b]\nmodel = "models/m.pt"\nmax_bytes = {size - 1}\n',
    )
    run = gate.run_gate(None, Budgets(), config_dir=tmp_path)
    assert [gated.target.name for gated in run.models] == ["a", "b"]
    assert [gated.exit_code for gated in run.models] == [0, 1] and run.exit_code == 1
    assert [(c.model, c.passed) for c in run.checks] == [("a", True), ("b", False)]
    assert [c["passed"] for c in json.loads(run.to_json())] == [True, False]
    assert gate.run_gate(None, Budgets(warn_only=True), config_dir=tmp_path).exit_code == 0
    with pytest.raises(GcnshrinkError, match="--min-accuracy needs --data"):
        gate.run_gate(None, Budgets(min_accuracy=0.5), config_dir=tmp_path)
