"""The ``gcnshrink`` command line: thin Typer commands over gcnshrink.api and friends.

Exit codes: 0 success, 1 a gate budget exceeded, 2 bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.errors import MarkupError
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from gcnshrink.cli_methods import WithMethodOptions
from gcnshrink.defaults import COMPACT_ALIGN, FINETUNE_EPOCHS, FINETUNE_LR
from gcnshrink.errors import GcnshrinkError, GcnshrinkNotice, PeerFailure

# click's UsageError (typer vendors click, so it is reached through a public subclass)
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


@contextlib.contextmanager
def _usage_errors_in_one_line():
    try:
        yield
    except _USAGE_ERROR as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `gcnshrink` alone shows the help
            raise
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "gcnshrink"
        message = " ".join(exc.format_message().split())
        err_console.print(
            f"[bold red]error:[/] {escape(message)} (see {command} --help)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2) from None


class OneLineErrors(TyperGroup):
    """Usage errors (``--rate abc``, a missing option) are bad input like any other: one line on
    stderr and exit code 2, not click's usage panel."""

    def make_context(self, info_name, args, parent=None, **extra):
        with _usage_errors_in_one_line():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        with _usage_errors_in_one_line():
            return super().invoke(ctx)


app = typer.Typer(
    name="gcnshrink",
    cls=OneLineErrors,
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


class PlainValuesConsole(Console):
    """Rich output whose interpolated values (paths, names from files) are never markup or
    emoji: a file called ``a[/].pt`` or ``x:smile:.pt`` is printed as it is, not as a traceback
    or a smiley. Messages built from user input are escaped where they are printed; this is the
    net under every other line."""

    def print(self, *objects, **kwargs) -> None:
        try:
            super().print(*objects, **kwargs)
        except MarkupError:  # rendering fails before anything is written
            super().print(*objects, **{**kwargs, "markup": False})


console = PlainValuesConsole(emoji=False)
err_console = PlainValuesConsole(stderr=True, emoji=False)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (exit code 130) or SIGTERM (143), with what to tell the user: a command that leaves
    something behind on purpose (a sweep's cells, a run's resumable state) says so."""

    def __init__(self, message: str = "interrupted; no output was written", code: int = 130):
        super().__init__(message)
        self.message, self.code = message, code


def _terminated(signum, frame):
    raise Interrupted("terminated; no output was written", 128 + signum)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (CI cancelling a job, ``kill``) unwinds like Ctrl-C, so every temporary file and
    folder is removed on the way out instead of being left behind by an abrupt exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted(exc: KeyboardInterrupt, message: str) -> Interrupted:
    """``exc`` (Ctrl-C or SIGTERM) with another message and the same exit code."""
    verb = "terminated" if getattr(exc, "code", 130) != 130 else "interrupted"
    return Interrupted(f"{verb}; {message}", getattr(exc, "code", 130))


@contextlib.contextmanager
def _notices_on_stderr():
    """Each GcnshrinkNotice (a default gcnshrink chose, e.g. a data split) as one ``note:`` line
    on stderr, every time; other warnings are shown as Python shows them."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", GcnshrinkNotice)
        show_other = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, GcnshrinkNotice):
                text = " ".join(str(message).split())
                err_console.print(f"note: {escape(text)}", highlight=False, soft_wrap=True)
            else:
                show_other(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def user_errors(fn):
    """Bad input becomes one line on stderr and exit code 2; Ctrl-C and SIGTERM one line too."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with _sigterm_as_interrupt(), _notices_on_stderr():
                return fn(*args, **kwargs)
        except GcnshrinkError as exc:
            message = " ".join(str(exc).split())  # one line, whatever a library put in it
            # under torchrun every process prints its own line: say which one
            tag = f" (rank {os.environ.get('RANK')})" if _under_torchrun() else ""
            err_console.print(
                f"[bold red]error{tag}:[/] {escape(message)}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            done = exc if isinstance(exc, Interrupted) else Interrupted()
            err_console.print(done.message, highlight=False, soft_wrap=True)
            raise typer.Exit(done.code) from None

    return wrapper


def _under_torchrun() -> bool:
    return os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1")


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
    """Refuse, before any work, an output that could not be written: it exists (without
    --force), it is a folder, or its folder cannot be created or written."""
    from gcnshrink.files import check_output_path

    check_output_path(path, force)


def run_state(output: Path, resume: Path | None, force: bool) -> Path:
    """Where a train/prune run keeps its resumable state: the --resume file, else next to the
    output (``dense.pt`` -> ``dense.state.pt``). An interrupted run's state is never overwritten
    silently."""
    if resume is not None:
        if not resume.is_file():
            raise GcnshrinkError(f"--resume {resume}: no such file")
        return resume
    state = output.with_name(f"{output.stem}.state.pt")
    if state.exists() and not force:
        raise GcnshrinkError(
            f"{state} holds the state of an interrupted run: continue it with --resume {state}, "
            "or pass --force to start over"
        )
    return state


@contextlib.contextmanager
def resumable(state: Path, resume: Path | None):
    """Around a run that writes its state to ``state`` every epoch: Ctrl-C or SIGTERM keeps it and
    says how to continue; success removes it, and so does a failure of a run that was not itself
    resumed (a --resume file is the user's and stays)."""
    try:
        yield
    except (KeyboardInterrupt, PeerFailure) as exc:
        # Ctrl-C, SIGTERM, or another torchrun process failing: the state is kept for --resume
        if not (state.is_file() and is_main_process()):
            raise
        from gcnshrink.checkpoint import read_torch_file

        epoch = read_torch_file(state).get("epoch", "?")
        if _under_torchrun():
            how = f"rerun the same torchrun command with --resume {state} to continue"
        elif sys.argv and "gcnshrink" in Path(sys.argv[0]).name:
            argv, skip = [], False
            for arg in sys.argv[1:]:  # the command as typed, without an earlier --resume
                if skip or arg.startswith("--resume"):
                    skip = arg == "--resume" and not skip
                    continue
                argv.append(arg)
            how = f"resume with: {shlex.join(['gcnshrink', *argv, '--resume', str(state)])}"
        else:
            how = f"rerun the same command with --resume {state} to continue"
        message = f"the run's state after epoch {epoch} is in {state}; {how}"
        if isinstance(exc, PeerFailure):
            raise PeerFailure(f"{exc}; {message}") from None
        raise interrupted(exc, message) from None
    except BaseException:
        if resume is None and is_main_process():
            state.unlink(missing_ok=True)
        raise
    else:
        if is_main_process():
            state.unlink(missing_ok=True)


def describe_architectures(command) -> None:
    """Name the registered architectures (``gcnshrink.models.available_models()``) in the chosen
    command's ``--arch`` help. Done here rather than at import: the registry imports torch and any
    installed model plugins, which ``gcnshrink --help`` should not pay for."""
    params = [p for p in getattr(command, "params", ()) if ARCHITECTURES in (p.help or "")]
    if not params:
        return
    from gcnshrink.models import available_models

    names = ", ".join(available_models())
    for param in params:
        param.help = param.help.replace(ARCHITECTURES, names)


@app.callback()
def configure(
    ctx: typer.Context,
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
    # The group's callback runs before the command parses its options, --help included.
    if ctx.invoked_subcommand:
        user_errors(describe_architectures)(ctx.command.get_command(ctx, ctx.invoked_subcommand))


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
AlignOpt = Annotated[
    int,
    typer.Option(
        "--align",
        help="Keep every compacted width at a multiple of N by restoring the strongest removed "
        "units (exact: the logits do not change); 1: as pruned.",
    ),
]
# Filled in by describe_architectures once a command is chosen (see there).
ARCHITECTURES = "{architectures}"
ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch",
        help=f"Architecture of a foreign checkpoint: {ARCHITECTURES} (default: inferred from its "
        "keys), or your own model as PACKAGE.MODULE:CALLABLE (its unit graph is derived by "
        "tracing; needs --layout).",
    ),
]
LayoutOpt = Annotated[
    str | None,
    typer.Option(
        "--layout",
        help="Skeleton layout of a foreign checkpoint, e.g. ntu25 (default: inferred from its joint count).",
    ),
]
ArchConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--arch-config",
        help="JSON object: the keywords --arch PACKAGE.MODULE:CALLABLE is called with, or a zoo "
        "architecture's config for a foreign checkpoint (default: read off its shapes).",
    ),
]


def parse_arch_config(text: str | None) -> dict | None:
    """--arch-config as a dict, or one clear line."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise GcnshrinkError(f"--arch-config is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise GcnshrinkError(f"--arch-config must be a JSON object, got {type(value).__name__}")
    return value


BatchOpt = Annotated[
    int,
    typer.Option(help="Mini-batch size; under torchrun the global batch, shared by the processes."),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        help="cpu or cuda (default: cuda when available); under torchrun each process takes "
        "the GPU of its LOCAL_RANK."
    ),
]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        help="fp32, bf16 or fp16 (GPU only): autocast for the forward pass; masks and budgets "
        "stay fp32."
    ),
]


ResumeOpt = Annotated[
    Path | None,
    typer.Option(
        help="Continue an interrupted run from the state file it left (an interrupted run names "
        "it); the same data, --epochs and --seed give the uninterrupted run's result."
    ),
]


def is_main_process() -> bool:
    from gcnshrink import distributed

    return distributed.is_main()


def load_model_file(
    path: Path, arch: str | None, layout: str | None, arch_config: str | None = None
):
    from gcnshrink.checkpoint import load_checkpoint

    return load_checkpoint(path, arch=arch, layout=layout, config=parse_arch_config(arch_config))


# ---------------------------------------------------------------------------- train / eval / inspect
@app.command()
@user_errors
def train(
    data: DataOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write (.pt).")],
    arch: Annotated[
        str, typer.Option(help=f"Architecture: {ARCHITECTURES} (default gcn, the papers' GCN).")
    ] = "gcn",
    epochs: Annotated[
        int, typer.Option(help="Training epochs; the best on validation is kept.")
    ] = 150,
    seed: SeedOpt = 0,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 3e-3,
    batch_size: BatchOpt = 64,
    device: DeviceOpt = None,
    precision: PrecisionOpt = "fp32",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Model config override key=value, e.g. --set heads=8."),
    ] = None,
    json_out: JsonOpt = False,
    force: ForceOpt = False,
    resume: ResumeOpt = None,
):
    """Train a model from scratch.

    Example: gcnshrink train --data synthetic:hands -o dense.pt
    """
    from gcnshrink import api
    from gcnshrink.arguments import check_training
    from gcnshrink.checkpoint import save_checkpoint
    from gcnshrink.train import TrainConfig

    check_output(output, force)
    check_training(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device)
    state = run_state(output, resume, force)
    dataset = load_spec(data, seed)
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
        progress=not json_out, precision=precision,
    )  # fmt: skip
    with resumable(state, resume):
        ckpt, summary = api.train(
            dataset, arch, config=config, model_config=parse_config_overrides(set_),
            state_path=state, resume_from=resume,
        )  # fmt: skip
        if not is_main_process():  # under torchrun, rank 0 writes and prints
            return
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
    arch_config: ArchConfigOpt = None,
    rates: Annotated[
        str | None,
        typer.Option(
            help="A multi-rate checkpoint: evaluate the model extracted at each of these "
            "comma-separated rates."
        ),
    ] = None,
    json_out: JsonOpt = False,
):
    """Top-1 and mean per-class accuracy on the test split.

    Example: gcnshrink eval tcp99.pt --data synthetic:hands --json
    """
    from gcnshrink import api

    wanted = parse_rates(rates) if rates is not None else None
    result = api.evaluate(
        model, data, seed=seed, arch=arch, layout=layout, rates=wanted,
        arch_config=parse_arch_config(arch_config),
    )  # fmt: skip
    if json_out:
        print_json(result)
    elif wanted:
        for r in result["by_rate"]:
            console.print(
                f"{model} extracted at rate {r['rate']} (realized {r['realized_rate']:.4%}): "
                f"accuracy [bold]{r['accuracy']:.2%}[/], mean per-class "
                f"{r['mean_class_accuracy']:.2%} on {r['samples']} test samples of {data}"
            )
    else:
        console.print(
            f"{model}: accuracy [bold]{result['accuracy']:.2%}[/], mean per-class "
            f"{result['mean_class_accuracy']:.2%} on {result['samples']} test samples of {data}"
        )


@app.command()
@user_errors
def inspect(
    model: Annotated[
        Path, typer.Argument(help="Checkpoint (.pt), safetensors export or ONNX file.")
    ],
    json_out: JsonOpt = False,
    latency: Annotated[
        bool,
        typer.Option(
            help="Also time one sample with ONNX Runtime on the CPU (a checkpoint or safetensors "
            "file is exported to ONNX first)."
        ),
    ] = False,
    arch: ArchOpt = None,
    layout: LayoutOpt = None,
    arch_config: ArchConfigOpt = None,
):
    """Shapes, parameters, nonzeros, FLOPs, bytes on disk and topology of a model.

    Example: gcnshrink inspect tcp99.pt --json
    """
    from gcnshrink import api

    m = api.inspect(
        model, latency=latency, arch=arch, layout=layout,
        arch_config=parse_arch_config(arch_config),
    )  # fmt: skip
    if json_out:
        print_json(m)
        return
    if m.get("multi_rate"):
        trained = ", ".join(f"{r:g}" for r in m["trained_rates"])
        console.print(
            f"[bold]multi-rate checkpoint[/] ({m['method']}): trained for rates {trained}; any "
            f"rate in (0, 1) is extracted with: gcnshrink extract {model} --rate R -o pruned.pt. "
            "The numbers below are those of its latent (unpruned) weights."
        )
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
        "bytes_onnx",
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
    if m.get("removed_by") and m.get("prunable_nonzero", 0) < m.get("prunable", 0):
        shares = m["removed_by"]
        facts.append(
            (
                "removed: ch/row/col/entry",
                " / ".join(
                    f"{100 * shares[g]:.0f} %" for g in ("channels", "rows", "columns", "entries")
                ),
            )
        )
    for key, value in facts:
        console.print(f"{key:>26}: {value}")


# ---------------------------------------------------------------------------- prune / compact / export
def _prune(
    model: Annotated[
        Path,
        typer.Argument(help="Trained checkpoint (gcnshrink .pt or a foreign ST-GCN/pyskl file)."),
    ],
    data: DataOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="Pruned checkpoint to write.")],
    method: Annotated[
        str,
        typer.Option(
            help="Pruning method: tcp, tcp-posthoc, ctf (coarse to fine), srmp, mrmp "
            "(multi-rate), mp, random, structured or a plug-in's."
        ),
    ] = "tcp",
    rate: Annotated[
        float, typer.Option(help="Fraction of in-scope weights to remove, in (0, 1).")
    ] = 0.9,
    rates: Annotated[
        str | None,
        typer.Option(
            help="Multi-rate methods: train once for these comma-separated rates and write a "
            "multi-rate checkpoint (gcnshrink extract takes any rate from it)."
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Masked fine-tuning epochs.")] = FINETUNE_EPOCHS,
    seed: SeedOpt = 0,
    scope: Annotated[
        str, typer.Option(help="global (one budget) or layer (each tensor at the rate).")
    ] = "global",
    exclude: Annotated[
        list[str] | None, typer.Option(help="Glob of tensor names to keep dense (repeatable).")
    ] = None,
    lr: Annotated[float, typer.Option(help="Adam learning rate of the fine-tune.")] = FINETUNE_LR,
    batch_size: BatchOpt = 64,
    device: DeviceOpt = None,
    precision: PrecisionOpt = "fp32",
    allow_collapse: Annotated[
        bool, typer.Option(help="Let mp/random empty a whole layer instead of refusing.")
    ] = False,
    arch: ArchOpt = None,
    layout: LayoutOpt = None,
    arch_config: ArchConfigOpt = None,
    json_out: JsonOpt = False,
    force: ForceOpt = False,
    resume: ResumeOpt = None,
    method_options: dict | None = None,
):
    """Prune a trained model as a masked fine-tune, at exactly the requested rate.

    Method options (--schedule, --score, ...) come from the methods' own option lists.

    Example: gcnshrink prune dense.pt --method tcp --rate 0.99 --data synthetic:hands -o tcp99.pt
    """
    from gcnshrink import api
    from gcnshrink.arguments import check_training
    from gcnshrink.checkpoint import save_checkpoint

    check_output(output, force)
    check_training(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, min_epochs=0
    )
    rate_list = parse_rates(rates) if rates is not None else None
    state = run_state(output, resume, force)
    ckpt = load_model_file(model, arch, layout, arch_config)
    dataset = load_spec(data, seed)
    with resumable(state, resume):
        outcome = api.prune(
            ckpt,
            dataset,
            source_path=model,
            method=method,
            rate=rate,
            rates=rate_list,
            epochs=epochs,
            seed=seed,
            scope=scope,
            exclude=tuple(exclude or ()),
            lr=lr,
            batch_size=batch_size,
            device=device,
            progress=not json_out,
            allow_collapse=allow_collapse,
            precision=precision,
            state_path=state,
            resume_from=resume,
            options=method_options,
        )
        if not is_main_process():  # under torchrun, rank 0 writes and prints
            return
        save_checkpoint(outcome.checkpoint, output, force=force)
    s = {**outcome.summary, "output": str(output)}
    if json_out:
        print_json(s)
    elif "accuracy_by_rate" in s:
        by_rate = ", ".join(f"{r}: {a:.2%}" for r, a in s["accuracy_by_rate"].items())
        console.print(
            f"[bold]{s['method']}[/] trained for rates {', '.join(map(str, s['rates']))}: test "
            f"accuracy {by_rate} vs dense {s['dense_accuracy']:.2%} -> {output} (multi-rate; "
            "gcnshrink extract takes any rate from it)"
        )
    else:
        console.print(
            f"[bold]{s['method']}[/] at rate {s['rate']} (realized {s['realized_rate']:.4%}): "
            f"test accuracy [bold]{s['accuracy']:.2%}[/] vs dense {s['dense_accuracy']:.2%}; "
            f"{s['nonzero']:,} nonzero of {s['params']:,} params; "
            f"{s['inconsistent_connections']} inconsistent connections, {s['dead_units']} dead units -> {output}"
        )


prune = app.command("prune")(WithMethodOptions(user_errors(_prune), "prune"))


def parse_rates(text: str) -> list[float]:
    from gcnshrink.arguments import parse_list

    return parse_list("--rates", text, float)


@app.command()
@user_errors
def extract(
    model: Annotated[Path, typer.Argument(help="Multi-rate checkpoint (gcnshrink prune --rates).")],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Pruned checkpoint to write; a folder with --rates."),
    ],
    rate: Annotated[float | None, typer.Option(help="The rate to extract, in (0, 1).")] = None,
    rates: Annotated[
        str | None, typer.Option(help="Several comma-separated rates: one file each in -o DIR.")
    ] = None,
    json_out: JsonOpt = False,
    force: ForceOpt = False,
):
    """Take a pruned model at any rate from a multi-rate checkpoint: no data, no training.

    Example: gcnshrink extract multi.pt --rate 0.97 -o pruned97.pt
    """
    from gcnshrink import api
    from gcnshrink.checkpoint import load_checkpoint, save_checkpoint
    from gcnshrink.pruning.budget import check_rate

    if (rate is None) == (rates is None):
        raise GcnshrinkError("pass --rate R or --rates a,b,c")
    if rate is not None:
        wanted = [check_rate(rate)]
    else:
        wanted = [check_rate(r, "each rate of --rates") for r in parse_rates(rates)]
    paths = [output] if rate is not None else [output / f"rate-{r}.pt" for r in wanted]
    for path in paths:
        check_output(path, force)
    # every rate is extracted before the first file is written: a rate refused late in the
    # list used to leave the earlier rates' files behind
    multi_rate = load_checkpoint(model)
    outcomes = [api.extract(multi_rate, r) for r in wanted]
    summaries = []
    try:
        for outcome, path in zip(outcomes, paths, strict=True):
            save_checkpoint(outcome.checkpoint, path, force=force)
            summaries.append({**outcome.summary, "output": str(path)})
    except KeyboardInterrupt as exc:
        if not summaries:
            raise
        written = ", ".join(s["output"] for s in summaries)
        raise interrupted(exc, f"wrote {written}; the other rates were not written") from None
    if json_out:
        print_json(summaries[0] if rate is not None else summaries)
        return
    for s in summaries:
        console.print(
            f"{s['method']} at rate {s['rate']} (realized {s['realized_rate']:.4%}): "
            f"{s['nonzero']:,} nonzero of {s['params']:,} params -> {s['output']}"
        )


def calibration_inputs(ckpt, data: str | None, seed: int, count: int = 64):
    """Real inputs for compaction checks: the validation split of --data or of the training data."""
    from gcnshrink import api

    return api.calibration_inputs(ckpt, data, seed, count)


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
            help="Data for the logit check (default: the data the model was trained on; "
            "without any, random inputs of the model's shape).",
        ),
    ] = None,
    seed: SeedOpt = 0,
    arch: ArchOpt = None,
    layout: LayoutOpt = None,
    arch_config: ArchConfigOpt = None,
    json_out: JsonOpt = False,
    force: ForceOpt = False,
    align: AlignOpt = COMPACT_ALIGN,
):
    """Remove dead and disconnected units structurally; the logits must not change.

    Example: gcnshrink compact tcp99.pt -o tcp99-compact.pt
    """
    from gcnshrink import api
    from gcnshrink.checkpoint import save_checkpoint

    check_output(output, force)
    outcome = api.compact(
        model, data, seed=seed, arch=arch, layout=layout, align=align,
        arch_config=parse_arch_config(arch_config),
    )  # fmt: skip
    save_checkpoint(outcome.checkpoint, output, force=force)
    s = outcome.summary
    if json_out:
        print_json({**s, "output": str(output)})
    else:
        console.print(
            f"compacted {model}: {s['params_before']:,} -> {s['params_after']:,} params, "
            f"max relative logit change {s['relative_diff']:.2e} -> {output}"
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
            "--data",
            "-d",
            help="Data for the parity checks (default: the model's training data; without any, "
            "random inputs of its shape, 32 frames).",
        ),
    ] = None,
    seed: SeedOpt = 0,
    arch: ArchOpt = None,
    layout: LayoutOpt = None,
    arch_config: ArchConfigOpt = None,
    json_out: JsonOpt = False,
    force: ForceOpt = False,
    align: AlignOpt = COMPACT_ALIGN,
):
    """Compact the model, then write small safetensors and verified ONNX files.

    Example: gcnshrink export tcp99.pt --onnx --sparse -o exported/
    """
    from gcnshrink import api

    summary = api.export(
        model,
        output,
        data=data,
        seed=seed,
        onnx=onnx,
        safetensors=safetensors,
        sparse=sparse,
        sparse_onnx=sparse_onnx,
        fp16=fp16,
        int8=int8,
        force=force,
        arch=arch,
        layout=layout,
        arch_config=parse_arch_config(arch_config),
        align=align,
    )
    if json_out:
        print_json(summary)
    else:
        for item in summary["files"]:
            note = f"  {item['note']}" if item.get("note") else ""
            console.print(f"wrote {item['path']} ({item['bytes']:,} bytes){note}")


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
    arch: ArchOpt = None,
    layout: LayoutOpt = None,
    arch_config: ArchConfigOpt = None,
):
    """Run every method at every rate; resumable. Writes results.json, report.md/html and plots.

    Example: gcnshrink sweep dense.pt --data synthetic:hands --methods mp,tcp --rates 0.9,0.99 -o sweep/
    """
    from gcnshrink import api
    from gcnshrink.arguments import parse_list

    try:
        paths = api.sweep(
            model,
            data,
            output,
            methods=parse_list("--methods", methods),
            rates=parse_list("--rates", rates, float),
            epochs=epochs,
            seeds=parse_list("--seeds", seeds, int),
            arch=arch,
            layout=layout,
            arch_config=parse_arch_config(arch_config),
        )
    except KeyboardInterrupt as exc:
        cells = output / "cells"
        if not (cells.is_dir() and any(cells.glob("*.json"))):
            raise
        raise interrupted(
            exc, f"the finished cells in {cells} are kept; rerun the same command to continue"
        ) from None
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
    from gcnshrink import api

    written = api.report(results, output, force=force)
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
    arch: ArchOpt = None,
    layout: LayoutOpt = None,
    arch_config: ArchConfigOpt = None,
    json_out: JsonOpt = False,
):
    """Check a model against size/accuracy budgets: exit 0 pass, 1 over budget, 2 bad input.

    Example: gcnshrink gate exported/model.sparse.safetensors --max-bytes 64KB --max-nonzero 20k
    """
    from gcnshrink import api
    from gcnshrink.gate import emit_github, render_table

    run = api.gate(
        model,
        data=data,
        config_dir=config_dir,
        baseline=baseline,
        warn_only=warn_only,
        max_bytes=max_bytes,
        max_params=max_params,
        max_nonzero=max_nonzero,
        max_flops=max_flops,
        max_latency_ms=max_latency_ms,
        min_accuracy=min_accuracy,
        max_accuracy_drop=max_accuracy_drop,
        arch=arch,
        layout=layout,
        arch_config=parse_arch_config(arch_config),
    )
    for gated in run.models:
        if not json_out:
            console.print(render_table(gated.checks))
        # with --json, stdout holds only the JSON array; annotations go to stderr
        emit_github(gated.checks, gated.target.model, stream=sys.stderr if json_out else None)
    if json_out:
        sys.stdout.write(run.to_json() + "\n")
    raise typer.Exit(run.exit_code)


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
