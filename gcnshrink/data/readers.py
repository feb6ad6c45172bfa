"""Readers for the dataset files users bring: array files and raw dataset folders.

Each reader takes the path, the spec's options and the requested frame count, and returns a
SplitArrays; every malformed input ends in a one-line GcnshrinkError naming the file (and key).
The formats are described in docs/formats.md.
"""

from __future__ import annotations

import math
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gcnshrink.data.common import (
    MAX_CLASSES,
    SBU_CLASSES,
    Options,
    SplitArrays,
    check_labels_below,
    check_sample_shape,
    check_x,
    check_y,
    layout_for,
    resample_padded,
    resample_sequence,
)
from gcnshrink.data.safe_pickle import safe_load_pickle
from gcnshrink.errors import GcnshrinkError, GcnshrinkNotice
from gcnshrink.layouts import get_layout, layout_from_edges

RAW_DEFAULT_FRAMES = 32  # SBU and FPHA sequences are resampled to this many frames by default
DEFAULT_PYSKL_SPLIT = "xsub"  # chosen when a pyskl file has several splits and none is named
PYSKL_DEFAULT_FRAMES = 64  # pyskl clips are longer (NTU: up to 300); 64 is CTR-GCN's choice

# The standard SBU 5-fold protocol, as 1-based set indices.
SBU_FOLDS = [
    [1, 9, 15, 19],
    [5, 7, 10, 16],
    [2, 3, 20, 21],
    [4, 6, 8, 11],
    [12, 13, 14, 17, 18],
]
SBU_SET_COUNT = 21

STGCN_FILES = ("train_data_joint.npy", "train_label.pkl", "val_data_joint.npy", "val_label.pkl")
STGCN_STREAMS = ("joint", "bone", "joint_motion", "bone_motion")
FPHA_SPLIT_FILE = "data_split_action_recognition.txt"
FPHA_POSE_DIR = "Hand_pose_annotation_v1"


def _class_names(count: int) -> list[str]:
    return [f"class_{i}" for i in range(count)]


# --------------------------------------------------------------------------- .npz files


# An .npz may expand to this many times its size, plus the slack: savez_compressed of skeleton
# data (floats, zero padding) compresses a few times at most; a file that inflates to far more
# is a zip bomb and is refused before anything is decompressed.
MAX_NPZ_EXPANSION = 32
NPZ_EXPANSION_SLACK = 256 * 2**20


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of every array of an .npz, from the zip directory and the .npy
    headers only, refusing in one line what would make reading it dangerous: a zip bomb, pickled
    (object) arrays, or a header that claims more bytes than its member holds (numpy would
    allocate that much before finding out)."""
    if not path.is_file():
        raise GcnshrinkError(f"{path}: file not found")
    size = path.stat().st_size
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            expanded = sum(info.file_size for info in members)
            if expanded > MAX_NPZ_EXPANSION * size + NPZ_EXPANSION_SLACK:
                raise GcnshrinkError(
                    f"refusing to load {path}: its {size:,} bytes expand to {expanded:,} "
                    "(a zip bomb?)"
                )
            for info in members:
                if not info.filename.endswith(".npy"):
                    continue
                key = info.filename[: -len(".npy")]
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                    else:
                        raise GcnshrinkError(f"{path}: {key!r} has .npy format {version}")
                if dtype.hasobject:
                    raise GcnshrinkError(
                        f"refusing to load {path}: {key!r} holds pickled data, which could run code"
                    )
                needed = math.prod(shape) * dtype.itemsize
                if needed > info.file_size:
                    raise GcnshrinkError(
                        f"{path}: {key!r} claims shape {shape} ({needed:,} bytes) but holds "
                        f"{info.file_size:,} bytes"
                    )
                headers[key] = (shape, dtype)
    except GcnshrinkError:
        raise
    except MemoryError:
        raise GcnshrinkError(f"{path}: not a readable .npz (too large for memory)") from None
    except Exception as exc:  # zipfile, zlib and numpy's header parser raise many types
        raise GcnshrinkError(f"{path}: not a readable .npz ({_one_line(exc)})") from None
    return headers


def _open_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an .npz, read with pickles disabled (object arrays are refused)."""
    headers = _npz_headers(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise GcnshrinkError(
                f"refusing to load {path}: it holds pickled data, which could run code"
            ) from None
        raise GcnshrinkError(f"{path}: not a readable .npz ({_one_line(exc)})") from None
    except MemoryError:
        raise GcnshrinkError(f"{path}: not a readable .npz (too large for memory)") from None
    except Exception as exc:  # zipfile, zlib and numpy raise many types on a broken archive
        raise GcnshrinkError(f"{path}: not a readable .npz ({_one_line(exc)})") from None
    for key, value in arrays.items():
        if key not in headers or not isinstance(value, np.ndarray):
            raise GcnshrinkError(f"{path}: member {key!r} is not a .npy array")
    return arrays


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _require_keys(arrays: dict[str, np.ndarray], keys: tuple[str, ...], path: Path) -> None:
    for key in keys:
        if key not in arrays:
            present = ", ".join(sorted(arrays)) or "none"
            raise GcnshrinkError(f"{path}: missing key {key!r} (keys present: {present})")


def _npz_member_ndim(path: Path, key: str) -> int | None:
    """Number of axes of ``key`` in an .npz, from the .npy header only (the arrays can be GBs)."""
    header = _npz_headers(path).get(key)
    return None if header is None else len(header[0])


def is_ctrgcn_npz(path: Path) -> bool:
    """CTR-GCN's files hold 3-D x (N, T, M*V*C) and one-hot 2-D y; gcnshrink's hold 5-D x, 1-D y."""
    return _npz_member_ndim(path, "x_train") == 3 and _npz_member_ndim(path, "y_train") == 2


def read_npz(path: Path, options: Options, frames: int | None) -> SplitArrays:
    """gcnshrink's own .npz: x_* (N, C, T, V, M), y_* (N,), optional x_val/y_val, edges, layout."""
    options.reject_unknown()
    arrays = _open_npz(path)
    _require_keys(arrays, ("x_train", "y_train", "x_test", "y_test"), path)
    has_val = "x_val" in arrays or "y_val" in arrays
    if has_val:
        _require_keys(arrays, ("x_val", "y_val"), path)
    split_names = ("train", "val", "test") if has_val else ("train", "test")

    xs, ys = {}, {}
    for split in split_names:
        where = f"{path}: key 'x_{split}'"
        xs[split] = check_x(arrays[f"x_{split}"], where, allow_empty=split == "val")
        ys[split] = check_y(arrays[f"y_{split}"], len(xs[split]), f"{path}: key 'y_{split}'")
    channels, _, joints, persons = xs["train"].shape[1:]
    for split in split_names:
        c, _, v, m = xs[split].shape[1:]
        if (c, v, m) != (channels, joints, persons):
            raise GcnshrinkError(
                f"{path}: key 'x_{split}' has (C, V, M) = {(c, v, m)} but 'x_train' has "
                f"{(channels, joints, persons)}"
            )

    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise GcnshrinkError(f"{path}: key 'class_names' must be a 1-D array of strings")
        class_names = [str(n) for n in names.tolist()]
    else:
        class_names = _class_names(1 + max(int(y.max()) for y in ys.values() if len(y)))
    for split in split_names:
        check_labels_below(ys[split], len(class_names), f"{path}: key 'y_{split}'")

    layout_name = None
    if "layout" in arrays:
        if arrays["layout"].ndim != 0 or arrays["layout"].dtype.kind not in "US":
            raise GcnshrinkError(f"{path}: key 'layout' must be a single string (a layout name)")
        layout_name = str(arrays["layout"][()])
    if "edges" in arrays:
        edges = arrays["edges"]
        if not np.issubdtype(edges.dtype, np.integer):
            raise GcnshrinkError(f"{path}: key 'edges' must be integers, got dtype {edges.dtype}")
        center = int(arrays["center"][()]) if "center" in arrays else 0
        try:
            layout = layout_from_edges(
                edges, joints, persons=persons, name=layout_name or "custom", center=center
            )
        except GcnshrinkError as exc:
            raise GcnshrinkError(f"{path}: key 'edges': {exc}") from None
    else:
        layout = layout_for(joints, persons, layout_name, f"{path}")

    return SplitArrays(
        x_train=xs["train"],
        y_train=ys["train"],
        x_test=xs["test"],
        y_test=ys["test"],
        x_val=xs.get("val"),
        y_val=ys.get("val"),
        layout=layout,
        class_names=class_names,
    )


def read_ctrgcn(path: Path, options: Options, frames: int | None) -> SplitArrays:
    """CTR-GCN's .npz: x_* (N, T, M*V*C) persons outermost, xyz innermost; y_* one-hot (N, K)."""
    layout_name = options.text("layout", "ntu25")
    channels = options.integer("channels", 3, minimum=1)
    options.reject_unknown()
    arrays = _open_npz(path)
    _require_keys(arrays, ("x_train", "y_train", "x_test", "y_test"), path)
    joints = get_layout(layout_name).num_joints

    xs, ys, persons, num_classes = {}, {}, None, None
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3:
            raise GcnshrinkError(
                f"{path}: key 'x_{split}' must have shape (N, T, M*V*C), got {x.shape}"
            )
        width = x.shape[2]
        if width % (joints * channels):
            raise GcnshrinkError(
                f"{path}: key 'x_{split}' has {width} values per frame, not a multiple of "
                f"V*C = {joints}*{channels} (layout {layout_name})"
            )
        m = width // (joints * channels)
        if persons is not None and m != persons:
            raise GcnshrinkError(f"{path}: key 'x_{split}' has M={m}, 'x_train' has M={persons}")
        persons = m
        # (N, T, M, V, C) -> (N, C, T, V, M), the layout CTR-GCN's own feeder produces
        x5 = x.reshape(x.shape[0], x.shape[1], m, joints, channels).transpose(0, 4, 1, 3, 2)
        xs[split] = check_x(x5, f"{path}: key 'x_{split}'")
        ys[split] = _one_hot_to_ids(y, len(x), f"{path}: key 'y_{split}'")
        if num_classes is not None and y.shape[1] != num_classes:
            raise GcnshrinkError(
                f"{path}: key 'y_{split}' has {y.shape[1]} classes, 'y_train' has {num_classes}"
            )
        num_classes = y.shape[1]

    return SplitArrays(
        x_train=xs["train"],
        y_train=ys["train"],
        x_test=xs["test"],
        y_test=ys["test"],
        layout=layout_for(joints, persons, layout_name, str(path)),
        class_names=_class_names(num_classes),
    )


def _one_hot_to_ids(y: np.ndarray, num_samples: int, where: str) -> np.ndarray:
    if y.ndim != 2:
        raise GcnshrinkError(f"{where}: expected one-hot labels (N, K), got shape {y.shape}")
    if len(y) != num_samples:
        raise GcnshrinkError(f"{where}: {len(y)} labels for {num_samples} samples")
    is_one_hot = np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()
    if not is_one_hot:
        raise GcnshrinkError(f"{where}: rows must be one-hot (a single 1, zeros elsewhere)")
    return y.argmax(axis=1).astype(np.int64)


# --------------------------------------------------------------------------- ST-GCN / 2s-AGCN


def _stgcn_array(path: Path, split: str, stream: str | None) -> Path:
    """The array of one split: ``{split}_data_{stream}.npy`` (2s-AGCN, MS-G3D), or without a
    stream the joint one, ``{split}_data_joint.npy``, else ST-GCN's own ``{split}_data.npy``."""
    if stream is not None:
        return path / f"{split}_data_{stream}.npy"
    joint = path / f"{split}_data_joint.npy"
    plain = path / f"{split}_data.npy"
    return plain if not joint.is_file() and plain.is_file() else joint


def read_stgcn(path: Path, options: Options, frames: int | None) -> SplitArrays:
    """ST-GCN / 2s-AGCN folder: {train,val}_data_joint.npy (N, C, T, V, M) + {train,val}_label.pkl.

    ST-GCN's own gendata scripts name the arrays {train,val}_data.npy; 2s-AGCN and MS-G3D add the
    bone and motion streams ({split}_data_bone.npy, ..._joint_motion, ..._bone_motion), read with
    ``?stream=NAME``. The "val" files are those repositories' test split.
    """
    layout_name = options.text("layout")
    stream = options.text("stream")
    options.reject_unknown()
    if stream is not None and stream not in STGCN_STREAMS:
        raise GcnshrinkError(
            f"{path}: unknown stream {stream!r} (streams: {', '.join(STGCN_STREAMS)})"
        )
    if not path.is_dir():
        raise GcnshrinkError(f"{path}: not a directory (expected {', '.join(STGCN_FILES)})")
    xs, ys = {}, {}
    arrays = {}
    for split, ours in (("train", "train"), ("val", "test")):
        npy = arrays[ours] = _stgcn_array(path, split, stream)
        if not npy.is_file():
            raise GcnshrinkError(f"{npy}: file not found")
        try:
            # mmap: these files are large (NTU: ~6 GB at T=300); resampling to fewer frames then
            # reads one sample at a time instead of holding the whole file in memory twice
            mapped = np.load(npy, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # numpy's header parser and mmap raise many types
            raise GcnshrinkError(f"{npy}: not a readable .npy array ({_one_line(exc)})") from None
        if not isinstance(mapped, np.ndarray):
            raise GcnshrinkError(f"{npy}: not a .npy array")
        check_sample_shape(mapped.shape, str(npy))  # before resampling: 0 frames stay refused
        if frames is not None and frames != mapped.shape[2]:
            x = resample_padded(mapped, frames)
        else:
            x = np.array(mapped, dtype=np.float32)  # a copy: tensors must not share the mmap
        xs[ours] = check_x(x, str(npy))
        ys[ours] = _read_label_pkl(path / f"{split}_label.pkl", len(xs[ours]))
    _, channels, _, joints, persons = xs["train"].shape
    if xs["test"].shape[1:2] + xs["test"].shape[3:] != (channels, joints, persons):
        raise GcnshrinkError(f"{arrays['test']}: (C, V, M) differs from {arrays['train'].name}")
    num_classes = 1 + max(int(y.max()) for y in ys.values() if len(y))
    return SplitArrays(
        x_train=xs["train"],
        y_train=ys["train"],
        x_test=xs["test"],
        y_test=ys["test"],
        layout=layout_for(joints, persons, layout_name, str(path)),
        class_names=_class_names(num_classes),
    )


def _read_label_pkl(path: Path, num_samples: int) -> np.ndarray:
    content = safe_load_pickle(path)
    if not (isinstance(content, (tuple, list)) and len(content) == 2):
        raise GcnshrinkError(f"{path}: expected a pickled pair (sample_names, labels)")
    names, labels = content
    if not all(isinstance(part, list | tuple | np.ndarray) for part in content):
        raise GcnshrinkError(f"{path}: sample names and labels must be lists")
    if len(names) != len(labels):
        raise GcnshrinkError(f"{path}: {len(names)} sample names but {len(labels)} labels")
    try:
        labels = np.asarray(labels)
    except ValueError:
        raise GcnshrinkError(f"{path}: labels are not a flat list of class ids") from None
    return check_y(labels, num_samples, f"{path}: labels")


# --------------------------------------------------------------------------- pyskl annotations


def read_pyskl(path: Path, options: Options, frames: int | None) -> SplitArrays:
    """pyskl annotation .pkl: {'split': {name: [frame_dir, ...]}, 'annotations': [{...}, ...]}."""
    prefix = options.text("split")
    train_name = options.text("train")
    test_name = options.text("test")
    layout_name = options.text("layout")
    options.reject_unknown()
    frames = frames or PYSKL_DEFAULT_FRAMES

    content = safe_load_pickle(path)
    if not (isinstance(content, dict) and "split" in content and "annotations" in content):
        raise GcnshrinkError(f"{path}: expected a dict with keys 'split' and 'annotations'")
    splits, annotations = content["split"], content["annotations"]
    if not isinstance(splits, dict) or not isinstance(annotations, (list, tuple)):
        raise GcnshrinkError(f"{path}: 'split' must be a dict and 'annotations' a list")
    train_name, test_name = _pyskl_split_names(path, splits, prefix, train_name, test_name)

    by_id = {}
    for index, ann in enumerate(annotations):
        if not isinstance(ann, dict) or "frame_dir" not in ann:
            raise GcnshrinkError(f"{path}: annotations[{index}] has no 'frame_dir'")
        if not isinstance(ann["frame_dir"], str):
            raise GcnshrinkError(
                f"{path}: annotations[{index}]['frame_dir'] must be a string, got "
                f"{type(ann['frame_dir']).__name__}"
            )
        by_id[ann["frame_dir"]] = ann
    for name in (train_name, test_name):
        listed = splits[name]
        if not isinstance(listed, list | tuple) or not all(isinstance(c, str) for c in listed):
            raise GcnshrinkError(f"{path}: split {name!r} must be a list of clip names (strings)")

    # split -> [(clip id, keypoints [M, T, V, C], label)]
    clips: dict[str, list[tuple[str, np.ndarray, int]]] = {}
    for ours, name in (("train", train_name), ("test", test_name)):
        clips[ours] = []
        for clip_id in splits[name]:
            ann = by_id.get(clip_id)
            where = f"{path}: annotation {clip_id!r}"
            if ann is None:
                raise GcnshrinkError(
                    f"{path}: split {name!r} lists {clip_id!r}, which has no annotation"
                )
            clips[ours].append((clip_id, _pyskl_keypoints(ann, where), _pyskl_label(ann, where)))
        if not clips[ours]:
            raise GcnshrinkError(f"{path}: split {name!r} is empty")

    everything = clips["train"] + clips["test"]
    joints, channels = everything[0][1].shape[2:]
    for clip_id, keypoint, _ in everything:
        if keypoint.shape[2:] != (joints, channels):
            raise GcnshrinkError(
                f"{path}: annotation {clip_id!r} has (V, C) = {keypoint.shape[2:]}, the first "
                f"clip has {(joints, channels)}"
            )
    persons = max(keypoint.shape[0] for _, keypoint, _ in everything)

    xs, ys = {}, {}
    for ours in ("train", "test"):
        x = np.zeros((len(clips[ours]), channels, frames, joints, persons), dtype=np.float32)
        for i, (_, keypoint, _) in enumerate(clips[ours]):
            # [M, T, V, C] -> (T, M, V, C) -> resampled -> (C, T, V, M); missing persons stay zero
            resampled = resample_sequence(keypoint.transpose(1, 0, 2, 3), frames)
            x[i, :, :, :, : keypoint.shape[0]] = resampled.transpose(3, 0, 2, 1)
        xs[ours] = x
        ys[ours] = np.asarray([label for _, _, label in clips[ours]], dtype=np.int64)
    num_classes = 1 + max(int(ys["train"].max()), int(ys["test"].max()))
    return SplitArrays(
        x_train=xs["train"],
        y_train=ys["train"],
        x_test=xs["test"],
        y_test=ys["test"],
        layout=layout_for(joints, persons, layout_name, str(path)),
        class_names=_class_names(num_classes),
    )


def _pyskl_split_names(
    path: Path, splits: dict, prefix: str | None, train: str | None, test: str | None
) -> tuple[str, str]:
    if prefix is not None:
        train, test = train or f"{prefix}_train", test or f"{prefix}_val"
    if train is None or test is None:
        prefixes = sorted(
            name[: -len("_train")]
            for name in splits
            if isinstance(name, str) and name.endswith("_train") and f"{name[:-6]}_val" in splits
        )
        if len(prefixes) > 1 and DEFAULT_PYSKL_SPLIT in prefixes:
            # NTU-60 and NTU-120 files hold xsub and xview/xset: cross-subject is the usual choice
            warnings.warn(
                GcnshrinkNotice(
                    f"{path} has splits {', '.join(prefixes)}; using {DEFAULT_PYSKL_SPLIT} "
                    "(choose another with ?split=NAME)"
                ),
                stacklevel=2,
            )
            prefixes = [DEFAULT_PYSKL_SPLIT]
        if len(prefixes) != 1:
            raise GcnshrinkError(
                f"{path}: choose a split with ?split=NAME (file has splits: "
                f"{', '.join(map(str, splits))})"
            )
        train, test = train or f"{prefixes[0]}_train", test or f"{prefixes[0]}_val"
    for name in (train, test):
        if name not in splits:
            raise GcnshrinkError(
                f"{path}: no split {name!r} (file has: {', '.join(map(str, splits))})"
            )
    return train, test


def _pyskl_keypoints(ann: dict, where: str) -> np.ndarray:
    """[M, T, V, C] float32; 2-D data gets its keypoint_score appended as channel C+1, as pyskl does."""
    if "keypoint" not in ann:
        raise GcnshrinkError(f"{where}: no 'keypoint' array")
    keypoint = np.asarray(ann["keypoint"])
    if keypoint.ndim != 4 or keypoint.dtype.kind not in "fiu":
        raise GcnshrinkError(
            f"{where}: 'keypoint' must be a numeric [M, T, V, C] array, got shape {keypoint.shape}"
        )
    if keypoint.shape[0] == 0 or keypoint.shape[1] == 0:
        raise GcnshrinkError(f"{where}: 'keypoint' has no persons or no frames {keypoint.shape}")
    keypoint = keypoint.astype(np.float32)
    if "keypoint_score" in ann:
        try:
            score = np.asarray(ann["keypoint_score"], dtype=np.float32)
        except (ValueError, TypeError):
            raise GcnshrinkError(f"{where}: 'keypoint_score' must be a numeric array") from None
        if score.shape != keypoint.shape[:3]:
            raise GcnshrinkError(
                f"{where}: 'keypoint_score' shape {score.shape} does not match keypoint "
                f"{keypoint.shape[:3]}"
            )
        keypoint = np.concatenate([keypoint, score[..., None]], axis=-1)
    if not np.isfinite(keypoint).all():
        raise GcnshrinkError(f"{where}: 'keypoint' contains NaN or inf")
    return keypoint


def _pyskl_label(ann: dict, where: str) -> int:
    label = ann.get("label")
    if label is None or isinstance(label, bool) or not np.issubdtype(type(label), np.integer):
        raise GcnshrinkError(f"{where}: 'label' must be an integer class id, got {label!r}")
    if label < 0:
        raise GcnshrinkError(f"{where}: negative 'label' {label}")
    if label >= MAX_CLASSES:
        raise GcnshrinkError(f"{where}: 'label' {label} is implausibly large")
    return int(label)


# --------------------------------------------------------------------------- raw text sequences


def _read_numeric_rows(path: Path, separator: str | None, width: int) -> np.ndarray:
    """Rows of ``width`` numbers (blank lines skipped); a clear error for empty or short files."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise GcnshrinkError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GcnshrinkError(f"{path}: cannot read ({exc})") from None
    rows = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        # SBU lines end with a trailing comma, giving an empty last field
        fields = [f for f in line.strip().split(separator) if f.strip()]
        if len(fields) != width:
            raise GcnshrinkError(
                f"{path}: line {line_number} has {len(fields)} values, expected {width} "
                "(frame index + coordinates)"
            )
        try:
            rows.append([float(f) for f in fields])
        except ValueError:
            raise GcnshrinkError(f"{path}: line {line_number} has a non-numeric value") from None
    if not rows:
        raise GcnshrinkError(f"{path}: no frames (empty file)")
    values = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(values).all():
        raise GcnshrinkError(f"{path}: contains NaN or inf")
    return values


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir())


# --------------------------------------------------------------------------- SBU Kinect Interaction


def is_sbu_dir(path: Path) -> bool:
    return path.is_dir() and any(path.glob("*/*/*/skeleton_pos.txt"))


def read_sbu(path: Path, options: Options, frames: int | None) -> SplitArrays:
    """SBU folder: <set>/<action 01..08>/<seq>/skeleton_pos.txt; the test sets come from ?fold=."""
    fold = options.integer("fold", 1, minimum=1)
    test_sets_text = options.text("test_sets")
    options.reject_unknown()
    frames = frames or RAW_DEFAULT_FRAMES
    if not path.is_dir():
        raise GcnshrinkError(f"{path}: not a directory (expected SBU set folders like s01s02)")

    # A set folder is one that holds action folders; its 1-based index is its place in sorted
    # order, which for the release's names s01s02, s01s03, ..., s07s03 is the usual numbering.
    sets = [d for d in _subdirs(path) if any(a.name.isdigit() for a in _subdirs(d))]
    if test_sets_text is not None:
        try:
            test_sets = {int(s) for s in test_sets_text.split(",")}
        except ValueError:
            raise GcnshrinkError(
                f"{path}: option test_sets={test_sets_text!r} must be comma-separated set numbers"
            ) from None
        if not test_sets or min(test_sets) < 1 or max(test_sets) > len(sets):
            raise GcnshrinkError(
                f"{path}: option test_sets={test_sets_text!r} must name sets 1..{len(sets)}"
            )
    else:
        if fold > len(SBU_FOLDS):
            raise GcnshrinkError(f"{path}: fold must be 1..{len(SBU_FOLDS)}, got {fold}")
        if len(sets) != SBU_SET_COUNT:
            raise GcnshrinkError(
                f"{path}: found {len(sets)} set folders, the 5-fold protocol needs all "
                f"{SBU_SET_COUNT}; pass ?test_sets=1,2,... to choose test sets yourself"
            )
        test_sets = set(SBU_FOLDS[fold - 1])

    xs: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    ys: dict[str, list[int]] = {"train": [], "test": []}
    for set_index, set_dir in enumerate(sets, start=1):
        split = "test" if set_index in test_sets else "train"
        for action_dir in _subdirs(set_dir):
            if not action_dir.name.isdigit():
                continue
            action = int(action_dir.name)
            if not 1 <= action <= len(SBU_CLASSES):
                raise GcnshrinkError(f"{action_dir}: action folder must be 01..08")
            for seq_dir in _subdirs(action_dir):
                rows = _read_numeric_rows(seq_dir / "skeleton_pos.txt", ",", 1 + 2 * 15 * 3)
                # drop the frame index; 90 numbers = person 1's 15 joints xyz, then person 2's
                joints = rows[:, 1:].reshape(len(rows), 2, 15, 3)  # (T, M, V, C)
                sequence = resample_sequence(joints, frames).transpose(3, 0, 2, 1)
                xs[split].append(sequence)
                ys[split].append(action - 1)
    for split in ("train", "test"):
        if not xs[split]:
            raise GcnshrinkError(f"{path}: no {split} sequences (test sets {sorted(test_sets)})")
    return SplitArrays(
        x_train=np.stack(xs["train"]),
        y_train=np.asarray(ys["train"], dtype=np.int64),
        x_test=np.stack(xs["test"]),
        y_test=np.asarray(ys["test"], dtype=np.int64),
        layout=get_layout("sbu15"),
        class_names=list(SBU_CLASSES),
    )


# --------------------------------------------------------------------------- FPHA


def is_fpha_dir(path: Path) -> bool:
    return path.is_dir() and ((path / FPHA_SPLIT_FILE).is_file() or (path / FPHA_POSE_DIR).is_dir())


def read_fpha(path: Path, options: Options, frames: int | None) -> SplitArrays:
    """FPHA root: Hand_pose_annotation_v1/Subject_s/<action>/<rep>/skeleton.txt + the split file."""
    split_file = options.text("split_file")
    options.reject_unknown()
    frames = frames or RAW_DEFAULT_FRAMES
    split_path = Path(split_file) if split_file else path / FPHA_SPLIT_FILE
    entries = _read_fpha_split(split_path)
    pose_root = path / FPHA_POSE_DIR

    names: dict[int, str] = {}
    for split in ("train", "test"):
        for sequence, label in entries[split]:
            action = sequence.split("/")[1]
            if names.setdefault(label, action) != action:
                raise GcnshrinkError(
                    f"{split_path}: label {label} is used for both {names[label]!r} and {action!r}"
                )
    num_classes = max(names) + 1
    missing = sorted(set(range(num_classes)) - set(names))
    if missing:
        raise GcnshrinkError(f"{split_path}: no sequence has label {missing[0]}")

    xs, ys = {}, {}
    for split in ("train", "test"):
        sequences = []
        for sequence, _ in entries[split]:
            rows = _read_numeric_rows(pose_root / sequence / "skeleton.txt", None, 1 + 21 * 3)
            joints = rows[:, 1:].reshape(len(rows), 1, 21, 3)  # (T, M, V, C), file joint order
            sequences.append(resample_sequence(joints, frames).transpose(3, 0, 2, 1))
        xs[split] = np.stack(sequences)
        ys[split] = np.asarray([label for _, label in entries[split]], dtype=np.int64)
    return SplitArrays(
        x_train=xs["train"],
        y_train=ys["train"],
        x_test=xs["test"],
        y_test=ys["test"],
        layout=get_layout("fpha21"),
        class_names=[names[i] for i in range(num_classes)],
    )


def _read_fpha_split(path: Path) -> dict[str, list[tuple[str, int]]]:
    """``Training N`` + N lines ``Subject_s/action/rep label``, then ``Test N`` + N lines."""
    try:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise GcnshrinkError(f"{path}: split file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GcnshrinkError(f"{path}: cannot read ({exc})") from None
    entries: dict[str, list[tuple[str, int]]] = {}
    position = 0
    for header, split in (("Training", "train"), ("Test", "test")):
        if position >= len(lines):
            raise GcnshrinkError(f"{path}: missing the '{header} <count>' line")
        fields = lines[position].split()
        if len(fields) != 2 or fields[0] != header or not fields[1].isdigit():
            raise GcnshrinkError(f"{path}: expected '{header} <count>', found {lines[position]!r}")
        count = int(fields[1])
        body = lines[position + 1 : position + 1 + count]
        if len(body) != count:
            raise GcnshrinkError(f"{path}: '{header} {count}' but only {len(body)} lines follow")
        entries[split] = [_parse_fpha_entry(line, path) for line in body]
        position += 1 + count
    if position != len(lines):
        raise GcnshrinkError(f"{path}: unexpected line {lines[position]!r} after the test list")
    return entries


def _parse_fpha_entry(line: str, path: Path) -> tuple[str, int]:
    fields = line.split()
    if len(fields) != 2 or len(fields[0].split("/")) != 3 or not fields[1].isdigit():
        raise GcnshrinkError(f"{path}: expected 'Subject_s/action/rep label', found {line!r}")
    if int(fields[1]) >= MAX_CLASSES:
        raise GcnshrinkError(f"{path}: label {fields[1]} is implausibly large")
    return fields[0], int(fields[1])


# --------------------------------------------------------------------------- dispatch

Reader = Callable[[Path, Options, "int | None"], SplitArrays]

READERS: dict[str, Reader] = {
    "npz": read_npz,
    "ctrgcn": read_ctrgcn,
    "stgcn": read_stgcn,
    "pyskl": read_pyskl,
    "sbu": read_sbu,
    "fpha": read_fpha,
}


def detect_kind(path: Path) -> str:
    """Which reader fits ``path`` when the spec has no ``KIND:`` prefix."""
    if not path.exists():
        raise GcnshrinkError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix == ".npz":
            return "ctrgcn" if is_ctrgcn_npz(path) else "npz"
        if path.suffix == ".pkl":
            return "pyskl"
        raise GcnshrinkError(
            f"{path}: cannot tell the format from the name; expected .npz or .pkl, or a folder"
        )
    if (path / STGCN_FILES[0]).is_file() or any(path.glob("train_data*.npy")):
        return "stgcn"
    if is_fpha_dir(path):
        return "fpha"
    if is_sbu_dir(path):
        return "sbu"
    raise GcnshrinkError(
        f"{path}: folder is not ST-GCN (train_data.npy or train_data_joint.npy), FPHA "
        f"({FPHA_SPLIT_FILE}) or SBU "
        "(<set>/<action>/<seq>/skeleton_pos.txt)"
    )
