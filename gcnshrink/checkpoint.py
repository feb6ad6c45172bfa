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
import io
import json
import pickle
import re
import sys
import zipfile
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
from gcnshrink.models.user import (
    USER_ARCH,
    check_recorded_callable,
    is_callable_spec,
    name_callable,
    user_config,
)

FORMAT = "gcnshrink/1"
WRAPPER_KEYS = ("state_dict", "model", "net", "model_state_dict")
SHARED_PREFIXES = ("module.", "model.", "backbone.")
# checkpoints of architectures that are not in the zoo yet: (key prefix, name, future arch name)
NOT_IN_ZOO = (("gcn3d1.", "MS-G3D", "msg3d"),)


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
        """The model with these weights, in eval mode. Shape mismatches are one clear line.

        The shapes are compared with a model built on the meta device first, so a config that
        asks for far more weights than the checkpoint holds allocates nothing."""
        config = self.arch_config
        expected = meta_state(self.arch, config)
        if expected is not None:
            check_state_keys_and_shapes(expected, self.state_dict)
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


def meta_state(arch: str, config) -> dict[str, torch.Tensor] | None:
    """The state dict of ``arch`` built from ``config`` on the meta device: every key and shape,
    no memory. None if the architecture cannot be built there (its real build then checks)."""
    try:
        with torch.device("meta"):
            return model_class(arch)(config).state_dict()
    except GcnshrinkError:
        raise
    except Exception:  # an architecture that computes on its weights while it is built
        return None


def meta_parameter_count(arch: str, config) -> int | None:
    """Parameters of ``arch`` built from ``config``, counted without allocating them."""
    state = meta_state(arch, config)
    return None if state is None else sum(t.numel() for t in state.values())


def check_state_keys_and_shapes(
    own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``state`` against a model's own state dict: one line naming the first missing or
    unexpected key or the first shape mismatch. Returns ``state`` with the BN step counters that
    exports leave out filled in (they only matter to training)."""
    state = dict(state)
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros(value.shape, dtype=value.dtype)
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
    return state


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """load_state_dict with one-line errors naming the first offending key and shapes."""
    state = check_state_keys_and_shapes(model.state_dict(), state)
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------- writing
def checkpoint_bytes(ckpt: Checkpoint) -> bytes:
    """The ``.pt`` file's bytes. Serialized in memory, so the zip members are named ``archive/...``
    whatever the destination (``torch.save`` to a path names them after the file, which for an
    atomic write is a random temporary name): the same checkpoint gives the same bytes."""
    # everything but tensors goes through JSON first, so the file always loads with weights_only
    payload = ckpt.to_dict()
    for key in ("config", "class_names", "provenance", "pruning"):
        payload[key] = json.loads(json.dumps(payload[key], default=str))
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def save_checkpoint(ckpt: Checkpoint, path: str | Path, force: bool = False) -> Path:
    return atomic_write(path, checkpoint_bytes(ckpt), force=force)


# ---------------------------------------------------------------------------- reading
def _first_line(exc: BaseException, prefer: str | None = None) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if prefer:
        for line in lines:
            if prefer in line:
                return line[:200]
    return (lines or [type(exc).__name__])[0][:200]


# A .pt zip may expand to this many times its size on disk, plus the slack below: torch.save
# stores members uncompressed, so a real checkpoint expands by nothing; a small file that inflates
# to hundreds of MB (a zip bomb) is refused before torch reads a byte of it.
MAX_ZIP_EXPANSION = 4
ZIP_EXPANSION_SLACK = 16 * 2**20

_REFUSED_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")
# torch's refusal text explains how to switch its check off; gcnshrink repeats none of it
_ADVICE = ("weights_only", "trust", "safe_globals", "documentation", "two options")


def _check_zip_expansion(path: Path) -> None:
    """Refuse a .pt zip whose members expand far beyond the file (see MAX_ZIP_EXPANSION)."""
    if not zipfile.is_zipfile(path):
        return  # the legacy (pre-1.6) format, or not a checkpoint: torch.load decides
    try:
        with zipfile.ZipFile(path) as archive:
            expanded = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise GcnshrinkError(
            f"{path}: not a readable PyTorch checkpoint (broken zip: {_first_line(exc)})"
        ) from None
    size = path.stat().st_size
    if expanded > MAX_ZIP_EXPANSION * size + ZIP_EXPANSION_SLACK:
        raise GcnshrinkError(
            f"refusing to load {path}: its {size:,} bytes expand to {expanded:,} "
            "(torch.save never compresses; this looks like a zip bomb)"
        )


def _refusal(path: Path, exc: BaseException) -> str:
    """One line naming what torch's restricted unpickler refused, without torch's advice."""
    text = str(exc)
    found = _REFUSED_GLOBAL.search(text)
    if found:
        return (
            f"refusing to load {path}: it references {found[1]}, which could run code; "
            ".pt files are read as tensors and plain data only (a pickled model object must be "
            "re-saved as its state_dict)"
        )
    for line in text.splitlines():
        line = line.strip().removeprefix("WeightsUnpickler error:").strip()
        if line and not any(word in line for word in _ADVICE):
            return f"refusing to load {path}: it is not plain tensors and data ({line[:200]})"
    return f"refusing to load {path}: it is not plain tensors and data"


def read_torch_file(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise GcnshrinkError(f"{path}: no such file")
    _check_zip_expansion(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise GcnshrinkError(_refusal(path, exc)) from None
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
    if is_callable_spec(arch):  # the user names their own code; a file alone never does
        name_callable(arch)
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    obj = read_torch_file(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return _checked(
            Checkpoint(
                obj.get("arch"),
                obj.get("config"),
                obj.get("state_dict"),
                obj.get("class_names") or [],
                obj.get("provenance") or {},
                obj.get("pruning"),
                obj.get("masks"),
                obj.get("method_state"),
            ),
            path,
        )
    return import_foreign(
        obj, path, arch=arch, layout=layout, num_classes=num_classes, config=config
    )


def _load_safetensors(path: Path) -> Checkpoint:
    from gcnshrink.sparse_format import load_tensors

    tensors, meta = load_tensors(path)
    if meta.get("format") != FORMAT:
        raise GcnshrinkError(f"{path}: not a gcnshrink safetensors export (no gcnshrink metadata)")
    arch, config, class_names, prov, pruning = parse_metadata(meta, path)
    return _checked(Checkpoint(arch, config, tensors, class_names, prov, pruning), path)


def parse_metadata(meta: dict[str, str], path: str | Path) -> tuple:
    """(arch, config, class_names, provenance, pruning) from the string metadata of a safetensors
    or ONNX export (:func:`checkpoint_metadata`); one line naming the key if any is broken."""
    values = {}
    for key, default in (
        ("arch", None),
        ("config", None),
        ("class_names", "[]"),
        ("provenance", "{}"),
        ("pruning", "null"),
    ):
        raw = meta.get(key, default)
        if raw is None:
            raise GcnshrinkError(f"{path}: broken gcnshrink metadata (no {key!r})")
        if not isinstance(raw, str):  # protobuf hands over invalid UTF-8 as bytes
            raise GcnshrinkError(f"{path}: broken gcnshrink metadata ({key!r} is not text)")
        if key == "arch":
            values[key] = raw
            continue
        try:
            values[key] = json.loads(raw)
        except (json.JSONDecodeError, TypeError, RecursionError):
            raise GcnshrinkError(
                f"{path}: broken gcnshrink metadata ({key!r} is not JSON)"
            ) from None
    check_recorded_callable(values["arch"], values["config"], path)
    return tuple(values.values())


def _checked(ckpt: Checkpoint, path: str | Path) -> Checkpoint:
    """Refuse, before anything is built, a checkpoint read from a file whose parts have the wrong
    types: an edited file must fail in one line here, not deep inside a command."""

    def refuse(what: str) -> GcnshrinkError:
        return GcnshrinkError(f"{path}: broken gcnshrink checkpoint ({what})")

    if not isinstance(ckpt.arch, str) or not ckpt.arch:
        raise refuse(f"'arch' must be an architecture name, got {ckpt.arch!r:.60}")
    if not isinstance(ckpt.config, dict):
        raise refuse(f"'config' must be a dict, got {type(ckpt.config).__name__}")
    check_recorded_callable(ckpt.arch, ckpt.config, path)
    if not isinstance(ckpt.state_dict, dict):
        raise refuse(f"'state_dict' must be a dict, got {type(ckpt.state_dict).__name__}")
    for key, value in ckpt.state_dict.items():
        if not isinstance(key, str) or not _is_plain_tensor(value):
            raise refuse(f"state_dict entry {key!r:.80} is a {type(value).__name__}, not a tensor")
    if not isinstance(ckpt.class_names, list | tuple) or not all(
        isinstance(name, str) for name in ckpt.class_names
    ):
        raise refuse("'class_names' must be a list of strings")
    ckpt.class_names = list(ckpt.class_names)
    if not isinstance(ckpt.provenance, dict):
        raise refuse(f"'provenance' must be a dict, got {type(ckpt.provenance).__name__}")
    for key in ("pruning", "method_state"):
        value = getattr(ckpt, key)
        if value is not None and not isinstance(value, dict):
            raise refuse(f"{key!r} must be a dict or null, got {type(value).__name__}")
    if ckpt.masks is not None and not (
        isinstance(ckpt.masks, dict)
        and all(isinstance(k, str) and _is_plain_tensor(v) for k, v in ckpt.masks.items())
    ):
        raise refuse("'masks' must map tensor names to tensors")
    try:
        config = ckpt.arch_config
    except GcnshrinkError:
        return ckpt  # a bad config value is refused, in one line, before the model is built
    if ckpt.class_names and len(ckpt.class_names) != config.num_classes:
        raise refuse(
            f"{len(ckpt.class_names)} class names for a model of {config.num_classes} classes"
        )
    return ckpt


def _is_plain_tensor(value: object) -> bool:
    """A dense CPU tensor (no sparse, meta or other exotic layouts from an edited file)."""
    return (
        isinstance(value, torch.Tensor)
        and value.layout == torch.strided
        and value.device.type == "cpu"
        and not value.is_quantized
    )


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
def unwrap_state_dict(obj, path: Path, upstream: bool = True) -> dict[str, torch.Tensor]:
    """Find the tensor mapping in a foreign checkpoint and strip shared wrapper prefixes
    (``upstream=False``, a user's own model: only DataParallel's ``module.``, whose key names are
    the user's module's own)."""
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
    if not upstream:
        if all(k.startswith("module.") for k in state):
            state = {k.removeprefix("module."): v for k, v in state.items()}
        return state
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
    state = unwrap_state_dict(obj, path, upstream=not is_callable_spec(arch))
    lay = get_layout(layout) if layout else None
    if is_callable_spec(arch):
        # a user's own module: its state dict as it is, the config from --arch and --arch-config
        cls = model_class(USER_ARCH)
        cfg = user_config(arch, config, lay, num_classes)
    elif config is not None:
        cls = model_class(arch if arch is not None else recognize_architecture(state))
        state = cls.rename_foreign(state)
        cfg = dict(config)
    else:
        cls = model_class(arch if arch is not None else recognize_architecture(state))
        try:
            cfg, state = cls.import_state(state, lay, num_classes)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            # reading widths off the tensors of an edited or truncated file: a missing key or a
            # tensor of the wrong rank is bad input, one line naming it
            what = f"no tensor {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
            raise GcnshrinkError(
                f"{path}: its tensors do not make a {cls.arch} model ({what}); pass --arch if it "
                "is another architecture"
            ) from None
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
