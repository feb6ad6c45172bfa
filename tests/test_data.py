"""Dataset loading: every reader on small files written in the real format, splits, refusals."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from gcnshrink.data import SkeletonData, load_data
from gcnshrink.data.common import resample_sequence
from gcnshrink.data.safe_pickle import safe_load_pickle
from gcnshrink.errors import GcnshrinkError, GcnshrinkNotice
from gcnshrink.layouts import get_layout

RNG = np.random.default_rng(0)


def random_x(n: int, c: int = 3, t: int = 8, v: int = 25, m: int = 2) -> np.ndarray:
    return RNG.normal(size=(n, c, t, v, m)).astype(np.float32)


def balanced_labels(n: int, classes: int) -> np.ndarray:
    return np.arange(n) % classes


# --------------------------------------------------------------------------- splits and resampling


def test_resample_sequence_interpolates_linearly_and_keeps_end_points():
    seq = np.arange(5, dtype=np.float32)[:, None] * np.array([[1.0, 10.0]], dtype=np.float32)
    out = resample_sequence(seq, 9)
    assert out.shape == (9, 2)
    np.testing.assert_allclose(out[:, 0], np.linspace(0, 4, 9), atol=1e-6)
    np.testing.assert_allclose(out[:, 1], np.linspace(0, 40, 9), atol=1e-5)
    assert resample_sequence(seq[:1], 4).shape == (4, 2)


def test_validation_is_carved_stratified_and_deterministic(tmp_path):
    path = tmp_path / "d.npz"
    y_train = np.repeat(np.arange(4), [10, 20, 30, 40])
    np.savez(
        path,
        x_train=random_x(100),
        y_train=y_train,
        x_test=random_x(12),
        y_test=balanced_labels(12, 4),
    )
    a = load_data(str(path), seed=1, val_fraction=0.2)
    b = load_data(str(path), seed=1, val_fraction=0.2)
    c = load_data(str(path), seed=2, val_fraction=0.2)
    assert torch.bincount(a.y_val).tolist() == [2, 4, 6, 8]
    assert torch.bincount(a.y_train).tolist() == [8, 16, 24, 32]
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.x_train, b.x_train)
    assert not torch.equal(a.x_val, c.x_val)
    # the test split is the file's, whatever the seed
    assert torch.equal(a.x_test, c.x_test) and torch.equal(a.y_test, c.y_test)
    # train and val are disjoint and together are the file's train split
    together = torch.cat([a.x_train, a.x_val])
    assert len(together) == 100
    assert len(torch.unique(together[:, 0, 0, 0, 0])) == 100
    none = load_data(str(path), val_fraction=0.0)
    assert len(none.y_val) == 0 and len(none.y_train) == 100


def test_bad_arguments_are_refused():
    with pytest.raises(GcnshrinkError, match="val_fraction"):
        load_data("synthetic:sbu?train=16&test=8", val_fraction=1.0)
    with pytest.raises(GcnshrinkError, match="frames"):
        load_data("synthetic:sbu?train=16&test=8", frames=0)


# --------------------------------------------------------------------------- synthetic data


def test_synthetic_hands_shapes_layout_and_balance():
    data = load_data("synthetic:hands")
    assert isinstance(data, SkeletonData)
    assert data.layout.name == "hand21" and data.layout.persons == 1
    assert (data.in_channels, data.frames, data.num_joints, data.persons) == (3, 32, 21, 1)
    assert data.num_classes >= 10 and len(data.class_names) == data.num_classes
    assert 600 <= len(data.y_train) + len(data.y_val) <= 1200
    assert 300 <= len(data.y_test) <= 600
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    for y in (torch.cat([data.y_train, data.y_val]), data.y_test, data.y_val):
        counts = torch.bincount(y, minlength=data.num_classes)
        assert counts.max() - counts.min() <= 1
    assert torch.isfinite(data.x_train).all()
    assert data.spec == "synthetic:hands"


def test_synthetic_sbu_shapes_and_class_names():
    data = load_data("synthetic:sbu")
    assert data.layout.name == "sbu15" and data.layout.persons == 2
    assert (data.in_channels, data.frames, data.num_joints, data.persons) == (3, 32, 15, 2)
    assert data.class_names[:2] == ["approaching", "departing"]
    assert data.num_classes == 8
    assert 300 <= len(data.y_train) + len(data.y_val) + len(data.y_test) <= 500
    counts = torch.bincount(data.y_test, minlength=8)
    assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("name", ["hands", "sbu"])
def test_synthetic_is_bit_identical_per_spec_and_changes_with_its_seed(name):
    spec = f"synthetic:{name}?train=60&test=30"
    a, b = load_data(spec), load_data(spec)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, f"x_{split}"), getattr(b, f"x_{split}"))
        assert torch.equal(getattr(a, f"y_{split}"), getattr(b, f"y_{split}"))
    other = load_data(f"{spec}&seed=3")
    assert not torch.equal(a.x_test, other.x_test)
    # the data seed only chooses the validation samples; the test set belongs to the spec
    reseeded = load_data(spec, seed=5)
    assert torch.equal(a.x_test, reseeded.x_test)
    # a different train size leaves the test set alone
    assert torch.equal(load_data(f"synthetic:{name}?train=40&test=30").x_test, a.x_test)


def test_synthetic_frames_option_and_unknown_names():
    assert load_data("synthetic:hands?train=30&test=14", frames=20).frames == 20
    with pytest.raises(GcnshrinkError, match="unknown synthetic dataset 'feet'"):
        load_data("synthetic:feet")
    with pytest.raises(GcnshrinkError, match="unknown option 'size'"):
        load_data("synthetic:hands?size=3")
    with pytest.raises(GcnshrinkError, match="not an integer"):
        load_data("synthetic:hands?train=many")


# --------------------------------------------------------------------------- gcnshrink .npz


def test_own_npz_with_edges_layout_val_and_class_names(tmp_path):
    path = tmp_path / "own.npz"
    edges = np.array([[1, 0], [2, 1], [3, 1]])
    np.savez(
        path,
        x_train=random_x(10, c=2, t=6, v=4, m=1),
        y_train=balanced_labels(10, 3),
        x_val=random_x(4, c=2, t=6, v=4, m=1),
        y_val=balanced_labels(4, 3),
        x_test=random_x(5, c=2, t=9, v=4, m=1),
        y_test=balanced_labels(5, 3),
        edges=edges,
        layout="mini4",
        class_names=np.array(["a", "b", "c"]),
    )
    data = load_data(str(path))
    assert data.layout.name == "mini4"
    assert data.layout.edges == ((1, 0), (2, 1), (3, 1))
    assert (data.layout.num_joints, data.layout.persons) == (4, 1)
    assert data.class_names == ["a", "b", "c"]
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (10, 4, 5)
    # the file's own val split is used as it is, and test is brought to train's T
    assert data.x_test.shape == (5, 2, 6, 4, 1)
    assert load_data(f"npz:{path}", frames=12).x_train.shape == (10, 2, 12, 4, 1)


def test_own_npz_layout_by_name_or_guessed_from_joints(tmp_path):
    named = tmp_path / "named.npz"
    x, y = random_x(6, v=25, m=1), balanced_labels(6, 2)
    np.savez(named, x_train=x, y_train=y, x_test=x, y_test=y, layout="ntu25")
    data = load_data(str(named))
    assert data.layout.name == "ntu25" and data.layout.persons == 1
    assert data.layout.edges == get_layout("ntu25").edges
    guessed = tmp_path / "guessed.npz"
    x = random_x(6, v=17, m=2)
    np.savez(guessed, x_train=x, y_train=y, x_test=x, y_test=y)
    assert load_data(str(guessed)).layout.name == "coco17"
    odd = tmp_path / "odd.npz"
    x = random_x(6, v=7, m=1)
    np.savez(odd, x_train=x, y_train=y, x_test=x, y_test=y)
    with pytest.raises(GcnshrinkError, match="V=7 matches no built-in layout"):
        load_data(str(odd))


def _write_npz(path, **overrides):
    arrays = {
        "x_train": random_x(6),
        "y_train": balanced_labels(6, 2),
        "x_test": random_x(4),
        "y_test": balanced_labels(4, 2),
    }
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"y_test": None}, "missing key 'y_test'"),
        ({"x_train": np.full((6, 3, 8, 25, 2), np.nan, np.float32)}, "key 'x_train'.*NaN"),
        ({"y_train": np.arange(5)}, "key 'y_train': 5 labels for 6 samples"),
        ({"y_train": np.array([0, 1, -1, 0, 1, 0])}, "key 'y_train': negative class id"),
        ({"x_test": random_x(4, t=8, v=25).reshape(4, 3, 8, 50)}, "key 'x_test'.*5 axes"),
        ({"x_test": random_x(4, v=25, m=1)}, "key 'x_test' has \\(C, V, M\\)"),
        ({"class_names": np.array(["only"])}, "key 'y_train'.*out of range for 1 classes"),
        ({"edges": np.array([[0, 99]])}, "key 'edges'"),
        ({"y_train": np.array([0.5, 1, 0, 1, 0, 1])}, "whole numbers"),
        ({"x_val": random_x(2)}, "missing key 'y_val'"),
    ],
)
def test_own_npz_refusals_name_file_and_key(tmp_path, overrides, message):
    path = _write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(GcnshrinkError, match=message) as info:
        load_data(path)
    assert str(tmp_path / "bad.npz") in str(info.value)
    assert "\n" not in str(info.value)


def test_npz_object_arrays_are_refused(tmp_path):
    path = _write_npz(tmp_path / "obj.npz", y_train=np.array([0, 1, 0, 1, 0, {}], dtype=object))
    with pytest.raises(GcnshrinkError, match="refusing to load .*obj.npz"):
        load_data(path)


def test_missing_and_unrecognised_paths(tmp_path):
    with pytest.raises(GcnshrinkError, match="no such file"):
        load_data(str(tmp_path / "nothing.npz"))
    with pytest.raises(GcnshrinkError, match="file not found"):
        load_data(f"npz:{tmp_path / 'nothing.npz'}")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(GcnshrinkError, match="cannot tell the format"):
        load_data(str(tmp_path / "notes.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(GcnshrinkError, match="folder is not ST-GCN"):
        load_data(str(tmp_path / "empty"))
    with pytest.raises(GcnshrinkError, match="not key=value"):
        load_data("synthetic:hands?train")


# --------------------------------------------------------------------------- CTR-GCN .npz


def ctrgcn_arrays(x5: np.ndarray, y: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, T, V, M) -> CTR-GCN's (N, T, M*V*C) with persons outermost, plus one-hot labels."""
    n, c, t, v, m = x5.shape
    flat = x5.transpose(0, 2, 4, 3, 1).reshape(n, t, m * v * c)
    return flat, np.eye(classes, dtype=np.float32)[y]


def test_ctrgcn_npz_is_detected_and_unflattened(tmp_path):
    x_train, x_test = random_x(8), random_x(4)
    y_train, y_test = balanced_labels(8, 5), balanced_labels(4, 5)
    path = tmp_path / "ntu.npz"
    xa, ya = ctrgcn_arrays(x_train, y_train, 5)
    xb, yb = ctrgcn_arrays(x_test, y_test, 5)
    np.savez(path, x_train=xa, y_train=ya, x_test=xb, y_test=yb)
    data = load_data(str(path), val_fraction=0.0)
    assert data.layout.name == "ntu25" and data.persons == 2 and data.num_classes == 5
    np.testing.assert_array_equal(data.x_train.numpy(), x_train)
    np.testing.assert_array_equal(data.x_test.numpy(), x_test)
    np.testing.assert_array_equal(data.y_test.numpy(), y_test)
    assert torch.equal(load_data(f"ctrgcn:{path}", val_fraction=0.0).x_train, data.x_train)


def test_ctrgcn_refusals(tmp_path):
    x, y = ctrgcn_arrays(random_x(4), balanced_labels(4, 3), 3)
    bad_hot = tmp_path / "hot.npz"
    y2 = y.copy()
    y2[0, 1] = 1.0
    np.savez(bad_hot, x_train=x, y_train=y2, x_test=x, y_test=y)
    with pytest.raises(GcnshrinkError, match="hot.npz: key 'y_train': rows must be one-hot"):
        load_data(str(bad_hot))
    bad_width = tmp_path / "width.npz"
    np.savez(bad_width, x_train=x[:, :, :-1], y_train=y, x_test=x, y_test=y)
    with pytest.raises(GcnshrinkError, match="key 'x_train' has 149 values per frame"):
        load_data(f"ctrgcn:{bad_width}")


# --------------------------------------------------------------------------- ST-GCN / 2s-AGCN


def write_stgcn(folder, x_train, y_train, x_val, y_val, protocol=4):
    folder.mkdir(exist_ok=True)
    for split, x, y in (("train", x_train, y_train), ("val", x_val, y_val)):
        np.save(folder / f"{split}_data_joint.npy", x)
        names = [f"S001C001P001R001A{i:03d}.skeleton" for i in range(len(y))]
        with open(folder / f"{split}_label.pkl", "wb") as f:
            pickle.dump((names, y), f, protocol=protocol)


def test_stgcn_folder_val_files_are_the_test_split(tmp_path):
    folder = tmp_path / "ntu"
    x_train, x_val = random_x(10, t=12, v=18), random_x(4, t=12, v=18)
    labels = [np.int64(i % 3) for i in range(10)]  # numpy scalars, as some scripts write them
    write_stgcn(folder, x_train, labels, x_val, [0, 1, 2, 0], protocol=2)
    data = load_data(str(folder), val_fraction=0.0)
    assert data.layout.name == "openpose18" and data.frames == 12
    np.testing.assert_array_equal(data.x_test.numpy(), x_val)
    assert data.y_test.tolist() == [0, 1, 2, 0]
    assert data.y_train.tolist() == [i % 3 for i in range(10)]
    assert load_data(f"stgcn:{folder}?layout=openpose18").num_classes == 3


def test_stgcn_resampling_ignores_zero_padding(tmp_path):
    folder = tmp_path / "padded"
    x = np.zeros((2, 3, 20, 25, 2), dtype=np.float32)
    ramp = np.arange(1, 11, dtype=np.float32)  # 10 real frames, then 10 frames of zero padding
    x[:, :, :10] = ramp[None, None, :, None, None]
    write_stgcn(folder, x, [0, 1], x, [0, 1])
    data = load_data(f"stgcn:{folder}", frames=4, val_fraction=0.0)
    np.testing.assert_allclose(data.x_train[0, 0, :, 0, 0].numpy(), [1.0, 4.0, 7.0, 10.0])


def test_stgcn_refusals(tmp_path):
    folder = tmp_path / "short"
    write_stgcn(folder, random_x(4), [0, 1, 0], random_x(2), [0, 1])
    with pytest.raises(GcnshrinkError, match="train_label.pkl: labels: 3 labels for 4 samples"):
        load_data(str(folder))
    (folder / "val_label.pkl").unlink()
    write_stgcn(folder, random_x(4), [0, 1, 0, 1], random_x(2), [0, 1])
    (folder / "val_data_joint.npy").unlink()
    with pytest.raises(GcnshrinkError, match="val_data_joint.npy: file not found"):
        load_data(f"stgcn:{folder}")


# --------------------------------------------------------------------------- pyskl annotations


def pyskl_annotation(frame_dir, label, persons, frames, joints=25, channels=3, score=False):
    ann = {
        "frame_dir": frame_dir,
        "label": label,
        "total_frames": frames,
        "keypoint": RNG.normal(size=(persons, frames, joints, channels)).astype(np.float16),
    }
    if score:
        ann["keypoint_score"] = RNG.random((persons, frames, joints)).astype(np.float16)
        ann["img_shape"] = (1080, 1920)
    return ann


def write_pyskl(path, annotations, split):
    with open(path, "wb") as f:
        pickle.dump({"split": split, "annotations": annotations}, f, protocol=2)  # as mmcv does


def test_pyskl_split_persons_padding_and_resampling(tmp_path):
    anns = [pyskl_annotation(f"clip{i}", i % 3, 1 + i % 2, 30 + 7 * i) for i in range(9)]
    path = tmp_path / "ntu60_3danno.pkl"
    write_pyskl(
        path,
        anns,
        {
            "xsub_train": [f"clip{i}" for i in range(6)],
            "xsub_val": ["clip6", "clip7", "clip8"],
            "xview_train": ["clip0"],
            "xview_val": ["clip1"],
        },
    )
    data = load_data(f"pyskl:{path}?split=xsub", frames=16, val_fraction=0.0)
    assert data.x_train.shape == (6, 3, 16, 25, 2) and data.x_test.shape == (3, 3, 16, 25, 2)
    assert data.layout.name == "ntu25" and data.layout.persons == 2
    assert data.y_test.tolist() == [0, 1, 2]
    # clip0 has one person: the second is zero padding; its first/last frames are kept exactly
    assert (data.x_train[0, ..., 1] == 0).all()
    first = anns[0]["keypoint"].astype(np.float32)  # [M, T, V, C]
    np.testing.assert_allclose(data.x_train[0, :, 0, :, 0].numpy(), first[0, 0].T, rtol=1e-6)
    np.testing.assert_allclose(data.x_train[0, :, -1, :, 0].numpy(), first[0, -1].T, rtol=1e-6)
    assert load_data(str(path) + "?split=xview").x_test.shape[0] == 1
    with pytest.warns(GcnshrinkNotice, match="has splits xsub, xview; using xsub"):
        assert load_data(str(path), frames=16).x_test.shape[0] == 3  # several: xsub, said
    others = {"xview_train": ["clip0"], "xview_val": ["clip1"], "xset_train": [], "xset_val": []}
    write_pyskl(tmp_path / "no_xsub.pkl", anns, others)
    with pytest.raises(GcnshrinkError, match="choose a split with \\?split=NAME"):
        load_data(str(tmp_path / "no_xsub.pkl"))  # several, none of them xsub
    with pytest.raises(GcnshrinkError, match="no split 'xset_train'"):
        load_data(f"{path}?split=xset")


def test_pyskl_2d_keypoints_get_their_score_channel(tmp_path):
    anns = [
        pyskl_annotation(f"v{i}", i % 2, 1, 20, joints=17, channels=2, score=True) for i in range(4)
    ]
    path = tmp_path / "gym.pkl"
    write_pyskl(path, anns, {"train": ["v0", "v1", "v2"], "test": ["v3"]})
    data = load_data(f"{path}?train=train&test=test")
    assert data.in_channels == 3 and data.layout.name == "coco17" and data.frames == 64
    with pytest.raises(GcnshrinkError, match="lists 'v9', which has no annotation"):
        write_pyskl(path, anns, {"a_train": ["v9"], "a_val": ["v3"]})
        load_data(str(path))


# --------------------------------------------------------------------------- pickles that run code


class RunsCode:
    """Unpickling this calls os.system, which writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    label_dir = tmp_path / "stgcn"
    write_stgcn(label_dir, random_x(2), [0, 1], random_x(2), [0, 1])
    with open(label_dir / "train_label.pkl", "wb") as f:
        pickle.dump((["a", "b"], [0, RunsCode(marker)]), f)
    with pytest.raises(GcnshrinkError, match="refusing to load .*train_label.pkl: it references"):
        load_data(str(label_dir))
    anno = tmp_path / "evil.pkl"
    with open(anno, "wb") as f:
        pickle.dump({"split": {}, "annotations": [RunsCode(marker)]}, f)
    with pytest.raises(
        GcnshrinkError, match=r"it references (posix|os|nt)\.system, which could run code"
    ):
        load_data(f"pyskl:{anno}")
    assert not marker.exists()
    with open(anno, "wb") as f:
        pickle.dump(eval, f)  # a bare reference to a builtin is refused too
    with pytest.raises(GcnshrinkError, match="builtins.eval"):
        safe_load_pickle(anno)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_plain_data_and_numpy_arrays_unpickle(tmp_path, protocol):
    from collections import OrderedDict

    value = {
        "f16": np.arange(6, dtype=np.float16).reshape(2, 3),
        "names": np.array(["a", "bc"], dtype=object),
        "scalar": np.int64(7),
        "ordered": OrderedDict(a=1),
        "set": {1, 2},
        "bytes": b"\x00\xff",
    }
    path = tmp_path / "ok.pkl"
    with open(path, "wb") as f:
        pickle.dump(value, f, protocol=protocol)
    loaded = safe_load_pickle(path)
    np.testing.assert_array_equal(loaded["f16"], value["f16"])
    assert loaded["f16"].dtype == np.float16
    assert loaded["names"].tolist() == ["a", "bc"] and loaded["scalar"] == 7
    assert loaded["ordered"] == value["ordered"] and loaded["set"] == {1, 2}
    assert loaded["bytes"] == b"\x00\xff"
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(GcnshrinkError, match="junk.pkl: not a readable pickle"):
        safe_load_pickle(tmp_path / "junk.pkl")


# --------------------------------------------------------------------------- SBU folder

SBU_SETS = [
    "s01s02", "s01s03", "s01s07", "s02s01", "s02s03", "s02s06", "s02s07", "s03s02", "s03s04",
    "s03s05", "s03s06", "s04s02", "s04s03", "s04s06", "s05s02", "s05s03", "s06s02", "s06s03",
    "s06s04", "s07s01", "s07s03",
]  # fmt: skip


def write_sbu_sequence(path, frames: int, seed: int) -> np.ndarray:
    values = np.random.default_rng(seed).random((frames, 90))
    path.mkdir(parents=True)
    lines = [f"{t + 1}," + ",".join(f"{v:.6f}" for v in row) + "," for t, row in enumerate(values)]
    (path / "skeleton_pos.txt").write_text("\n".join(lines) + "\n")
    return np.round(values, 6)


def make_sbu(root, sets=SBU_SETS, actions=("01", "04", "08")):
    written = {}
    for s, set_name in enumerate(sets):
        for a, action in enumerate(actions):
            seq = root / set_name / action / "001"
            written[(set_name, action)] = write_sbu_sequence(seq, 5 + a + s % 3, 100 * s + a)
    return written


def test_sbu_folder_folds_labels_and_values(tmp_path):
    root = tmp_path / "SBU"
    written = make_sbu(root)
    data = load_data(f"sbu:{root}?fold=1", frames=6, val_fraction=0.0)
    assert data.layout.name == "sbu15" and data.persons == 2 and data.frames == 6
    assert data.class_names[6] == "shaking hands" and data.num_classes == 8
    # fold 1 holds sets 1, 9, 15 and 19 of the sorted set folders: 4 sets x 3 sequences
    assert len(data.y_test) == 12 and len(data.y_train) == 17 * 3
    assert sorted(set(data.y_test.tolist())) == [0, 3, 7]
    # s01s02 (set 1), action 01 has 5 frames; the first and last frames survive resampling
    raw = written[("s01s02", "01")].reshape(5, 2, 15, 3)
    np.testing.assert_allclose(data.x_test[0, :, 0].numpy(), raw[0].transpose(2, 1, 0), rtol=1e-6)
    np.testing.assert_allclose(data.x_test[0, :, -1].numpy(), raw[-1].transpose(2, 1, 0), rtol=1e-6)
    assert len(load_data(str(root) + "?fold=5").y_test) == 15  # auto-detected, 5 sets
    assert load_data(str(root)).frames == 32


def test_sbu_refusals_name_the_file(tmp_path):
    root = tmp_path / "SBU"
    make_sbu(root, sets=SBU_SETS[:3], actions=("02",))
    with pytest.raises(GcnshrinkError, match="found 3 set folders"):
        load_data(f"sbu:{root}")
    assert len(load_data(f"sbu:{root}?test_sets=2").y_test) == 1
    empty = root / "s01s02" / "02" / "002"
    empty.mkdir()
    (empty / "skeleton_pos.txt").write_text("")
    with pytest.raises(GcnshrinkError, match="002/skeleton_pos.txt: no frames"):
        load_data(f"sbu:{root}?test_sets=2")
    (empty / "skeleton_pos.txt").write_text("1,0.5,0.5\n")
    with pytest.raises(GcnshrinkError, match="skeleton_pos.txt: line 1 has 3 values, expected 91"):
        load_data(f"sbu:{root}?test_sets=2")


# --------------------------------------------------------------------------- FPHA folder

FPHA_ACTIONS = ["open_juice_bottle", "pour_milk", "charge_cell_phone"]


def make_fpha(root, test_header="Test"):
    pose = root / "Hand_pose_annotation_v1"
    lines = {"train": [], "test": []}
    written = {}
    for subject in (1, 2, 3):
        for label, action in enumerate(FPHA_ACTIONS):
            for rep in (1, 2):
                name = f"Subject_{subject}/{action}/{rep}"
                frames = 4 + rep + subject
                values = (
                    np.random.default_rng(subject * 10 + label + rep).random((frames, 63)) * 100
                )
                (pose / name).mkdir(parents=True)
                text = "\n".join(
                    f"{t} " + " ".join(f"{v:.4f}" for v in row) for t, row in enumerate(values)
                )
                (pose / name / "skeleton.txt").write_text(text + "\n")
                written[name] = np.round(values, 4)
                lines["train" if subject < 3 else "test"].append(f"{name} {label}")
    split = [f"Training {len(lines['train'])}", *lines["train"]]
    split += [f"{test_header} {len(lines['test'])}", *lines["test"]]
    (root / "data_split_action_recognition.txt").write_text("\n".join(split) + "\n")
    return written


def test_fpha_folder_split_names_and_values(tmp_path):
    root = tmp_path / "FPHA"
    written = make_fpha(root)
    data = load_data(str(root), frames=5, val_fraction=0.0)
    assert data.layout.name == "fpha21" and data.persons == 1
    assert data.class_names == FPHA_ACTIONS
    assert (len(data.y_train), len(data.y_test)) == (12, 6)
    assert data.y_test.tolist() == [0, 0, 1, 1, 2, 2]
    raw = written["Subject_3/open_juice_bottle/1"]  # first test line; joints in file order
    np.testing.assert_allclose(
        data.x_test[0, :, 0, :, 0].numpy(), raw[0].reshape(21, 3).T, rtol=1e-5
    )
    np.testing.assert_allclose(
        data.x_test[0, :, -1, :, 0].numpy(), raw[-1].reshape(21, 3).T, rtol=1e-5
    )
    assert load_data(f"fpha:{root}").frames == 32


def test_fpha_refusals_name_the_file(tmp_path):
    root = tmp_path / "FPHA"
    make_fpha(root, test_header="Testing")
    with pytest.raises(
        GcnshrinkError, match="data_split_action_recognition.txt: expected 'Test <count>'"
    ):
        load_data(f"fpha:{root}")
    make_fpha(tmp_path / "ok")
    target = tmp_path / "ok" / "Hand_pose_annotation_v1" / "Subject_1" / "pour_milk" / "2"
    (target / "skeleton.txt").write_text("0 1 2 3\n")
    with pytest.raises(
        GcnshrinkError, match="pour_milk/2/skeleton.txt: line 1 has 4 values, expected 64"
    ):
        load_data(f"fpha:{tmp_path / 'ok'}")
    (target / "skeleton.txt").unlink()
    with pytest.raises(GcnshrinkError, match="pour_milk/2/skeleton.txt: file not found"):
        load_data(f"fpha:{tmp_path / 'ok'}")
