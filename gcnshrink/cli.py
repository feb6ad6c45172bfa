"""The ``gcnshrink`` command line: thin Typer commands over gcnshrink.api and friends.

Exit codes: 0 success, 1 a gate budget exceeded, 2 bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gcnshrink.defaults import FINETUNE_EPOCHS, FINETUNE_LR
from gcnshrink.errors import GcnshrinkError

app = typer.Typer(
    name="gcnshrink",
    help=(
        "Compress trained skeleton GCNs: topology-aware pruning, structural compaction, compact "
        "safetensors/ONNX export, accuracy-vs-size reports and a CI size gate.\n\n"
        "Example: gcnshrink prune dense.pt --method tcp --rate 0.99 --data synthetic:hands -o tcp99.pt"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console()
err_console = Console(stderr=True)


def user_errors(fn):
    """Bad input becomes one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GcnshrinkError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; no output was written")
            raise typer.Exit(130) from None

    return wrapper


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def load_spec(spec: str, seed: int = 0):
    from gcnshrink.data import load_data

    return load_data(spec, seed=seed)


def parse_config_overrides(items: list[str] | None) -> dict:
    """``--set key=value`` pairs for the model config; values are JSON when they parse as JSON."""
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise GcnshrinkError(f"--set expects key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def check_output(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise GcnshrinkError(f"{path} exists; pass --force to overwrite it")


@app.callback()
def configure(
    threads: Annotated[
        int,
        typer.Option(
            "--threads",
            envvar="GCNSHRINK_THREADS",
            help="CPU threads for PyTorch. The zoo's models are small: one thread is fastest on CPU (docs/benchmarks.md); raise it for full-size ST-GCN.",
        ),
    ] = 1,
) -> None:
    """Global options, before the command: gcnshrink --threads 2 train ..."""
    import torch

    if threads < 1:
        err_console.print(f"[bold red]error:[/] --threads must be at least 1, got {threads}")
        raise typer.Exit(2)
    torch.set_num_threads(threads)


DataOpt = Annotated[
    str,
    typer.Option(
        "--data",
        "-d",
        help="Dataset spec: synthetic:hands, synthetic:sbu, a .npz/.pkl file or a dataset folder (docs/formats.md).",
    ),
]
SeedOpt = Annotated[int, typer.Option(help="Random seed (data split, initialisation, batches).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")]
ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch", help="Architecture of a foreign checkpoint (default: inferred from its keys)."
    ),
]
LayoutOpt = Annotated[
    str | None,
    typer.Option(
        "--layout",
        help="Skeleton layout of a foreign checkpoint, e.g. ntu25 (default: inferred from its joint count).",
    ),
]


def load_model_file(path: Path, arch: str | None, layout: str | None):
    from gcnshrink.checkpoint import load_checkpoint

    return load_checkpoint(path, arch=arch, layout=layout)


# ---------------------------------------------------------------------------- train / eval / inspect
@app.command()
@user_errors
def train(
    data: DataOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write (.pt).")],
    arch: Annotated[
        str, typer.Option(help="Architecture: gcn (the papers' attention GCN) or stgcn.")
    ] = "gcn",
    epochs: Annotated[
        int, typer.Option(help="Training epochs; the best on validation is kept.")
    ] = 150,
    seed: SeedOpt = 0,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 3e-3,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = 64,
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda (default: cuda when available).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Model config override key=value, e.g. --set heads=8."),
    ] = None,
    json_out: JsonOpt = False,
    force: ForceOpt = False,
):
    """Train a model from scratch.

    Example: gcnshrink train --data synthetic:hands -o dense.pt
    """
    from gcnshrink import api
    from gcnshrink.checkpoint import save_checkpoint
    from gcnshrink.train import TrainConfig

    check_output(output, force)
    if epochs < 1:
        raise GcnshrinkError(f"--epochs must be at least 1, got {epochs}")
    dataset = load_spec(data, seed)
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, progress=not json_out
    )
    ckpt, summary = api.train(
        dataset, arch, config=config, model_config=parse_config_overrides(set_)
    )
    save_checkpoint(ckpt, output, force=force)
    summary["output"] = str(output)
    if json_out:
        print_json(summary)
    else:
        console.print(
            f"trained [bold]{arch}[/] ({summary['params']:,} params): test accuracy "
            f"[bold]{summary['accuracy']:.2%}[/] (mean per class {summary['mean_class_accuracy']:.2%}), "
            f"best epoch {summary['best_epoch']}/{epochs} on validation -> {output}"
        )


@app.command("eval")
@user_errors
def eval_(
    model: Annotated[
        Path, typer.Argument(help="Checkpoint (.pt), safetensors export or ONNX file.")
    ],
    data: DataOpt,
    seed: SeedOpt = 0,
    arch: ArchOpt = None,
    layout: LayoutOpt = None,
    json_out: JsonOpt = False,
):
    """Top-1 and mean per-class accuracy on the test split.

    Example: gcnshrink eval tcp99.pt --data synthetic:hands --json
    """
    from gcnshrink.measure import measure_model

    dataset = load_spec(data, seed)
    m = measure_model(model, dataset, flops=False, load_options={"arch": arch, "layout": layout})
    result = {
        "model": str(model),
        "data": data,
        "accuracy": m["accuracy"],
        "mean_class_accuracy": m["mean_class_accuracy"],
        "samples": m["samples"],
    }
    if json_out:
        print_json(result)
    else:
        console.print(
            f"{model}: accuracy [bold]{m['accuracy']:.2%}[/], mean per-class {m['mean_class_accuracy']:.2%} on {m['samples']} test samples of {data}"
        )


@app.command()
@user_errors
def inspect(
    model: Annotated[
        Path, typer.Argument(help="Checkpoint (.pt), safetensors export or ONNX file.")
    ],
    json_out: JsonOpt = False,
    latency: Annotated[bool, typer.Option(help="Also time one-sample inference (CPU).")] = False,
    arch: ArchOpt = None,
    layout: LayoutOpt = None,
):
    """Shapes, parameters, nonzeros, FLOPs, bytes on disk and topology of a model.

    Example: gcnshrink inspect tcp99.pt --json
    """
    from gcnshrink.measure import layer_table, measure_model

    m = measure_model(model, latency=latency, load_options={"arch": arch, "layout": layout})
    if model.suffix != ".onnx":
        m["layers"] = layer_table(load_model_file(model, arch, layout).build_model())
    if json_out:
        print_json(m)
        return
    if "layers" in m:
        table = Table(title=f"{model} ({m.get('arch', '?')})")
        for col in ("tensor", "shape", "params", "nonzero", "inconsistent", "source -> target"):
            table.add_column(
                col, justify="left" if col in ("tensor", "source -> target") else "right"
            )
        for row in m["layers"]:
            table.add_row(
                row["name"],
                "×".join(map(str, row["shape"])),
                f"{row['params']:,}",
                f"{row['nonzero']:,}",
                str(row["inconsistent"]),
                f"{row['source']} -> {row['target']}",
            )
        console.print(table)
    facts = [
        ("params", f"{m['params']:,}"),
        ("nonzero", f"{m['nonzero']:,}"),
        ("FLOPs / sample", f"{m['flops']:,}" if m.get("flops") is not None else "n/a"),
        ("file bytes", f"{m['bytes']:,}"),
    ]
    for key in (
        "bytes_dense",
        "bytes_sparse",
        "bytes_gzip",
        "inconsistent_connections",
        "dead_units",
        "latency_ms",
    ):
        if m.get(key) is not None:
            facts.append(
                (
                    key.replace("_", " "),
                    f"{m[key]:,}" if isinstance(m[key], int) else f"{m[key]:.3f}",
                )
            )
    for key, value in facts:
        console.print(f"{key:>26}: {value}")


# ---------------------------------------------------------------------------- prune / compact / export
@app.command()
@user_errors
def prune(
    model: Annotated[
        Path,
        typer.Argument(help="Trained checkpoint (gcnshrink .pt or a foreign ST-GCN/pyskl file)."),
    ],
    data: DataOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="Pruned checkpoint to write.")],
    method: Annotated[
        str, typer.Option(help="tcp, tcp-posthoc, mp, random or structured.")
    ] = "tcp",
    rate: Annotated[
        float, typer.Option(help="Fraction of in-scope weights to remove, in (0, 1).")
    ] = 0.9,
    epochs: Annotated[int, typer.Option(help="Masked fine-tuning epochs.")] = FINETUNE_EPOCHS,
    seed: SeedOpt = 0,
    scope: Annotated[
        str, typer.Option(help="global (one budget) or layer (each tensor at the rate).")
    ] = "global",
    exclude: Annotated[
        list[str] | None, typer.Option(help="Glob of tensor names to keep dense (repeatable).")
    ] = None,
    schedule: Annotated[
        str | None, typer.Option(help="mp only: oneshot or cubic (gradual over the first half).")
    ] = None,
    posthoc: Annotated[
        bool,
        typer.Option(
            help="tcp only: the post-hoc variant (consistent masks once, then fine-tune)."
        ),
    ] = False,
    lr: Annotated[float, typer.Option(help="Adam learning rate of the fine-tune.")] = FINETUNE_LR,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = 64,
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda (default: cuda when available).")
    ] = None,
    allow_collapse: Annotated[
        bool, typer.Option(help="Let mp/random empty a whole layer instead of refusing.")
    ] = False,
    score: Annotated[
        str | None,
        typer.Option(
            help="mp/tcp: rank weights by 'magnitude' or 'lamp' (layer-adaptive; tcp's default)."
        ),
    ] = None,
    arch: ArchOpt = None,
    layout: LayoutOpt = None,
    json_out: JsonOpt = False,
    force: ForceOpt = False,
):
    """Prune a trained model as a masked fine-tune, at exactly the requested rate.

    Example: gcnshrink prune dense.pt --method tcp --rate 0.99 --data synthetic:hands -o tcp99.pt
    """
    from gcnshrink import api
    from gcnshrink.checkpoint import save_checkpoint

    check_output(output, force)
    options = {}
    if schedule is not None:
        if method != "mp":
            raise GcnshrinkError("--schedule applies to --method mp only")
        options["schedule"] = schedule
    if posthoc:
        if method != "tcp":
            raise GcnshrinkError("--posthoc applies to --method tcp only")
        options["posthoc"] = True
    if score is not None:
        if method not in ("mp", "tcp", "tcp-posthoc"):
            raise GcnshrinkError("--score applies to mp, tcp and tcp-posthoc")
        options["score"] = score
    ckpt = load_model_file(model, arch, layout)
    dataset = load_spec(data, seed)
    outcome = api.prune(
        ckpt,
        dataset,
        source_path=model,
        method=method,
        rate=rate,
        epochs=epochs,
        seed=seed,
        scope=scope,
        exclude=tuple(exclude or ()),
        lr=lr,
        batch_size=batch_size,
        device=device,
        progress=not json_out,
        allow_collapse=allow_collapse,
        **options,
    )
    save_checkpoint(outcome.checkpoint, output, force=force)
    s = {**outcome.summary, "output": str(output)}
    if json_out:
        print_json(s)
    else:
        console.print(
            f"[bold]{s['method']}[/] at rate {s['rate']:g} (realized {s['realized_rate']:.4%}): "
            f"test accuracy [bold]{s['accuracy']:.2%}[/] vs dense {s['dense_accuracy']:.2%}; "
            f"{s['nonzero']:,} nonzero of {s['params']:,} params; "
            f"{s['inconsistent_connections']} inconsistent connections, {s['dead_units']} dead units -> {output}"
        )


def calibration_inputs(ckpt, data: str | None, seed: int, count: int = 64):
    """Real inputs for compaction checks: the validation split of --data or of the training data."""
    spec = (
        data
        or (ckpt.provenance or {}).get("data")
        or ((ckpt.provenance or {}).get("source") or {}).get("data")
    )
    if not spec:
        raise GcnshrinkError("compaction checks the logits on real inputs: pass --data")
    dataset = load_spec(spec, seed)
    x = dataset.x_val if len(dataset.x_val) else dataset.x_train
    return x[:count], dataset


@app.command()
@user_errors
def compact(
    model: Annotated[Path, typer.Argument(help="Pruned checkpoint.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Compacted checkpoint to write.")],
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            help="Data for the logit check (default: the data the model was trained on).",
        ),
    ] = None,
    seed: SeedOpt = 0,
    arch: ArchOpt = None,
    layout: LayoutOpt = None,
    json_out: JsonOpt = False,
    force: ForceOpt = False,
):
    """Remove dead and disconnected units structurally; the logits must not change.

    Example: gcnshrink compact tcp99.pt -o tcp99-compact.pt
    """
    from gcnshrink.checkpoint import Checkpoint, save_checkpoint
    from gcnshrink.compact import compact_model

    check_output(output, force)
    ckpt = load_model_file(model, arch, layout)
    calib, _ = calibration_inputs(ckpt, data, seed)
    result = compact_model(ckpt.build_model(), calib)
    out = Checkpoint.from_model(
        result.model,
        ckpt.class_names,
        {**ckpt.provenance, "compacted_from": str(model)},
        ckpt.pruning,
    )
    save_checkpoint(out, output, force=force)
    if json_out:
        print_json({**result.to_dict(), "output": str(output)})
    else:
        console.print(
            f"compacted {model}: {result.params_before:,} -> {result.params_after:,} params, max relative logit change {result.relative_diff:.2e} -> {output}"
        )


@app.command()
@user_errors
def export(
    model: Annotated[Path, typer.Argument(help="Checkpoint to export (compacted first).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")],
    onnx: Annotated[
        bool, typer.Option("--onnx", help="Write model.onnx (verified against PyTorch).")
    ] = False,
    safetensors: Annotated[
        bool, typer.Option("--safetensors", help="Write model.safetensors (dense).")
    ] = False,
    sparse: Annotated[
        bool, typer.Option("--sparse", help="Write model.sparse.safetensors (values + indices).")
    ] = False,
    sparse_onnx: Annotated[
        bool,
        typer.Option(
            "--sparse-onnx",
            help="Write model.sparse.onnx: mostly-zero weights as ONNX sparse initializers "
            "(onnxruntime reads them; not every ONNX tool does).",
        ),
    ] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="Store weights as float16.")] = False,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8", help="Also write model.int8.onnx (onnxruntime dynamic quantization)."
        ),
    ] = False,
    data: Annotated[
        str | None,
        typer.Option(
            "--data", "-d", help="Data for the parity checks (default: the model's training data)."
        ),
    ] = None,
    seed: SeedOpt = 0,
    arch: ArchOpt = None,
    layout: LayoutOpt = None,
    json_out: JsonOpt = False,
    force: ForceOpt = False,
):
    """Compact the model, then write small safetensors and verified ONNX files.

    Example: gcnshrink export tcp99.pt --onnx --sparse -o exported/
    """
    from gcnshrink.export import export_model

    if not (onnx or sparse_onnx or safetensors or sparse or int8):
        onnx = sparse = True
    ckpt = load_model_file(model, arch, layout)
    calib, dataset = calibration_inputs(ckpt, data, seed)
    summary = export_model(
        ckpt,
        output,
        calibration=calib,
        onnx=onnx,
        safetensors=safetensors,
        sparse=sparse,
        fp16=fp16,
        int8=int8,
        sparse_onnx=sparse_onnx,
        force=force,
    )
    if json_out:
        print_json(summary)
    else:
        for item in summary["files"]:
            console.print(
                f"wrote {item['path']} ({item['bytes']:,} bytes){'  ' + item['note'] if item.get('note') else ''}"
            )


# ---------------------------------------------------------------------------- sweep / report / gate
@app.command()
@user_errors
def sweep(
    model: Annotated[Path, typer.Argument(help="Trained dense checkpoint.")],
    data: DataOpt,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for results.json and reports.")
    ],
    methods: Annotated[str, typer.Option(help="Comma-separated methods.")] = "mp,tcp",
    rates: Annotated[str, typer.Option(help="Comma-separated rates.")] = "0.5,0.9,0.95,0.99",
    epochs: Annotated[int, typer.Option(help="Fine-tune epochs per cell.")] = FINETUNE_EPOCHS,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds (one cell per seed).")] = "0",
):
    """Run every method at every rate; resumable. Writes results.json, report.md/html and plots.

    Example: gcnshrink sweep dense.pt --data synthetic:hands --methods mp,tcp --rates 0.9,0.99 -o sweep/
    """
    from gcnshrink.sweep import run_sweep

    def numbers(text: str, kind, what: str):
        try:
            return [kind(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise GcnshrinkError(f"--{what} must be a comma-separated list, got {text!r}") from None

    paths = run_sweep(
        model,
        data,
        output,
        methods=[m.strip() for m in methods.split(",") if m.strip()],
        rates=numbers(rates, float, "rates"),
        epochs=epochs,
        seeds=numbers(seeds, int, "seeds"),
    )
    for name, path in paths.items():
        console.print(f"{name}: {path}")


@app.command()
@user_errors
def report(
    results: Annotated[
        list[Path], typer.Argument(help="results.json files or sweep folders (several to compare).")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for report.md, report.html and plots.")
    ],
    force: ForceOpt = False,
):
    """Re-render reports from one or more results.json.

    Example: gcnshrink report sweep-a/ sweep-b/ -o compare/
    """
    from gcnshrink.report import load_results, write_reports

    written = write_reports(load_results(results), output, force=force)
    for name, path in written.items():
        console.print(f"{name}: {path}")


@app.command()
@user_errors
def gate(
    model: Annotated[
        Path | None,
        typer.Argument(
            help="Model file (checkpoint, safetensors or ONNX); default: models in gcnshrink.toml / pyproject.toml."
        ),
    ] = None,
    max_bytes: Annotated[
        str | None, typer.Option(help="Largest file size, e.g. 64KB, 1.5MB, 2MiB.")
    ] = None,
    max_params: Annotated[str | None, typer.Option(help="Most parameters, e.g. 50k.")] = None,
    max_nonzero: Annotated[
        str | None, typer.Option(help="Most nonzero parameters, e.g. 20k.")
    ] = None,
    max_flops: Annotated[str | None, typer.Option(help="Most FLOPs per sample, e.g. 5M.")] = None,
    max_latency_ms: Annotated[
        str | None, typer.Option(help="Slowest one-sample CPU latency, e.g. 2ms.")
    ] = None,
    min_accuracy: Annotated[
        str | None, typer.Option(help="Lowest test accuracy, e.g. 0.85 or 85%; needs --data.")
    ] = None,
    max_accuracy_drop: Annotated[
        str | None, typer.Option(help="Largest accuracy drop vs --baseline, e.g. 1pp or 0.01.")
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(help="results.json (its dense record) or a model file to compare with."),
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", "-d", help="Dataset spec for accuracy budgets.")
    ] = None,
    warn_only: Annotated[
        bool | None, typer.Option("--warn-only/--no-warn-only", help="Report but always exit 0.")
    ] = None,
    config_dir: Annotated[
        Path, typer.Option(help="Where to look for gcnshrink.toml / pyproject.toml.")
    ] = Path("."),
    json_out: JsonOpt = False,
):
    """Check a model against size/accuracy budgets: exit 0 pass, 1 over budget, 2 bad input.

    Example: gcnshrink gate exported/model.sparse.safetensors --max-bytes 64KB --max-nonzero 20k
    """
    from gcnshrink import gate as gate_mod
    from gcnshrink.measure import measure_model

    overrides = gate_mod.budgets_from_options(
        max_bytes=max_bytes,
        max_params=max_params,
        max_nonzero=max_nonzero,
        max_flops=max_flops,
        max_latency_ms=max_latency_ms,
        min_accuracy=min_accuracy,
        max_accuracy_drop=max_accuracy_drop,
        baseline=str(baseline) if baseline else None,
        warn_only=warn_only,
    )
    config = gate_mod.load_config(config_dir)
    targets = gate_mod.resolve_targets(config, model, overrides, data)
    all_checks, worst = [], 0
    for target in targets:
        budgets = target.budgets
        spec = target.data
        dataset = (
            load_spec(str(spec))
            if spec and (budgets.min_accuracy is not None or budgets.max_accuracy_drop is not None)
            else None
        )
        metrics = measure_model(
            target.model,
            dataset,
            latency=budgets.max_latency_ms is not None,
            flops=budgets.max_flops is not None,
        )
        base = None
        if budgets.baseline:
            bpath = Path(budgets.baseline)
            if bpath.suffix == ".json" or bpath.is_dir():
                base = gate_mod.baseline_from_results(
                    bpath,
                    bytes_field="bytes_onnx"
                    if Path(target.model).suffix == ".onnx"
                    else "bytes_sparse",
                )
            else:
                base = measure_model(bpath, dataset, flops=budgets.max_flops is not None)
        checks = gate_mod.evaluate(metrics, budgets, base, model=target.name)
        all_checks += checks
        worst = max(worst, gate_mod.exit_code(checks, budgets.warn_only))
        if not json_out:
            console.print(gate_mod.render_table(checks))
        gate_mod.emit_github(checks, target.model, stream=sys.stderr if json_out else None)
    if json_out:
        sys.stdout.write(gate_mod.to_json(all_checks) + "\n")
    raise typer.Exit(worst)


# ---------------------------------------------------------------------------- demo
@app.command()
@user_errors
def demo(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for everything the demo writes.")
    ] = Path("demo-out"),
    epochs: Annotated[int, typer.Option(help="Dense training epochs.")] = 150,
    finetune_epochs: Annotated[int, typer.Option(help="Fine-tune epochs per pruned model.")] = 20,
    rate: Annotated[float, typer.Option(help="Pruning rate of the demo.")] = 0.99,
    force: ForceOpt = False,
):
    """The whole pipeline on built-in data: train, prune (tcp and mp), compact, export, report.

    Example: gcnshrink demo -o demo-out
    """
    from gcnshrink.demo import run_demo

    run_demo(
        output,
        epochs=epochs,
        finetune_epochs=finetune_epochs,
        rate=rate,
        force=force,
        console=console,
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
