"""Deriving the unit graph by tracing (gcnshrink.graph.tracing) and the user's own model kind
(``--arch PACKAGE.MODULE:CALLABLE``, gcnshrink.models.user).

The three user models below are in none of the zoo's styles: a Shift-GCN-like shift graph
convolution (a per-channel joint shift through an index buffer), an InfoGCN-like self-attention
GCN (heads as separate 1×1 convs, softmax attention over joints, concatenated heads) and a block
that splits one conv's output into two branches and concatenates them again. This file is their
module: ``--arch test_tracing:ShiftGCN`` imports it.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from gcnshrink.checkpoint import FORMAT, load_checkpoint
from gcnshrink.cli import app
from gcnshrink.compact import CompactionError, compact_model
from gcnshrink.errors import GcnshrinkError
from gcnshrink.graph.tracing import TracingError, derive_unit_graph, graph_differences
from gcnshrink.layouts import get_layout
from gcnshrink.models import available_models, create_model, model_class
from gcnshrink.models.user import UserModel
from gcnshrink.onnx_export import check_parity, export_onnx
from gcnshrink.pruning import PruneSpec, bake, create_method
from gcnshrink.testing import (
    CONFORMANCE_CHECKS,
    check_graph_keeps_logits,
    randomize,
    temporarily_registered,
)

LAYOUT = "sbu15"  # 15 joints, 2 persons
JOINTS, PERSONS = 15, 2


def _persons_in_batch(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    n, c, t, v, m = x.shape
    return x.permute(0, 4, 1, 2, 3).reshape(n * m, c, t, v), n, m


def _pool(y: torch.Tensor, n: int, m: int) -> torch.Tensor:
    return y.mean(dim=(2, 3)).reshape(n, m, -1).mean(dim=1)


class ShiftGCN(nn.Module):
    """Shift-GCN-like: channel c of joint v reads joint (v + c) mod V (an index buffer), then a
    1×1 conv mixes the channels; a temporal conv and a residual follow."""

    def __init__(self, num_classes: int = 4, width: int = 8, joints: int = JOINTS):
        super().__init__()
        self.conv_in = nn.Conv2d(3, width, 1)
        shift = (torch.arange(joints)[None, :] + torch.arange(width)[:, None]) % joints
        self.register_buffer("shift", shift[None, :, None, :].clone())  # (1, C, 1, V)
        self.mix = nn.Conv2d(width, width, 1)
        self.bn = nn.BatchNorm2d(width)
        self.tcn = nn.Conv2d(width, width, (3, 1), padding=(1, 0))
        self.bn_t = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, n, m = _persons_in_batch(x)
        x = torch.relu(self.conv_in(x))
        nm, _, t, _ = x.shape
        shifted = x.gather(3, self.shift.expand(nm, -1, t, -1))
        y = torch.relu(self.bn(self.mix(shifted)))
        y = torch.relu(self.bn_t(self.tcn(y)) + x)
        return self.fc(_pool(y, n, m))


class AttentionHead(nn.Module):
    def __init__(self, c_in: int, key: int, value: int):
        super().__init__()
        self.q = nn.Conv2d(c_in, key, 1)
        self.k = nn.Conv2d(c_in, key, 1)
        self.v = nn.Conv2d(c_in, value, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k = self.q(x).mean(2), self.k(x).mean(2)  # (N, d, V)
        att = torch.softmax(torch.einsum("ndu,ndv->nuv", q, k), dim=-1)
        return torch.einsum("nuv,nctv->nctu", att, self.v(x))


class InfoAttentionGCN(nn.Module):
    """InfoGCN-like: self-attention over joints per head (softmax), heads concatenated, a 1×1
    conv and a residual, a second block, then pooling and a linear classifier."""

    def __init__(self, num_classes: int = 4, width: int = 8, heads: int = 2, key: int = 3):
        super().__init__()
        self.embed = nn.Conv2d(3, width, 1)
        self.blocks = nn.ModuleList()
        for _ in range(2):
            block = nn.ModuleDict(
                {
                    "heads": nn.ModuleList(
                        AttentionHead(width, key, width // heads) for _ in range(heads)
                    ),
                    "out": nn.Conv2d(width, width, 1),
                    "bn": nn.BatchNorm2d(width),
                }
            )
            self.blocks.append(block)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, n, m = _persons_in_batch(x)
        x = torch.relu(self.embed(x))
        for block in self.blocks:
            y = torch.cat([head(x) for head in block["heads"]], dim=1)
            x = torch.relu(block["bn"](block["out"](torch.relu(y))) + x)
        return self.fc(_pool(x, n, m))


class SplitConcatGCN(nn.Module):
    """One conv feeds two branches through a split (1×1 conv; temporal conv), whose outputs are
    concatenated, aggregated over a fixed adjacency and classified. Split sizes are read off the
    branch weights, so the compacted model splits where the compacted weights expect."""

    def __init__(self, num_classes: int = 4, width: int = 6, joints: int = JOINTS):
        super().__init__()
        self.stem = nn.Conv2d(3, 2 * width, 1)
        self.bn = nn.BatchNorm2d(2 * width)
        self.branch1 = nn.Conv2d(width, width, 1)
        self.branch2 = nn.Conv2d(width, width, (3, 1), padding=(1, 0))
        self.bn_cat = nn.BatchNorm2d(2 * width)
        adjacency = torch.eye(joints) + torch.roll(torch.eye(joints), 1, 1)
        self.register_buffer("A", adjacency / adjacency.sum(0, keepdim=True))
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, n, m = _persons_in_batch(x)
        h = torch.relu(self.bn(self.stem(x)))
        sizes = [self.branch1.weight.shape[1], self.branch2.weight.shape[1]]
        a, b = torch.split(h, sizes, dim=1)
        y = torch.cat([self.branch1(a), self.branch2(b)], dim=1)
        y = torch.relu(self.bn_cat(y))
        y = torch.einsum("nctv,vw->nctw", y, self.A)
        return self.fc(_pool(y, n, m))


class CumsumGCN(nn.Module):
    """An operation gcnshrink has no rule for: a cumulative sum across channels."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, n, m = _persons_in_batch(x)
        return self.fc(_pool(torch.cumsum(self.conv(x), dim=1), n, m))


class BackboneHead(nn.Module):
    """Key names that upstream checkpoints share (``backbone.``): a user's are kept as they are."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.backbone = nn.Conv2d(3, 8, 1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, n, m = _persons_in_batch(x)
        return self.head(_pool(torch.relu(self.backbone(x)), n, m))


USER_MODELS = {
    "shift": "test_tracing:ShiftGCN",
    "attention": "test_tracing:InfoAttentionGCN",
    "split_concat": "test_tracing:SplitConcatGCN",
}


def user_config(spec: str, **arguments) -> dict:
    return {
        "callable": spec,
        "callable_config": arguments,
        "layout": LAYOUT,
        "num_classes": 4,
    }


def tiny_user_class(spec: str) -> type[UserModel]:
    """The user's model as an architecture the conformance checks can build by name."""

    class Tiny(UserModel):
        @classmethod
        def tiny_config(cls) -> dict:
            return user_config(spec)

    return Tiny


# ---------------------------------------------------------------------------- the zoo
@pytest.mark.parametrize("arch", available_models())
def test_traced_graph_equals_declared(arch):
    model = randomize(create_model(arch, **model_class(arch).tiny_config()))
    derived = derive_unit_graph(model, model.example_input(1, 8))
    assert graph_differences(derived, model.unit_graph()) == []


def test_graph_differences_notices_a_change():
    model = create_model("stgcn", **model_class("stgcn").tiny_config())
    declared = model.unit_graph()
    derived = derive_unit_graph(model, model.example_input(1, 8))
    derived.links.pop()  # an identity residual less
    assert graph_differences(derived, declared)


# ---------------------------------------------------------------------------- user models
@pytest.mark.parametrize("check", ["unit_graph", "compaction", "checkpoint"])
@pytest.mark.parametrize("kind", list(USER_MODELS))
def test_user_model_conforms(kind, check, tmp_path):
    """The conformance checks of the zoo: the derived graph fits the tensors and connects every
    unit; random dead units compact away with the same logits; the checkpoint round-trips."""
    with temporarily_registered(f"user_{kind}", tiny_user_class(USER_MODELS[kind])) as name:
        assert CONFORMANCE_CHECKS[check](name, tmp_path) is None


def _prune(model: UserModel, method: str, rate: float) -> UserModel:
    """One masked training step of ``method`` at ``rate``, then the masks baked in."""
    model.train()
    pruner = create_method(method, PruneSpec((rate,), allow_collapse=True))
    pruner.attach(model, model.unit_graph())
    x = model.example_input(4, 16)
    pruner.on_step(0.0)
    loss = model(x).logsumexp(dim=1).mean()
    extra = pruner.loss()
    (loss + extra if extra is not None else loss).backward()
    return bake(model, pruner.masks_at(rate)).eval()


@pytest.mark.parametrize("kind", list(USER_MODELS))
def test_user_model_prunes_compacts_and_exports(kind, tmp_path):
    """tcp, mp and ctf (whose channel, row and column factors come from the derived graph) prune
    the user's model; the pruned model compacts with unchanged logits (compact_model checks them
    on the calibration batch; here on other inputs too) and the compacted ctf model exports to
    ONNX with the same logits."""
    for method in ("tcp", "mp", "ctf"):
        torch.manual_seed(0)
        model = randomize(create_model("user", **user_config(USER_MODELS[kind])))
        pruned = _prune(model, method, 0.9)
        calibration = pruned.example_input(8, 16)
        result = compact_model(pruned, calibration)
        assert result.params_after < result.params_before, (kind, method)
        other = pruned.example_input(3, 16)
        with torch.no_grad():
            expected = pruned(other)
            got = result.model(other)
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
        # the compacted model is rebuilt from its config alone (the callable and the shapes)
        rebuilt = create_model("user", **json.loads(json.dumps(result.model.config)))
        rebuilt.load_state_dict(result.model.state_dict())
        with torch.no_grad():
            assert torch.equal(rebuilt.eval()(other), got)
    path = tmp_path / f"{kind}.onnx"
    export_onnx(result.model, other, path)
    check_parity(result.model, path, pruned.example_input(5, 16), atol=1e-4)


def test_derived_graphs_read_the_structure():
    shift = create_model("user", **user_config(USER_MODELS["shift"]))
    graph = shift.unit_graph()
    # the shift index is bound to the channels it shifts, so compaction cuts it with them
    assert (
        graph.binding_by_name["shift"].axes[1].space
        == graph.binding_by_name["conv_in.weight"].target
    )
    assert [link.kind for link in graph.links] == ["identity"]  # the residual
    attention = create_model("user", **user_config(USER_MODELS["attention"])).unit_graph()
    assert len(attention.attention_pairs) == 4  # 2 blocks × 2 heads, query/key
    assert {link.kind for link in attention.links} == {"steer", "identity"}
    split = create_model("user", **user_config(USER_MODELS["split_concat"])).unit_graph()
    # the two branches write the two halves of one concatenated space
    b1, b2 = (split.binding_by_name[f"branch{i}.weight"] for i in (1, 2))
    assert b1.target == b2.target
    assert b1.target_units.tolist() == list(range(6))
    assert b2.target_units.tolist() == list(range(6, 12))
    assert b1.source_units.tolist() == list(range(6))
    assert b2.source_units.tolist() == list(range(6, 12))


def test_unmappable_operation_is_refused_in_one_line():
    model = create_model("user", **user_config("test_tracing:CumsumGCN"))
    with pytest.raises(TracingError) as info:
        derive_unit_graph(model, model.example_input(1, 8))
    message = str(info.value)
    assert "\n" not in message
    assert "cumsum" in message and "<model>" in message and "unit_graph()" in message


class DeclaredSplitConcat(SplitConcatGCN):
    """A user's model with its own unit_graph(): the split/concat graph, optionally with the two
    branches' output units swapped (a wrong declaration)."""

    swap = False

    def unit_graph(self):
        plain = SplitConcatGCN()
        graph = derive_unit_graph(plain, torch.randn(1, 3, 8, JOINTS, PERSONS))
        if self.swap:
            units = graph.binding_by_name["branch1.weight"].axes[0].units
            units.copy_(units.flip(0))
        return graph


class LayerNormGCN(nn.Module):
    """Layer norm over the joints (per channel: allowed) or over the channels (refused)."""

    def __init__(self, over_channels: bool = False, num_classes: int = 4):
        super().__init__()
        self.over_channels = over_channels
        self.conv = nn.Conv2d(3, 8, 1)
        self.norm = nn.LayerNorm(8 if over_channels else JOINTS)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, n, m = _persons_in_batch(x)
        y = self.conv(x)
        if self.over_channels:
            y = self.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        else:
            y = self.norm(y)
        return self.fc(_pool(torch.relu(y), n, m))


def test_layer_norm_over_joints_passes_over_units_is_refused():
    x = torch.randn(1, 3, 8, JOINTS, PERSONS)
    graph = derive_unit_graph(LayerNormGCN(), x)
    assert "norm.weight" not in graph.binding_by_name  # indexed by joints: nothing to cut
    with pytest.raises(TracingError, match="layer_norm at norm normalises across units"):
        derive_unit_graph(LayerNormGCN(over_channels=True), x)


def test_declared_unit_graph_takes_precedence_and_is_checked():
    model = randomize(create_model("user", **user_config("test_tracing:DeclaredSplitConcat")))
    graph = model.unit_graph()
    assert model.unit_graph() is graph  # the declaration, checked once
    check_graph_keeps_logits(model)
    DeclaredSplitConcat.swap = True
    try:
        wrong = randomize(create_model("user", **user_config("test_tracing:DeclaredSplitConcat")))
        with pytest.raises(CompactionError, match="does not describe the model"):
            check_graph_keeps_logits(wrong)
    finally:
        DeclaredSplitConcat.swap = False
    # a declaration that does not fit the tensors is refused when it is asked for
    wrong_width = create_model("user", **user_config("test_tracing:CumsumGCN"))
    wrong_width.__dict__["_user_class"] = type(
        "Bad", (CumsumGCN,), {"unit_graph": lambda self: graph}
    )
    with pytest.raises(GcnshrinkError, match="declared by its unit_graph"):
        wrong_width.unit_graph()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:Model", "cannot import"),
        ("test_tracing:NoSuchModel", "has no"),
        ("test_tracing:LAYOUT", "not callable"),
        ("not a spec", "PACKAGE.MODULE:CALLABLE"),
    ],
)
def test_bad_callable_is_one_line(spec, message):
    with pytest.raises(GcnshrinkError, match=message) as info:
        create_model("user", **user_config(spec))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def user_state(tmp_path_factory):
    """A user's checkpoint as users save it: torch.save(model.state_dict())."""
    torch.manual_seed(0)
    model = SplitConcatGCN(num_classes=8)  # synthetic:sbu has 8 classes
    path = tmp_path_factory.mktemp("user") / "split.pth"
    torch.save(model.state_dict(), path)
    return path


def _run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output


def test_users_state_dict_loads_with_its_own_key_names(tmp_path):
    torch.manual_seed(0)
    model = BackboneHead().eval()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    torch.save(wrapped, tmp_path / "m.pth")
    ckpt = load_checkpoint(tmp_path / "m.pth", arch="test_tracing:BackboneHead", layout=LAYOUT)
    assert set(ckpt.state_dict) == set(model.state_dict())
    assert ckpt.arch == "user" and ckpt.config["num_classes"] == 4
    x = torch.randn(2, 3, 16, JOINTS, PERSONS)
    with torch.no_grad():
        assert torch.equal(ckpt.build_model()(x), model(x))


def test_cli_every_command_takes_the_users_model(user_state, tmp_path):
    """inspect, eval, prune and gate read the user's state dict with --arch (sweep too: the slow
    test below); compact, export and eval read gcnshrink's files, which record the callable, with
    the same --arch (the file alone never makes gcnshrink import and call code)."""
    arch = ["--arch", USER_MODELS["split_concat"], "--layout", LAYOUT]
    arch += ["--arch-config", '{"num_classes": 8}']
    data = "synthetic:sbu?train=40&test=20"
    code, out = _run(["inspect", str(user_state), *arch, "--json"])
    assert code == 0, out
    assert json.loads(out)["arch"] == "user"
    code, out = _run(["eval", str(user_state), *arch, "--data", data, "--json"])
    assert code == 0, out
    code, out = _run(["gate", str(user_state), *arch, "--max-params", "1k", "--json"])
    assert code == 0, out
    pruned = tmp_path / "pruned.pt"
    code, out = _run(
        ["prune", str(user_state), *arch, "--data", data, "--method", "mp", "--rate", "0.5",
         "--epochs", "1", "--batch-size", "8", "--output", str(pruned)]
    )  # fmt: skip
    assert code == 0, out
    compacted = tmp_path / "compact.pt"
    named = ["--arch", USER_MODELS["split_concat"]]
    code, out = _run(["compact", str(pruned), *named, "--data", data, "--output", str(compacted)])
    assert code == 0, out
    out_dir = tmp_path / "out"
    code, out = _run(["export", str(compacted), *named, "--sparse", "--output", str(out_dir)])
    assert code == 0, out
    exported = next(out_dir.glob("*.safetensors"))
    code, out = _run(["eval", str(exported), *named, "--data", data, "--json"])
    assert code == 0, out


def test_a_file_alone_never_makes_gcnshrink_call_code(tmp_path, monkeypatch):
    """A crafted gcnshrink checkpoint recording ``os:system`` and a command as its "callable" is
    refused in one line (exit 2) unless the user names that callable with --arch: the command is
    never run."""
    import gcnshrink.models.user as user

    monkeypatch.setattr(user, "_NAMED_BY_USER", set())  # a fresh process: nothing named yet
    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile.pt"
    config = {
        "callable": "os:system",
        "callable_config": {"command": f"touch {marker}"},
        "layout": get_layout(LAYOUT).to_dict(),
        "num_classes": 4,
    }
    state = {"fc.weight": torch.zeros(4, 3)}
    torch.save({"format": FORMAT, "arch": "user", "config": config, "state_dict": state}, hostile)
    for command in (
        ["inspect", str(hostile)],
        ["compact", str(hostile), "-o", str(tmp_path / "c")],
    ):
        code, out = _run(command)
        assert code == 2, out
        assert "pass --arch os:system" in out and "Traceback" not in out
    with pytest.raises(GcnshrinkError, match="only when you name it"):
        load_checkpoint(hostile)
    assert not marker.exists()


@pytest.mark.slow  # a minute on the shared machine; benchmarks/user_models.py sweeps them all
def test_cli_sweep_takes_the_users_model(user_state, tmp_path):
    code, out = _run(
        ["sweep", str(user_state), "--arch", USER_MODELS["split_concat"], "--layout", LAYOUT,
         "--arch-config", '{"num_classes": 8}', "--data", "synthetic:sbu?train=40&test=20",
         "--methods", "mp", "--rates", "0.5", "--epochs", "0", "--output", str(tmp_path / "s")]
    )  # fmt: skip
    assert code == 0, out
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    assert [r["method"] for r in results["records"]] == ["mp"]


def test_cli_refuses_bad_arch_in_one_line(user_state):
    code, out = _run(["inspect", str(user_state), "--arch", "no_such_mod_q:M", "--layout", LAYOUT])
    assert code == 2 and "cannot import" in out
    code, out = _run(
        ["inspect", str(user_state), "--arch", USER_MODELS["shift"], "--arch-config", "{bad"]
    )
    assert code == 2 and "--arch-config" in out
    code, out = _run(["inspect", str(user_state), "--arch", USER_MODELS["shift"]])
    assert code == 2 and "--layout" in out


def test_cli_refuses_an_unmappable_model_in_one_line(tmp_path):
    torch.save(CumsumGCN(num_classes=8).state_dict(), tmp_path / "cumsum.pth")
    code, out = _run(
        ["prune", str(tmp_path / "cumsum.pth"), "--arch", "test_tracing:CumsumGCN",
         "--arch-config", '{"num_classes": 8}', "--layout", LAYOUT, "--epochs", "0",
         "--data", "synthetic:sbu?train=40&test=20", "--output", str(tmp_path / "p.pt")]
    )  # fmt: skip
    assert code == 2, out
    assert "cumsum" in out and "unit_graph()" in out
    assert len(out.strip().splitlines()) == 1
    assert not (tmp_path / "p.pt").exists()
