"""Checkpoints: exact round trips, weights-only loading, foreign imports and safe writing."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gcnshrink.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from gcnshrink.errors import GcnshrinkError
from gcnshrink.models import available_models
from gcnshrink.models.stgcn import rename_pyskl_stgcn

ARCHS = available_models()


def logits(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def sample(model, batch: int = 3, frames: int = 16) -> torch.Tensor:
    torch.manual_seed(123)
    return model.example_input(batch, frames)


def save_raw(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


class RunsCode:
    """Unpickling this runs a shell command (the classic malicious-checkpoint payload)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


# ---------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_gives_bit_identical_logits(arch, make_model, tmp_path):
    model = make_model(arch, layout="ntu25", num_classes=6)
    masks = {model.unit_graph().prunable[-1].name: torch.ones(2, 3, dtype=torch.bool)}
    ckpt = Checkpoint.from_model(
        model,
        [f"c{i}" for i in range(6)],
        {"seed": 3, "data": "synthetic:x"},
        {"method": "mp", "rate": 0.5},
        masks,
    )
    path = save_checkpoint(ckpt, tmp_path / "m.pt")

    loaded = load_checkpoint(path)
    assert loaded.arch == arch
    assert loaded.config == model.config
    assert loaded.class_names == [f"c{i}" for i in range(6)]
    assert loaded.provenance == {"seed": 3, "data": "synthetic:x"}
    assert loaded.pruning == {"method": "mp", "rate": 0.5}
    assert set(loaded.masks) == set(masks) and all(
        torch.equal(loaded.masks[k], masks[k]) for k in masks
    )
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict[key], value), key
    x = sample(model)
    assert torch.equal(logits(loaded.build_model(), x), logits(model, x))


def test_saved_checkpoints_are_plain_data(make_model, tmp_path):
    path = save_checkpoint(Checkpoint.from_model(make_model("gcn"), ["a"], {}), tmp_path / "m.pt")
    raw = torch.load(
        path, map_location="cpu", weights_only=True
    )  # nothing that needs unpickling code
    assert raw["format"] == "gcnshrink/1"
    assert raw["arch"] == "gcn"


# ---------------------------------------------------------------------------- weights-only loading
def test_malicious_payload_would_run_code_if_unpickled(tmp_path):
    """Control for the next tests: this payload really does execute when loaded unsafely."""
    marker = tmp_path / "ran"
    path = save_raw({"state_dict": RunsCode(marker)}, tmp_path / "evil.pt")
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    "wrap", [lambda evil: evil, lambda evil: {"state_dict": {"w": torch.ones(1), "x": evil}}]
)
def test_code_in_a_pickle_is_refused_and_never_runs(wrap, tmp_path):
    marker = tmp_path / "ran"
    path = save_raw(wrap(RunsCode(marker)), tmp_path / "evil.pt")
    with pytest.raises(GcnshrinkError) as info:
        load_checkpoint(path)
    assert "evil.pt" in str(info.value)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(GcnshrinkError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not a checkpoint at all", b'{"weights": [1, 2, 3]}', b"PK\x03\x04" + b"0" * 64],
    ids=["empty", "text", "json", "broken-zip"],
)
def test_garbage_files_are_clear_errors(content, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(content)
    with pytest.raises(GcnshrinkError, match="junk.pt"):
        load_checkpoint(junk)


# ---------------------------------------------------------------------------- foreign imports
def to_pyskl(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our (= the original ST-GCN's) keys -> pyskl's STGCN keys: the inverse of rename_pyskl_stgcn."""
    out: dict[str, torch.Tensor] = {}
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("st_gcn_networks.")}
    moves = {
        "gcn.conv.": "gcn.conv.",
        "tcn.0.": "gcn.bn.",
        "tcn.2.": "tcn.conv.",
        "tcn.3.": "tcn.bn.",
        "residual.0.": "residual.conv.",
        "residual.1.": "residual.bn.",
    }
    for key, value in state.items():
        if key == "A":
            for i in blocks:  # pyskl keeps the adjacency in every unit_gcn
                out[f"backbone.gcn.{i}.gcn.A"] = value.clone()
        elif key.startswith("data_bn."):
            out[f"backbone.{key}"] = value
        elif key.startswith("edge_importance."):
            out[f"backbone.gcn.{key.split('.')[1]}.gcn.PA"] = value
        elif key.startswith("fcn."):
            param = key.split(".")[1]
            out[f"cls_head.fc_cls.{param}"] = value[:, :, 0, 0] if param == "weight" else value
        else:
            _, i, rest = key.split(".", 2)
            for ours, theirs in moves.items():
                if rest.startswith(ours):
                    out[f"backbone.gcn.{i}.{theirs}{rest[len(ours) :]}"] = value
                    break
            else:
                raise AssertionError(f"unmapped key {key}")
    return out


def test_pyskl_helper_is_the_inverse_of_the_importer(make_model):
    state = make_model("stgcn", layout="ntu25").state_dict()
    pyskl = to_pyskl(state)
    assert pyskl["cls_head.fc_cls.weight"].dim() == 2
    back = rename_pyskl_stgcn({k.removeprefix("backbone."): v for k, v in pyskl.items()})
    assert set(back) == set(state)
    assert all(torch.equal(back[k].reshape(state[k].shape), state[k]) for k in state)


FOREIGN_STGCN = {
    "bare": lambda s: s,
    "no-step-counters": lambda s: {
        k: v for k, v in s.items() if not k.endswith("num_batches_tracked")
    },
    "module-prefix": lambda s: {f"module.{k}": v for k, v in s.items()},
    "state_dict-wrapper": lambda s: {"state_dict": s, "epoch": 80},
    "model-wrapper": lambda s: {"model": s, "optimizer": {"lr": 0.1}},
    "net-wrapper": lambda s: {"net": {f"module.{k}": v for k, v in s.items()}},
    "pyskl": lambda s: {
        "meta": {"epoch": 16, "mmcv_version": "1.5.0", "CLASSES": None},
        "state_dict": to_pyskl(s),
    },
}


@pytest.mark.parametrize("layout", ["ntu25", "openpose18"])
@pytest.mark.parametrize("kind", sorted(FOREIGN_STGCN))
def test_foreign_stgcn_checkpoints_import_with_identical_logits(kind, layout, make_model, tmp_path):
    model = make_model("stgcn", layout=layout, num_classes=9)
    path = save_raw(FOREIGN_STGCN[kind](model.state_dict()), tmp_path / "foreign.pth")

    ckpt = load_checkpoint(path)

    assert ckpt.arch == "stgcn"  # inferred from the keys
    assert ckpt.config["num_classes"] == 9
    assert ckpt.config["layout"]["name"] == layout
    assert ckpt.config["blocks"] == model.config["blocks"]
    x = sample(model)
    assert torch.equal(logits(ckpt.build_model(), x), logits(model, x))


def test_imported_checkpoint_saves_and_reloads(make_model, tmp_path):
    model = make_model("stgcn", layout="ntu25")
    ckpt = load_checkpoint(
        save_raw({"state_dict": to_pyskl(model.state_dict())}, tmp_path / "pyskl.pth")
    )
    again = load_checkpoint(save_checkpoint(ckpt, tmp_path / "ours.pt"))
    x = sample(model)
    assert torch.equal(logits(again.build_model(), x), logits(model, x))


def test_bare_gcn_state_dict_imports(make_model, tmp_path):
    model = make_model("gcn", layout="sbu15", num_classes=8, hidden=48)
    path = save_raw({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "gcn.pth")
    ckpt = load_checkpoint(path)
    assert ckpt.arch == "gcn"
    assert ckpt.config["hidden"] == 48
    assert ckpt.config["layout"]["name"] == "sbu15"
    x = sample(model)
    assert torch.equal(logits(ckpt.build_model(), x), logits(model, x))


def msg3d_like() -> dict[str, torch.Tensor]:
    return {
        "data_bn.weight": torch.ones(150),
        "gcn3d1.gcn3d.0.gcn3d.1.mlp.layers.0.weight": torch.ones(96, 3, 1, 1, 1),
        "fc.weight": torch.ones(60, 384),
    }


@pytest.mark.parametrize(
    ("name", "state"),
    [
        ("MS-G3D", msg3d_like()),
        ("MS-G3D", {f"module.{k}": v for k, v in msg3d_like().items()}),
    ],
)
def test_unsupported_zoo_checkpoints_say_so(name, state, tmp_path):
    path = save_raw(state, tmp_path / "other.pt")
    with pytest.raises(GcnshrinkError, match=rf"{name}.*(not|yet)") as info:
        load_checkpoint(path)
    assert "yet" in str(info.value)


def test_training_state_without_weights_is_refused(tmp_path):
    # what MS-G3D writes next to its weights: resumable training state, no model
    state = {
        "epoch": 42,
        "optimizer_states": {"state": {}, "param_groups": [{"lr": 0.05, "params": [0, 1]}]},
    }
    path = save_raw(state, tmp_path / "checkpoint-42.pt")
    with pytest.raises(GcnshrinkError, match="no model weights") as info:
        load_checkpoint(path)
    assert "training state" in str(info.value)


def test_unrecognisable_keys_ask_for_arch(tmp_path):
    path = save_raw({"encoder.layer.0.weight": torch.ones(3, 3)}, tmp_path / "x.pt")
    with pytest.raises(GcnshrinkError, match="arch"):
        load_checkpoint(path)


def test_unknown_arch_argument_is_a_clear_error(make_model, tmp_path):
    path = save_raw(make_model("stgcn").state_dict(), tmp_path / "st.pth")
    with pytest.raises(GcnshrinkError, match="unknown architecture 'msg3d'") as info:
        load_checkpoint(path, arch="msg3d")
    assert "gcn" in str(info.value) and "stgcn" in str(info.value)


def test_shape_mismatch_names_the_key_and_both_shapes(make_model, tmp_path):
    state = make_model("stgcn", layout="ntu25", base_width=8).state_dict()
    key = "st_gcn_networks.2.tcn.2.weight"
    state[key] = torch.randn(8, 8, 5, 1)  # a temporal kernel of 5 instead of ST-GCN's 9
    with pytest.raises(GcnshrinkError) as info:
        load_checkpoint(save_raw(state, tmp_path / "odd.pth"))
    message = str(info.value)
    assert "\n" not in message
    assert key in message
    assert "(8, 8, 5, 1)" in message and "(8, 8, 9, 1)" in message


def test_tampered_checkpoint_shape_mismatch(make_model, tmp_path):
    ckpt = Checkpoint.from_model(make_model("gcn", num_classes=5), [], {})
    ckpt.state_dict["classifier.bias"] = torch.zeros(6)
    loaded = load_checkpoint(save_checkpoint(ckpt, tmp_path / "m.pt"))
    with pytest.raises(GcnshrinkError, match=r"classifier\.bias.*\(6,\).*\(5,\)") as info:
        loaded.build_model()
    assert "\n" not in str(info.value)


def test_keys_that_fit_several_architectures_ask_for_arch(make_model, tmp_path):
    # gcn's signature (blocks.*.query) and stgcn's (st_gcn_networks.*) at once
    state = {**make_model("gcn").state_dict(), **make_model("stgcn").state_dict()}
    with pytest.raises(GcnshrinkError, match=r"fit several architectures \(gcn, stgcn\)"):
        load_checkpoint(save_raw(state, tmp_path / "both.pth"))


def test_explicit_config_skips_the_inference(make_model, tmp_path):
    # four heads: the bare-state import would assume eight and refuse or mis-split them
    model = make_model("gcn", layout="hand21", heads=4, head_width=3, key_width=2)
    path = save_raw(model.state_dict(), tmp_path / "gcn.pth")
    ckpt = load_checkpoint(path, arch="gcn", config=model.config)
    assert ckpt.config == model.config
    x = sample(model)
    assert torch.equal(logits(ckpt.build_model(), x), logits(model, x))


def test_bad_config_in_a_checkpoint_is_one_line(make_model, tmp_path):
    ckpt = Checkpoint.from_model(make_model("gcn"), [], {})
    ckpt.config["hidden"] = -1
    loaded = load_checkpoint(save_checkpoint(ckpt, tmp_path / "m.pt"))
    message = r"cannot build 'gcn' from the checkpoint's config: hidden must be between 0 and"
    with pytest.raises(GcnshrinkError, match=message):
        loaded.build_model()


def fake_data(**changes) -> SimpleNamespace:
    data = {"spec": "fake", "num_classes": 5, "num_joints": 15, "persons": 2, "in_channels": 3}
    return SimpleNamespace(**{**data, **changes})


@pytest.mark.parametrize("arch", ARCHS)
def test_compatible_data_passes_and_mismatches_are_named(arch, make_model):
    ckpt = Checkpoint.from_model(make_model(arch, layout="sbu15", num_classes=5), [], {})
    ckpt.check_compatible(fake_data())
    mismatches = {
        "model has 5 classes, data 'fake' has 7": fake_data(num_classes=7),
        "model expects V=15 joints × M=2 persons, data 'fake' has V=25, M=2": fake_data(
            num_joints=25
        ),
        "model expects V=15 joints × M=2 persons, data 'fake' has V=15, M=1": fake_data(persons=1),
        "model expects C=3 channels, data has 2": fake_data(in_channels=2),
    }
    for message, data in mismatches.items():
        with pytest.raises(GcnshrinkError) as info:
            ckpt.check_compatible(data)
        assert str(info.value) == message


# ---------------------------------------------------------------------------- writing
def test_save_refuses_to_overwrite_without_force(make_model, tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"precious")
    ckpt = Checkpoint.from_model(make_model("gcn"), [], {})
    with pytest.raises(GcnshrinkError, match="force"):
        save_checkpoint(ckpt, path)
    assert path.read_bytes() == b"precious"
    save_checkpoint(ckpt, path, force=True)
    assert load_checkpoint(path).arch == "gcn"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_failed_write_leaves_the_old_file_and_no_temp_files(make_model, tmp_path):
    path = tmp_path / "m.pt"
    good = Checkpoint.from_model(make_model("gcn"), [], {})
    save_checkpoint(good, path)
    before = path.read_bytes()

    bad = Checkpoint.from_model(make_model("gcn"), [], {})
    bad.state_dict["not.a.tensor"] = lambda: None  # torch.save cannot pickle this: fails mid-write
    with pytest.raises(Exception):  # noqa: B017 - any failure will do; what it leaves behind matters
        save_checkpoint(bad, path, force=True)

    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    with pytest.raises(Exception):  # noqa: B017
        save_checkpoint(bad, tmp_path / "new.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_save_creates_missing_folders(make_model, tmp_path):
    path = save_checkpoint(
        Checkpoint.from_model(make_model("gcn"), [], {}), tmp_path / "a" / "b" / "m.pt"
    )
    assert path.is_file()
