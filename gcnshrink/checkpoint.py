"""gcnshrink's checkpoint format and the import of foreign checkpoints.

Our ``.pt`` files are a plain dict of tensors, strings, numbers, lists and dicts, saved with
``torch.save`` and always read back with ``torch.load(..., weights_only=True)``: nothing in a
checkpoint can run code. Keys: ``format`` ("gcnshrink/1"), ``arch``, ``config``, ``state_dict``,
``class_names``, ``provenance``, ``pruning`` (None for a dense model) and ``masks`` (boolean keep
masks of the prunable tensors, or None).

Foreign checkpoints (bare state dicts, ``{"state_dict"|"model"|"net"|"model_state_dict": ...}``
wrappers, ``module.``/``model.``/``backbone.`` prefixes, pyskl's ``{meta, state_dict}``) are
unwrapped, renamed onto our keys, and their architecture and config are inferred from key and shape
signatures; ``arch``/``layout``/``config`` arguments override the inference.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gcnshrink import __version__
from gcnshrink.errors import GcnshrinkError
from gcnshrink.files import atomic_write
from gcnshrink.layouts import LAYOUTS, Layout, get_layout
from gcnshrink.models import SkeletonModel, create_model, model_class

FORMAT = "gcnshrink/1"
WRAPPER_KEYS = ("state_dict", "model", "net", "model_state_dict")
SHARED_PREFIXES = ("module.", "model.", "backbone.")
LAYOUT_BY_JOINTS = {25: "ntu25", 18: "openpose18", 17: "coco17", 15: "sbu15", 21: "hand21"}


@dataclass
class Checkpoint:
    arch: str
    config: dict
    state_dict: dict[str, torch.Tensor]
    class_names: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    pruning: dict | None = None
    masks: dict[str, torch.Tensor] | None = None

    def build_model(self) -> SkeletonModel:
        """The model with these weights, in eval mode. Shape mismatches are one clear line."""
        try:
            model = create_model(self.arch, **self.config)
        except (KeyError, ValueError, TypeError) as exc:
            raise GcnshrinkError(
                f"cannot build {self.arch!r} from the checkpoint's config: {exc}"
            ) from None
        load_state_dict_strict(model, self.state_dict)
        return model.eval()

    @classmethod
    def from_model(
        cls,
        model: SkeletonModel,
        class_names: list[str],
        provenance: dict,
        pruning: dict | None = None,
        masks=None,
    ) -> Checkpoint:
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return cls(
            model.arch,
            json_safe(model.config),
            state,
            list(class_names),
            provenance,
            pruning,
            masks,
        )

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "arch": self.arch,
            "config": self.config,
            "state_dict": self.state_dict,
            "class_names": self.class_names,
            "provenance": self.provenance,
            "pruning": self.pruning,
            "masks": self.masks,
        }

    def check_compatible(self, data) -> None:
        """Refuse data whose classes, joints, persons or channels the model cannot take."""
        cfg = self.config
        layout = cfg["layout"]
        if cfg["num_classes"] != data.num_classes:
            raise GcnshrinkError(
                f"model has {cfg['num_classes']} classes, data {data.spec!r} has {data.num_classes}"
            )
        if layout["num_joints"] != data.num_joints or layout["persons"] != data.persons:
            raise GcnshrinkError(
                f"model expects V={layout['num_joints']} joints × M={layout['persons']} persons, "
                f"data {data.spec!r} has V={data.num_joints}, M={data.persons}"
            )
        if cfg.get("in_channels", data.in_channels) != data.in_channels:
            raise GcnshrinkError(
                f"model expects C={cfg['in_channels']} channels, data has {data.in_channels}"
            )

    @property
    def layout(self) -> Layout:
        return Layout.from_dict(self.config["layout"])


def json_safe(obj):
    """Round-trip through JSON: configs must be plain data (they also go into safetensors metadata)."""
    return json.loads(json.dumps(obj))


def provenance(seed: int | None = None, data: str | None = None, **extra) -> dict:
    return {
        "gcnshrink_version": __version__,
        "torch_version": str(torch.__version__),
        "seed": seed,
        "data": data,
        "command": " ".join(["gcnshrink", *sys.argv[1:]])
        if sys.argv and "gcnshrink" in sys.argv[0]
        else None,
        **extra,
    }


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """load_state_dict with one-line errors naming the first offending key and shapes."""
    own = model.state_dict()
    state = dict(state)
    for (
        key,
        value,
    ) in own.items():  # exports leave out BN step counters; they only matter to training
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing:
        raise GcnshrinkError(
            f"checkpoint lacks {missing[0]!r} (shape {tuple(own[missing[0]].shape)}) and {len(missing) - 1} more keys the model needs"
        )
    if unexpected:
        raise GcnshrinkError(
            f"checkpoint has key {unexpected[0]!r} that the model does not have ({len(unexpected)} unexpected keys)"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise GcnshrinkError(
                f"shape mismatch for {k!r}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}"
            )
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------- writing
def save_checkpoint(ckpt: Checkpoint, path: str | Path, force: bool = False) -> Path:
    # everything but tensors goes through JSON first, so the file always loads with weights_only
    payload = ckpt.to_dict()
    for key in ("config", "class_names", "provenance", "pruning"):
        payload[key] = json.loads(json.dumps(payload[key], default=str))
    return atomic_write(path, lambda tmp: torch.save(payload, tmp), force=force, to_path=True)


# ---------------------------------------------------------------------------- reading
def _first_line(exc: BaseException, prefer: str | None = None) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if prefer:
        for line in lines:
            if prefer in line:
                return line[:200]
    return (lines or [type(exc).__name__])[0][:200]


def read_torch_file(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise GcnshrinkError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _first_line(exc, prefer="Unsupported global")
        raise GcnshrinkError(
            f"refusing to load {path}: it is not plain tensors and data ({reason})"
        ) from None
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise GcnshrinkError(
            f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)})"
        ) from None


def load_checkpoint(
    path: str | Path,
    *,
    arch: str | None = None,
    layout: str | None = None,
    num_classes: int | None = None,
    config: dict | None = None,
) -> Checkpoint:
    """Load our checkpoints, our safetensors exports, or a foreign PyTorch checkpoint."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    obj = read_torch_file(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return Checkpoint(
            obj["arch"],
            obj["config"],
            obj["state_dict"],
            list(obj.get("class_names") or []),
            obj.get("provenance") or {},
            obj.get("pruning"),
            obj.get("masks"),
        )
    return import_foreign(
        obj, path, arch=arch, layout=layout, num_classes=num_classes, config=config
    )


def _load_safetensors(path: Path) -> Checkpoint:
    from gcnshrink.sparse_format import load_tensors

    tensors, meta = load_tensors(path)
    if meta.get("format") != FORMAT:
        raise GcnshrinkError(f"{path}: not a gcnshrink safetensors export (no gcnshrink metadata)")
    try:
        return Checkpoint(
            meta["arch"],
            json.loads(meta["config"]),
            tensors,
            json.loads(meta.get("class_names", "[]")),
            json.loads(meta.get("provenance", "{}")),
            json.loads(meta.get("pruning", "null")),
        )
    except (KeyError, json.JSONDecodeError) as exc:
        raise GcnshrinkError(f"{path}: broken gcnshrink metadata ({exc})") from None


def checkpoint_metadata(ckpt: Checkpoint) -> dict[str, str]:
    """String metadata that lets gcnshrink rebuild the model from a safetensors or ONNX file."""
    # compact separators: in a safetensors header every byte counts against a tiny model's size
    compact = {"sort_keys": True, "separators": (",", ":"), "default": str}
    return {
        "format": FORMAT,
        "arch": ckpt.arch,
        "config": json.dumps(ckpt.config, **compact),
        "class_names": json.dumps(ckpt.class_names, separators=(",", ":")),
        "provenance": json.dumps(ckpt.provenance, **compact),
        "pruning": json.dumps(ckpt.pruning, **compact),
    }


# ---------------------------------------------------------------------------- foreign import
def unwrap_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    """Find the tensor mapping in a foreign checkpoint and strip shared wrapper prefixes."""
    if isinstance(obj, dict) and not _is_tensor_map(obj):
        for key in WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], dict) and _is_tensor_map(obj[key]):
                obj = obj[key]
                break
        else:
            keys = ", ".join(sorted(map(str, obj))[:6])
            if "optimizer_states" in obj or "epoch" in obj:
                raise GcnshrinkError(f"{path}: holds training state ({keys}) but no model weights")
            raise GcnshrinkError(f"{path}: no state dict found (top-level keys: {keys})")
    if not isinstance(obj, dict) or not _is_tensor_map(obj):
        raise GcnshrinkError(f"{path}: not a state dict or a gcnshrink checkpoint")
    state = dict(obj)
    # strip 'module.' (DataParallel) then 'model.'/'backbone.' prefixes shared by the body keys
    for prefix in SHARED_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items()}
    return state


def _is_tensor_map(d: dict) -> bool:
    return (
        bool(d)
        and all(isinstance(k, str) for k in d)
        and all(isinstance(v, torch.Tensor) for v in d.values())
    )


def rename_pyskl_stgcn(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pyskl's STGCN (gcn_adaptive='importance', unit_tcn) onto the original ST-GCN keys.

    pyskl puts the BN+ReLU after the graph aggregation inside ``gcn`` and its temporal unit is
    conv+BN; the original puts that BN first in ``tcn``. The computation is the same, so the
    parameters map one to one: gcn.bn -> tcn.0, tcn.conv -> tcn.2, tcn.bn -> tcn.3,
    residual.{conv,bn} -> residual.{0,1}, gcn.PA -> edge_importance.i, cls_head.fc_cls -> fcn.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "gcn" and len(parts) > 3:
            i, unit, rest = parts[1], parts[2], ".".join(parts[3:])
            if unit == "gcn" and rest == "PA":
                out[f"edge_importance.{i}"] = value
            elif unit == "gcn" and rest == "A":
                out.setdefault("A", value)
            elif unit == "gcn" and rest.startswith("bn."):
                out[f"st_gcn_networks.{i}.tcn.0.{rest[3:]}"] = value
            elif unit == "gcn" and rest.startswith("conv."):
                out[f"st_gcn_networks.{i}.gcn.conv.{rest[5:]}"] = value
            elif unit == "tcn" and rest.startswith("conv."):
                out[f"st_gcn_networks.{i}.tcn.2.{rest[5:]}"] = value
            elif unit == "tcn" and rest.startswith("bn."):
                out[f"st_gcn_networks.{i}.tcn.3.{rest[3:]}"] = value
            elif unit == "residual" and rest.startswith("conv."):
                out[f"st_gcn_networks.{i}.residual.0.{rest[5:]}"] = value
            elif unit == "residual" and rest.startswith("bn."):
                out[f"st_gcn_networks.{i}.residual.1.{rest[3:]}"] = value
            else:
                raise GcnshrinkError(
                    f"unsupported pyskl STGCN key {'backbone.' + key!r} (only the default importance/unit_tcn variant imports)"
                )
        elif key.startswith("cls_head.fc_cls."):
            param = key.rsplit(".", 1)[1]
            out[f"fcn.{param}"] = value[:, :, None, None] if param == "weight" else value
        else:
            out[key] = value
    return out


def infer_arch(state: dict[str, torch.Tensor]) -> str:
    if any(k.startswith("st_gcn_networks.") for k in state):
        return "stgcn"
    if any(k.startswith("gcn.") and ".gcn." in k for k in state) and any(
        k.startswith("cls_head.") for k in state
    ):
        return "pyskl-stgcn"
    if any(k.startswith("blocks.") and k.endswith("query.weight") for k in state):
        return "gcn"
    if any(k.startswith("l1.gcn1.conv_a") for k in state):
        raise GcnshrinkError(
            "this is a 2s-AGCN checkpoint; gcnshrink's zoo has gcn and stgcn, not agcn yet"
        )
    if any(k.startswith("l1.gcn1.convs.0.conv1") for k in state):
        raise GcnshrinkError(
            "this is a CTR-GCN checkpoint; gcnshrink's zoo has gcn and stgcn, not ctrgcn yet"
        )
    if any(k.startswith("gcn3d1.") for k in state):
        raise GcnshrinkError(
            "this is an MS-G3D checkpoint; gcnshrink's zoo has gcn and stgcn, not msg3d yet"
        )
    raise GcnshrinkError("cannot tell the architecture from the checkpoint's keys; pass --arch")


def infer_stgcn_config(
    state: dict[str, torch.Tensor], layout: Layout | None, num_classes: int | None
) -> dict:
    if "A" not in state:
        raise GcnshrinkError("ST-GCN checkpoint has no adjacency buffer 'A'")
    k, v = int(state["A"].shape[0]), int(state["A"].shape[1])
    if k != 3:
        raise GcnshrinkError(f"only ST-GCN with spatial partitioning (K=3) imports; 'A' has K={k}")
    i, blocks = 0, []
    while f"st_gcn_networks.{i}.gcn.conv.weight" in state:
        w = state[f"st_gcn_networks.{i}.gcn.conv.weight"]
        t = state[f"st_gcn_networks.{i}.tcn.2.weight"]
        mid, c_in, out = w.shape[0] // k, w.shape[1], t.shape[0]
        stride = _stride_guess(blocks, i, out)
        if f"st_gcn_networks.{i}.residual.0.weight" in state:
            residual = "conv"
        else:
            residual = "none" if i == 0 else "identity"
        blocks.append(
            {
                "in": int(c_in),
                "mid": int(mid),
                "out": int(out),
                "stride": stride,
                "residual": residual,
            }
        )
        i += 1
    if not blocks:
        raise GcnshrinkError("no st_gcn_networks.* blocks in the checkpoint")
    in_channels = blocks[0]["in"]
    bn_len = int(state["data_bn.weight"].shape[0])
    if layout is None:
        name = LAYOUT_BY_JOINTS.get(v)
        if name is None:
            raise GcnshrinkError(f"no built-in layout has {v} joints; pass --layout")
        layout = get_layout(name)
    if layout.num_joints != v:
        raise GcnshrinkError(
            f"layout {layout.name} has {layout.num_joints} joints but the checkpoint's 'A' has {v}"
        )
    if bn_len == v * in_channels:
        data_bn = "VC"
    elif bn_len == layout.persons * v * in_channels:
        data_bn = "MVC"
    else:
        raise GcnshrinkError(
            f"data_bn has {bn_len} entries; expected V·C={v * in_channels} or M·V·C"
        )
    classes = int(state["fcn.weight"].shape[0])
    if num_classes is not None and num_classes != classes:
        raise GcnshrinkError(f"checkpoint has {classes} classes, --num-classes says {num_classes}")
    return {
        "num_classes": classes,
        "layout": layout.to_dict(),
        "in_channels": in_channels,
        "blocks": blocks,
        "data_bn": data_bn,
        "edge_importance": "edge_importance.0" in state,
    }


def _stride_guess(blocks: list[dict], i: int, out: int) -> int:
    # Shapes do not record strides; ST-GCN downsamples exactly where the width grows after block 0.
    return 2 if blocks and i > 0 and out > blocks[-1]["out"] else 1


def infer_gcn_config(
    state: dict[str, torch.Tensor], layout: Layout | None, heads: int = 8, chunks: int = 4
) -> dict:
    """A bare ``gcn`` state dict: widths from shapes; heads are assumed equal-width (8, the default)."""
    blocks, b = [], 0
    while f"blocks.{b}.value.weight" in state:
        value_w = int(state[f"blocks.{b}.value.weight"].shape[0])
        key_w = int(state[f"blocks.{b}.query.weight"].shape[0])
        if value_w % heads or key_w % heads:
            raise GcnshrinkError(
                f"block {b} widths ({value_w}, {key_w}) do not split into {heads} equal heads; pass --config"
            )
        blocks.append(
            {"value_widths": [value_w // heads] * heads, "key_widths": [key_w // heads] * heads}
        )
        b += 1
    in_width = int(state["blocks.0.value.weight"].shape[1])
    nodes = int(state["fc.weight"].shape[1]) // sum(blocks[-1]["value_widths"])
    if layout is None:
        candidates = [lay for lay in LAYOUTS.values() if lay.num_joints * lay.persons == nodes]
        if len(candidates) != 1:
            raise GcnshrinkError(
                f"cannot tell the skeleton layout of a {nodes}-node gcn; pass --layout"
            )
        layout = candidates[0]
    return {
        "num_classes": int(state["classifier.weight"].shape[0]),
        "layout": layout.to_dict(),
        "in_channels": in_width // chunks,
        "chunks": chunks,
        "heads": heads,
        "key_width": blocks[0]["key_widths"][0],
        "hidden": int(state["fc.weight"].shape[0]),
        "blocks": blocks,
    }


def import_foreign(
    obj, path: Path, *, arch=None, layout=None, num_classes=None, config=None
) -> Checkpoint:
    state = unwrap_state_dict(obj, path)
    kind = infer_arch(state) if arch is None else arch
    lay = get_layout(layout) if layout else None
    if kind == "pyskl-stgcn" or (kind == "stgcn" and any(k.startswith("gcn.") for k in state)):
        state = rename_pyskl_stgcn(state)
        kind = "stgcn"
    model_class(kind)  # unknown --arch is one clear line
    if config is not None:
        cfg = dict(config)
    elif kind == "stgcn":
        cfg = infer_stgcn_config(state, lay, num_classes)
    else:
        cfg = infer_gcn_config(state, lay)
    ckpt = Checkpoint(
        kind,
        json_safe(create_model(kind, **cfg).config),
        state,
        [],
        {"imported_from": str(path), "sha256": file_sha256(path)},
    )
    ckpt.build_model()  # validate now: a mismatch names the key and shapes
    return ckpt


__all__ = [
    "Checkpoint",
    "LAYOUTS",
    "checkpoint_metadata",
    "file_sha256",
    "load_checkpoint",
    "provenance",
    "save_checkpoint",
]
