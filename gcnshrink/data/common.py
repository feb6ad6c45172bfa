"""Pieces every dataset reader shares: the numpy-level result, spec options, checks, resampling."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from gcnshrink.errors import GcnshrinkError
from gcnshrink.layouts import Layout, get_layout

# Class ids at or above this are refused: the model contract's limit on classes
# (gcnshrink.models.base.MAX_CLASSES), and a file's labels become that many class names.
MAX_CLASSES = 1 << 20

# Layout guessed from the joint count when a file does not name one.
LAYOUT_BY_JOINTS = {25: "ntu25", 21: "hand21", 18: "openpose18", 17: "coco17", 15: "sbu15"}


@dataclass
class SplitArrays:
    """What a reader hands back: numpy arrays, x float32 (N, C, T, V, M), y int64 (N,).

    ``x_val``/``y_val`` are None when the source has no validation split (one is then carved from
    train). Splits may still differ in T here; load_data brings them to one length.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    layout: Layout
    class_names: list[str]
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None


class Options:
    """The ``?key=value&...`` part of a spec; every key must be read or it is reported as unknown."""

    def __init__(self, pairs: dict[str, str], spec: str) -> None:
        self._pairs = dict(pairs)
        self._spec = spec
        self._known: set[str] = set()

    def text(self, key: str, default: str | None = None) -> str | None:
        self._known.add(key)
        return self._pairs.get(key, default)

    def integer(
        self, key: str, default: int | None = None, minimum: int | None = None
    ) -> int | None:
        self._known.add(key)
        if key not in self._pairs:
            return default
        raw = self._pairs[key]
        try:
            value = int(raw)
        except ValueError:
            raise GcnshrinkError(
                f"data spec {self._spec!r}: option {key}={raw!r} is not an integer"
            ) from None
        if minimum is not None and value < minimum:
            raise GcnshrinkError(f"data spec {self._spec!r}: option {key} must be >= {minimum}")
        return value

    def reject_unknown(self) -> None:
        unknown = sorted(set(self._pairs) - self._known)
        if unknown:
            allowed = ", ".join(sorted(self._known)) or "none"
            raise GcnshrinkError(
                f"data spec {self._spec!r}: unknown option {unknown[0]!r} (allowed: {allowed})"
            )


def layout_for(num_joints: int, persons: int, name: str | None, where: str) -> Layout:
    """The named layout (or the one guessed from V), with ``persons`` set to the data's M."""
    if name is None:
        name = LAYOUT_BY_JOINTS.get(num_joints)
        if name is None:
            raise GcnshrinkError(
                f"{where}: no layout given and V={num_joints} matches no built-in layout; "
                "name one with ?layout=NAME or store an 'edges' array"
            )
    layout = get_layout(name)
    if layout.num_joints != num_joints:
        raise GcnshrinkError(
            f"{where}: layout {name!r} has {layout.num_joints} joints but the data has V={num_joints}"
        )
    return dataclasses.replace(layout, persons=persons)


def check_sample_shape(shape: tuple[int, ...], where: str) -> None:
    """(N, C, T, V, M) with at least one channel, frame, joint and person per sample."""
    if len(shape) != 5:
        raise GcnshrinkError(f"{where}: expected 5 axes (N, C, T, V, M), got shape {shape}")
    for axis, name in zip(shape[1:], ("channels", "frames", "joints", "persons"), strict=True):
        if axis == 0:
            raise GcnshrinkError(f"{where}: samples of shape {shape} have no {name}")


def check_x(x: np.ndarray, where: str, *, allow_empty: bool = False) -> np.ndarray:
    """A finite float32 (N, C, T, V, M) array, or a one-line GcnshrinkError naming ``where``.
    N = 0 is refused unless ``allow_empty`` (a validation split may be empty, train and test not)."""
    check_sample_shape(x.shape, where)
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise GcnshrinkError(f"{where}: expected real numbers, got dtype {x.dtype}")
    if len(x) == 0:
        if not allow_empty:
            raise GcnshrinkError(f"{where}: no samples (an empty split)")
        return np.zeros(x.shape, dtype=np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(x).reshape(x.shape[0], -1).all(axis=1)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        raise GcnshrinkError(
            f"{where}: {int((~finite).sum())} sample(s) contain NaN or inf (first: index {first})"
        )
    return x


def check_y(y: np.ndarray, num_samples: int, where: str) -> np.ndarray:
    """Integer class ids (N,) >= 0 matching ``num_samples``; float arrays must hold whole numbers."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise GcnshrinkError(f"{where}: expected a 1-D array of class ids, got shape {y.shape}")
    if np.issubdtype(y.dtype, np.floating):
        if not (np.isfinite(y).all() and (y == np.round(y)).all()):
            raise GcnshrinkError(f"{where}: class ids must be whole numbers")
    elif not np.issubdtype(y.dtype, np.integer):
        raise GcnshrinkError(f"{where}: expected integer class ids, got dtype {y.dtype}")
    if len(y) != num_samples:
        raise GcnshrinkError(f"{where}: {len(y)} labels for {num_samples} samples")
    if len(y) and not y.max() < MAX_CLASSES:  # also catches floats beyond int64
        raise GcnshrinkError(f"{where}: class id {y.max()} is implausibly large")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise GcnshrinkError(f"{where}: negative class id {int(y.min())}")
    return y


def check_labels_below(y: np.ndarray, num_classes: int, where: str) -> None:
    if len(y) and y.max() >= num_classes:
        raise GcnshrinkError(
            f"{where}: class id {int(y.max())} is out of range for {num_classes} classes"
        )


def resample_sequence(seq: np.ndarray, frames: int) -> np.ndarray:
    """Linear interpolation along axis 0 from its length L to ``frames`` (end points kept)."""
    length = seq.shape[0]
    if length == frames:
        return seq.astype(np.float32, copy=False)
    if length == 1:
        return np.repeat(seq, frames, axis=0).astype(np.float32, copy=False)
    position = np.linspace(0.0, length - 1, frames)
    lower = np.floor(position).astype(np.int64)
    upper = np.minimum(lower + 1, length - 1)
    weight = (position - lower).reshape((frames,) + (1,) * (seq.ndim - 1))
    out = seq[lower] * (1.0 - weight) + seq[upper] * weight
    return out.astype(np.float32)


def resample_padded(x: np.ndarray, frames: int) -> np.ndarray:
    """Resample (N, C, T, V, M) to T=``frames``, per sample over its frames up to the last non-zero one.

    Array files (ST-GCN, CTR-GCN) pad short sequences with zero frames at the end; stretching the
    padding along with the motion would distort every short sequence, so it is cut off first.
    """
    out = np.zeros(x.shape[:2] + (frames,) + x.shape[3:], dtype=np.float32)
    for i in range(x.shape[0]):
        sample = np.asarray(x[i], dtype=np.float32)  # (C, T, V, M)
        active = np.flatnonzero((sample != 0).any(axis=(0, 2, 3)))  # NaN counts as data
        if len(active) == 0:
            continue
        valid = sample[:, : active[-1] + 1]
        out[i] = np.moveaxis(resample_sequence(np.moveaxis(valid, 1, 0), frames), 0, 1)
    return out


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): about ``fraction`` of every class held out, chosen by ``seed``.

    Each class keeps at least one sample on the train side, and gives at least one to the held-out
    side when it has two or more and ``fraction`` > 0, so small classes are not silently dropped.
    """
    rng = np.random.default_rng(seed)
    held_out: list[np.ndarray] = []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        count = int(round(fraction * len(members)))
        if fraction > 0 and len(members) >= 2:
            count = max(count, 1)
        count = min(count, len(members) - 1)
        held_out.append(members[:count])
    held = np.sort(np.concatenate(held_out)) if held_out else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(y)), held)
    return keep, held


# The 8 actions of SBU Kinect Interaction, in the dataset's folder order 01..08 (also the
# classes of synthetic:sbu).
SBU_CLASSES = [
    "approaching",
    "departing",
    "kicking",
    "punching",
    "pushing",
    "hugging",
    "shaking hands",
    "exchanging",
]
