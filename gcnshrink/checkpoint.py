"""gcnshrink's checkpoint format and the import of foreign checkpoints.

Our ``.pt`` files are a plain dict of tensors, strings, numbers, lists and dicts, saved with
``torch.save`` and always read back with ``torch.load(..., weights_only=True)``: nothing in a
checkpoint can run code. Keys: ``format`` ("gcnshrink/1"), ``arch``, ``config``, ``state_dict``,
``class_names``, ``provenance``, ``pruning`` (None for a dense model), ``masks`` (boolean keep
masks of the prunable tensors, or None) and ``method_state`` (a multi-rate checkpoint's method
state, tensors and plain data, or None; its ``state_dict`` then holds the latent weights and
``pruning["multi_rate"]`` is true).

Foreign checkpoints (bare state dicts, ``{"state_dict"|"model"|"net"|"model_state_dict": ...}``
wrappers, ``module.``/``model.``/``backbone.`` prefixes, pyskl's ``{meta, state_dict}``) are
unwrapped here; the registered architecture whose key signature they match
(``SkeletonModel.recognizes``) renames them onto its keys and infers its config from the shapes
(``SkeletonModel.import_state``, next to each model). ``arch``/``layout``/``config`` arguments
override the inference.
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
from gcnshrink.models import (
    ModelConfig,
    SkeletonModel,
    available_models,
    model_class,
    recognizing_models,
)

FORMAT = "gcnshrink/1"
WRAPPER_KEYS = ("state_dict", "model", "net", "model_state_dict")
SHARED_PREFIXES = ("module.", "model.", "backbone.")
# checkpoints of architectures that are not in the zoo yet: (key prefix, name, future arch name)
NOT_IN_ZOO = (
    ("l1.gcn1.conv_a", "2s-AGCN", "agcn"),
    ("l1.gcn1.convs.0.conv1", "CTR-GCN", "ctrgcn"),
    ("gcn3d1.", "MS-G3D", "msg3d"),
)


@dataclass
class Checkpoint:
    arch: str
    config: dict
    state_dict: dict[str, torch.Tensor]
    class_names: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    pruning: dict | None = None
    masks: dict[str, torch.Tensor] | None = None
    # a multi-rate checkpoint's method state (tensors and plain data): what extraction needs
    method_state: dict | None = None

    @property
    def arch_config(self) -> ModelConfig:
        """The validated config of the architecture (its accessors: classes, channels, layout)."""
        cls = model_class(self.arch)  # an unknown architecture is its own clear line
        try:
            return cls.config_class.from_dict(self.config)
        except GcnshrinkError as exc:
            raise GcnshrinkError(
                f"cannot build {self.arch!r} from the checkpoint's config: {exc}"
            ) from None

    def build_model(self) -> SkeletonModel:
        """The model with these weights, in eval mode. Shape mismatches are one clear line."""
        config = self.arch_config
        try:
            model = model_class(self.arch)(config)
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
        method_state: dict | None = None,
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
            method_state,
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
            "method_state": self.method_state,
        }

    def check_compatible(self, data) -> None:
        """Refuse data whose classes, joints, persons or channels the model cannot take."""
        cfg = self.arch_config
        if cfg.num_classes != data.num_classes:
            raise GcnshrinkError(
                f"model has {cfg.num_classes} classes, data {data.spec!r} has {data.num_classes}"
            )
        if cfg.layout.num_joints != data.num_joints or cfg.layout.persons != data.persons:
            raise GcnshrinkError(
                f"model expects V={cfg.layout.num_joints} joints × M={cfg.layout.persons} persons, "
                f"data {data.spec!r} has V={data.num_joints}, M={data.persons}"
            )
        if cfg.in_channels != data.in_channels:
            raise GcnshrinkError(
                f"model expects C={cfg.in_channels} channels, data has {data.in_channels}"
            )

    @property
    def layout(self) -> Layout:
        return self.arch_config.layout


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
            obj.get("method_state"),
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


def recognize_architecture(state: dict[str, torch.Tensor]) -> str:
    """The one registered architecture whose key signature ``state`` has, or one clear line."""
    matches = recognizing_models(state)
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise GcnshrinkError(
            f"the checkpoint's keys fit several architectures ({', '.join(matches)}); pass --arch"
        )
    for prefix, name, arch in NOT_IN_ZOO:
        if any(k.startswith(prefix) for k in state):
            zoo = available_models()
            listed = ", ".join(zoo[:-1]) + " and " + zoo[-1] if len(zoo) > 1 else zoo[0]
            raise GcnshrinkError(
                f"this is a {name} checkpoint; gcnshrink's zoo has {listed}, not {arch} yet"
            )
    raise GcnshrinkError("cannot tell the architecture from the checkpoint's keys; pass --arch")


def import_foreign(
    obj, path: Path, *, arch=None, layout=None, num_classes=None, config=None
) -> Checkpoint:
    state = unwrap_state_dict(obj, path)
    lay = get_layout(layout) if layout else None
    cls = model_class(arch if arch is not None else recognize_architecture(state))
    if config is not None:
        state = cls.rename_foreign(state)
        cfg = dict(config)
    else:
        cfg, state = cls.import_state(state, lay, num_classes)
    ckpt = Checkpoint(
        cls.arch,
        json_safe(cls.make_config(cfg).to_dict()),
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
