"""SkeletonData, the one in-memory dataset type, and load_data, which turns a spec string into it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gcnshrink.data import readers, synthetic
from gcnshrink.data.common import Options, SplitArrays, resample_padded, stratified_split
from gcnshrink.errors import GcnshrinkError
from gcnshrink.layouts import Layout

KINDS = ("synthetic", *readers.READERS)


@dataclass
class SkeletonData:
    """Train/val/test skeleton sequences, x float32 (N, C, T, V, M), y int64 (N,) class ids.

    All splits share C, T, V and M; ``layout`` describes V joints and M persons; ``spec`` is the
    string the data was loaded from, so a checkpoint can record where its data came from.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    layout: Layout
    class_names: list[str]
    spec: str

    def __post_init__(self) -> None:
        shape = tuple(self.x_train.shape[1:])
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dim() != 5 or tuple(x.shape[1:]) != shape:
                raise GcnshrinkError(
                    f"data {self.spec!r}: x_{split} has shape {tuple(x.shape)}, expected (N, *{shape})"
                )
            if y.shape != (x.shape[0],):
                raise GcnshrinkError(
                    f"data {self.spec!r}: y_{split} has shape {tuple(y.shape)} for {x.shape[0]} samples"
                )
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.class_names)):
                raise GcnshrinkError(
                    f"data {self.spec!r}: y_{split} holds ids outside 0..{len(self.class_names) - 1}"
                )
        if self.layout.num_joints != self.num_joints or self.layout.persons != self.persons:
            raise GcnshrinkError(
                f"data {self.spec!r}: layout {self.layout.name!r} has V={self.layout.num_joints}, "
                f"M={self.layout.persons} but the data has V={self.num_joints}, M={self.persons}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def frames(self) -> int:
        return int(self.x_train.shape[2])

    @property
    def num_joints(self) -> int:
        return int(self.x_train.shape[3])

    @property
    def persons(self) -> int:
        return int(self.x_train.shape[4])

    def check_trainable(self) -> None:
        """Refuse data that training cannot use: the loop picks its epoch on the validation split,
        which is empty when the file has none and no class has two training samples to carve one
        from."""
        if not len(self.y_val):
            raise GcnshrinkError(
                f"data {self.spec!r}: the validation split is empty (no class has two training "
                "samples to hold one out); training needs validation samples"
            )

    def summary(self) -> str:
        """One line for logs: sizes of the splits and of a sample."""
        return (
            f"{self.spec}: {len(self.y_train)} train / {len(self.y_val)} val / "
            f"{len(self.y_test)} test, {self.num_classes} classes, (C, T, V, M) = "
            f"({self.in_channels}, {self.frames}, {self.num_joints}, {self.persons}), "
            f"layout {self.layout.name}"
        )


def parse_spec(spec: str) -> tuple[str | None, str, dict[str, str]]:
    """``[KIND:]TARGET[?key=value&...]`` -> (kind or None, target, options)."""
    kind = None
    head, colon, rest = spec.partition(":")
    if colon and head.lower() in KINDS:
        kind, spec_body = head.lower(), rest
    else:
        spec_body = spec
    target, question, query = spec_body.rpartition("?")
    if not question:
        target, query = spec_body, ""
    options: dict[str, str] = {}
    for item in query.split("&") if query else []:
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise GcnshrinkError(f"data spec {spec!r}: option {item!r} is not key=value")
        if key in options:
            raise GcnshrinkError(f"data spec {spec!r}: option {key!r} given twice")
        options[key] = value
    if not target:
        raise GcnshrinkError(f"data spec {spec!r}: nothing to load (empty path or name)")
    return kind, target, options


def load_data(
    spec: str, *, seed: int = 0, frames: int | None = None, val_fraction: float = 0.2
) -> SkeletonData:
    """Load a dataset named by ``spec`` into a SkeletonData.

    Specs (``KIND:`` may be left out for paths; the format is then detected, and ``?options``
    follow the path or name):

    - ``synthetic:hands[?train=N&test=N&seed=S]``: built-in 21-joint hand gestures, 12 classes.
    - ``synthetic:sbu[?train=N&test=N&seed=S]``: built-in two-person interactions, 8 classes.
    - ``PATH.npz`` / ``npz:PATH``: gcnshrink's own arrays (x_* (N, C, T, V, M), y_* (N,)).
    - ``PATH.npz`` / ``ctrgcn:PATH[?layout=ntu25&channels=3]``: CTR-GCN's (N, T, M*V*C) + one-hot.
    - ``DIR`` / ``stgcn:DIR[?layout=NAME&stream=NAME]``: ST-GCN/2s-AGCN {train,val}_data.npy or
      _data_joint.npy (or the ``stream``: bone, joint_motion, bone_motion) + _label.pkl.
    - ``PATH.pkl`` / ``pyskl:PATH[?split=xsub|train=NAME&test=NAME&layout=NAME]``: pyskl annotations.
    - ``DIR`` / ``sbu:DIR[?fold=1..5|test_sets=1,9,...]``: raw SBU Kinect Interaction folder.
    - ``DIR`` / ``fpha:DIR[?split_file=PATH]``: raw FPHA folder with its action split file.

    ``frames`` resamples every sequence to that many frames (linear interpolation over time);
    without it array files keep their T, raw folders and synthetic data use 32, pyskl 64.
    A validation split the source lacks is carved from train: ``val_fraction`` of every class,
    chosen by ``seed``. The test split is never used for that. The data themselves depend only on
    the spec, never on ``seed``. Bad input raises GcnshrinkError. Details: docs/formats.md.
    """
    if frames is not None and frames < 1:
        raise GcnshrinkError(f"frames must be at least 1, got {frames}")
    if not 0.0 <= val_fraction < 1.0:
        raise GcnshrinkError(f"val_fraction must be in [0, 1), got {val_fraction}")
    kind, target, pairs = parse_spec(spec)
    options = Options(pairs, spec)
    if kind == "synthetic":
        arrays = synthetic.generate(target, options, frames)
    else:
        path = Path(target).expanduser()
        if kind is None:
            kind = readers.detect_kind(path)
        arrays = readers.READERS[kind](path, options, frames)
    return _finish(arrays, spec, seed=seed, frames=frames, val_fraction=val_fraction)


def _finish(
    arrays: SplitArrays, spec: str, *, seed: int, frames: int | None, val_fraction: float
) -> SkeletonData:
    """Bring splits to one T, carve validation if needed, and wrap in tensors."""
    for split in ("train", "test"):
        if not len(getattr(arrays, f"y_{split}")):
            raise GcnshrinkError(f"data {spec!r}: the {split} split is empty")
    target_frames = frames or arrays.x_train.shape[2]
    x_train = _to_frames(arrays.x_train, target_frames)
    x_test = _to_frames(arrays.x_test, target_frames)
    y_train, y_test = arrays.y_train, arrays.y_test
    if arrays.x_val is not None and arrays.y_val is not None:
        x_val, y_val = _to_frames(arrays.x_val, target_frames), arrays.y_val
    else:
        keep, held_out = stratified_split(y_train, val_fraction, seed)
        x_val, y_val = x_train[held_out], y_train[held_out]
        x_train, y_train = x_train[keep], y_train[keep]

    def tensor(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)

    return SkeletonData(
        x_train=tensor(x_train, torch.float32),
        y_train=tensor(y_train, torch.int64),
        x_val=tensor(x_val, torch.float32),
        y_val=tensor(y_val, torch.int64),
        x_test=tensor(x_test, torch.float32),
        y_test=tensor(y_test, torch.int64),
        layout=arrays.layout,
        class_names=list(arrays.class_names),
        spec=spec,
    )


def _to_frames(x: np.ndarray, frames: int) -> np.ndarray:
    return x if x.shape[2] == frames else resample_padded(x, frames)
