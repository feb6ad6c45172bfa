"""The Python API: reproducible pruning, JSON-ready summaries, foreign checkpoints end to end."""

import json

import pytest
import torch

from gcnshrink import api
from gcnshrink.checkpoint import load_checkpoint
from gcnshrink.layouts import get_layout
from gcnshrink.models import create_model

SBU = "synthetic:sbu?train=64&test=32"


@pytest.mark.parametrize("method", ["mp", "tcp", "structured"])
def test_same_command_twice_gives_identical_masks_and_accuracy(trained_gcn, tiny_data, method):
    ckpt = load_checkpoint(trained_gcn[0])
    a = api.prune(
        ckpt,
        tiny_data,
        method=method,
        rate=0.9,
        epochs=2,
        seed=3,
        progress=False,
        allow_collapse=True,
    )
    b = api.prune(
        ckpt,
        tiny_data,
        method=method,
        rate=0.9,
        epochs=2,
        seed=3,
        progress=False,
        allow_collapse=True,
    )
    assert a.summary["accuracy"] == b.summary["accuracy"]
    for key, value in a.checkpoint.state_dict.items():
        assert torch.equal(value, b.checkpoint.state_dict[key]), key
    for key, mask in a.checkpoint.masks.items():
        assert torch.equal(mask, b.checkpoint.masks[key]), key


def test_prune_summary_is_json_and_records_provenance(trained_gcn, tiny_data):
    outcome = api.prune(
        trained_gcn[0], tiny_data, method="tcp", rate=0.95, epochs=1, progress=False
    )
    summary = json.loads(json.dumps(outcome.summary))
    assert summary["realized_rate"] == pytest.approx(0.95, abs=1e-3)
    assert summary["inconsistent_connections"] == 0
    prov = outcome.checkpoint.provenance
    assert len(prov["source_sha256"]) == 64 and prov["data"] == tiny_data.spec and prov["seed"] == 0
    assert outcome.checkpoint.pruning["method"] == "tcp" and outcome.checkpoint.masks


def test_foreign_stgcn_checkpoint_prunes_from_the_cli(tmp_path, cli):
    torch.manual_seed(0)
    model = create_model("stgcn", num_classes=8, layout=get_layout("sbu15"), base_width=4)
    foreign = tmp_path / "stgcn_sbu.pt"
    torch.save(
        {k: v for k, v in model.state_dict().items()}, foreign
    )  # a bare state dict, original key names
    out = tmp_path / "pruned.pt"
    result = cli(
        "prune",
        str(foreign),
        "--layout",
        "sbu15",
        "--method",
        "mp",
        "--rate",
        "0.5",
        "--data",
        SBU,
        "--epochs",
        "1",
        "-o",
        str(out),
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["realized_rate"] == pytest.approx(0.5, abs=1e-3)
    result = cli("inspect", str(foreign), "--layout", "sbu15", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["params"] == sum(
        p.numel() for p in model.parameters()
    )
