"""Shared fixtures: a tiny synthetic dataset, tiny models and tiny trained checkpoints.

Everything expensive is session-scoped and built once: one dense ``gcn`` trained through the CLI, one
pruned copy of it and one export of that. Tests that need them only read them (each test that
writes does so into its own ``tmp_path``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

# Small enough to generate in a fraction of a second, big enough that a few epochs beat chance.
TINY_SPEC = "synthetic:hands?train=120&test=60"
TRAIN_ARGS = ("--epochs", "8", "--batch-size", "16", "--lr", "3e-3", "--seed", "0")
PRUNE_ARGS = ("--method", "tcp", "--rate", "0.9", "--epochs", "1", "--batch-size", "16")


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    """The models here are tiny: on a busy 2-core machine OpenMP threads waiting for each other
    make every forward pass many times slower. One thread also keeps results bit-reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_spec() -> str:
    return TINY_SPEC


@pytest.fixture(scope="session")
def tiny_data(tiny_spec):
    from gcnshrink.data import load_data

    return load_data(tiny_spec)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights *and* batch-norm statistics, so that a tensor loaded into the wrong slot (or
    not loaded at all) changes the logits. Fresh batch norms are identities and would hide that."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("edge_importance"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif p.dim() > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * math.sqrt(2.0 / fan_in))
            else:
                p.copy_(
                    torch.randn(p.shape, generator=gen) * 0.2
                    + (1.0 if name.endswith("weight") else 0.0)
                )
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(
                    torch.randn(module.running_mean.shape, generator=gen) * 0.3
                )
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
                module.num_batches_tracked.fill_(17)
    return model.eval()


@pytest.fixture(scope="session")
def make_model() -> Callable[..., nn.Module]:
    """``make_model(arch, layout="sbu15", num_classes=5, **config)``: the architecture's
    ``tiny_config()`` with that layout, classes and overrides, randomized, in eval mode."""
    from gcnshrink.models import create_model, model_class

    def build(arch: str, layout: str = "sbu15", num_classes: int = 5, seed: int = 0, **config):
        config = {
            **model_class(arch).tiny_config(),
            "layout": layout,
            "num_classes": num_classes,
            **config,
        }
        torch.manual_seed(seed)
        return randomize_(create_model(arch, **config), seed)

    return build


# ---------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="session")
def cli() -> Callable[..., object]:
    """``cli(*args)`` runs ``gcnshrink ARGS`` in-process and returns typer's Result (stdout and
    stderr apart, ``exit_code``, ``exception``)."""
    from gcnshrink.cli import app

    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def _ok(result, what: str):
    assert result.exit_code == 0, f"{what} failed ({result.exit_code}): {result.output[-2000:]}"
    return json.loads(result.stdout)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="session")
def trained_gcn(cli, session_dir, tiny_spec) -> tuple[Path, dict]:
    """(path, --json summary) of a dense ``gcn`` trained by ``gcnshrink train`` on the tiny data."""
    path = session_dir / "dense.pt"
    summary = _ok(cli("train", "--data", tiny_spec, "-o", path, "--json", *TRAIN_ARGS), "train")
    return path, summary


@pytest.fixture(scope="session")
def pruned_gcn(cli, session_dir, tiny_spec, trained_gcn) -> tuple[Path, dict]:
    """(path, --json summary) of ``gcnshrink prune --method tcp --rate 0.9`` of ``trained_gcn``."""
    path = session_dir / "tcp90.pt"
    summary = _ok(
        cli("prune", trained_gcn[0], "--data", tiny_spec, "-o", path, "--json", *PRUNE_ARGS),
        "prune",
    )
    return path, summary


@pytest.fixture(scope="session")
def exported_gcn(cli, session_dir, tiny_spec, pruned_gcn) -> Path:
    """Folder written by ``gcnshrink export PRUNED --onnx --sparse -o DIR``."""
    out = session_dir / "exported"
    result = cli(
        "export", pruned_gcn[0], "--onnx", "--sparse", "--data", tiny_spec, "-o", out, "--json"
    )
    _ok(result, "export")
    return out
