"""Byte-mutation fuzzing of every file gcnshrink reads.

The promise under test (docs/security.md): a loader given any file either reads it or refuses it
with one :class:`~gcnshrink.errors.GcnshrinkError` line; nothing else escapes (no traceback, no
other exception type, no multi-line message).

- :func:`seed_files` writes one small valid file of each kind: a ``.pt`` checkpoint, dense and
  sparse safetensors exports, an ONNX model, an ``.npz`` dataset, a pyskl ``.pkl``, an ST-GCN
  folder and an SBU folder;
- :func:`mutants` corrupts one of them: flipped bytes, truncation, inserted bytes, runs of 0x00,
  0xff or noise, copied blocks, extreme integers, and for zip-based files (``.pt``, ``.npz``) a
  corrupted member rezipped with valid checksums, which reaches the unpickler and the ``.npy``
  header instead of the zip reader's CRC check;
- :func:`fuzz` runs every loader on that many mutants of each kind, seeded, and reports the
  outcome counts and each unclean failure with what reproduces it.

``tests/test_fuzz.py`` runs a few hundred cases; ``benchmarks/fuzz_loaders.py`` runs thousands.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import random
import shutil
import struct
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gcnshrink.errors import GcnshrinkError

KINDS = ("pt", "safetensors", "sparse", "onnx", "npz", "pkl", "stgcn", "sbu")


def tiny_checkpoint(num_classes: int = 3):
    """A small ``gcn`` with random weights, as a checkpoint (a few tens of KB)."""
    from gcnshrink.checkpoint import Checkpoint
    from gcnshrink.models import create_model, model_class

    torch.manual_seed(0)
    config = {**model_class("gcn").tiny_config(), "num_classes": num_classes}
    model = create_model("gcn", **config)
    names = [f"class_{i}" for i in range(num_classes)]
    return Checkpoint.from_model(model, names, {"data": "synthetic:hands"})


def tiny_onnx(metadata: dict[str, str]) -> bytes:
    """(N, 3, T, 21, 1) -> mean over T, V, M -> linear -> (N, 3) logits, with metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(9, dtype=np.float32).reshape(3, 3) / 9, "w")
    bias = numpy_helper.from_array(np.zeros(3, dtype=np.float32), "b")
    axes = numpy_helper.from_array(np.array([2, 3, 4], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("ReduceMean", ["skeleton", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["scores"]),
        helper.make_node("Add", ["scores", "b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("skeleton", TensorProto.FLOAT, ["N", 3, "T", 21, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=[weight, bias, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    for key, value in sorted(metadata.items()):
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _skeletons(rng: np.random.Generator, n: int, t: int = 6, v: int = 21) -> np.ndarray:
    return rng.normal(size=(n, 3, t, v, 1)).astype(np.float32)


def seed_files(folder: str | Path) -> dict[str, Path]:
    """One small valid file (or folder) of every kind in ``folder``: {kind: path}."""
    from gcnshrink.checkpoint import checkpoint_metadata, save_checkpoint
    from gcnshrink.sparse_format import save_tensors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ckpt = tiny_checkpoint()
    metadata = checkpoint_metadata(ckpt)
    state = {k: v for k, v in ckpt.state_dict.items() if not k.endswith("num_batches_tracked")}
    pruned = {k: v * (torch.rand(v.shape) < 0.2) if v.dim() > 1 else v for k, v in state.items()}
    paths = {
        "pt": save_checkpoint(ckpt, folder / "model.pt", force=True),
        "safetensors": folder / "model.safetensors",
        "sparse": folder / "model.sparse.safetensors",
        "onnx": folder / "model.onnx",
        "npz": folder / "data.npz",
        "pkl": folder / "annotations.pkl",
        "stgcn": folder / "stgcn",
        "sbu": folder / "sbu",
    }
    save_tensors(paths["safetensors"], state, metadata, sparse=False, force=True)
    save_tensors(paths["sparse"], pruned, metadata, sparse=True, force=True)
    paths["onnx"].write_bytes(tiny_onnx(metadata))
    y = np.arange(12) % 3
    np.savez(
        paths["npz"],
        x_train=_skeletons(rng, 12),
        y_train=y,
        x_test=_skeletons(rng, 6),
        y_test=y[:6],
    )
    annotations = [
        {
            "frame_dir": f"clip{i}",
            "label": i % 3,
            "keypoint": rng.normal(size=(1, 5, 17, 2)).astype(np.float32),
            "keypoint_score": rng.random(size=(1, 5, 17)).astype(np.float32),
        }
        for i in range(12)
    ]
    split = {"xsub_train": [f"clip{i}" for i in range(9)], "xsub_val": ["clip9", "clip10"]}
    paths["pkl"].write_bytes(pickle.dumps({"split": split, "annotations": annotations}, 4))
    stgcn = paths["stgcn"]
    stgcn.mkdir(exist_ok=True)
    for part, count in (("train", 9), ("val", 6)):
        np.save(stgcn / f"{part}_data_joint.npy", _skeletons(rng, count, v=25))
        names = [f"{part}{i}.skeleton" for i in range(count)]
        labels = [i % 3 for i in range(count)]
        (stgcn / f"{part}_label.pkl").write_bytes(pickle.dumps((names, labels), 2))
    for set_name in ("s01s02", "s01s03"):
        for action in ("01", "02"):
            sequence = paths["sbu"] / set_name / action / "001"
            sequence.mkdir(parents=True, exist_ok=True)
            rows = [
                ",".join([str(f + 1), *(f"{v:.3f}" for v in rng.random(90))]) + ","
                for f in range(4)
            ]
            (sequence / "skeleton_pos.txt").write_text("\n".join(rows) + "\n")
    return paths


# ---------------------------------------------------------------------------- mutations
_EXTREMES = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**63 - 1, 2**64 - 1)


def _position(rng: random.Random, data: bytes, hot: int) -> int:
    """A random offset, half the time in the first ``hot`` bytes (headers, manifests)."""
    if hot and rng.random() < 0.5:
        return rng.randrange(min(hot, len(data)))
    return rng.randrange(len(data))


def _mutate_bytes(data: bytes, rng: random.Random, hot: int = 0) -> tuple[bytes, str]:
    if not data:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16))), "noise"
    out = bytearray(data)
    op = rng.choice(("flip", "truncate", "insert", "run", "copy", "extreme"))
    at = _position(rng, data, hot)
    if op == "flip":
        for _ in range(rng.randint(1, 8)):
            out[_position(rng, data, hot)] ^= rng.randrange(1, 256)
    elif op == "truncate":
        del out[at:]
    elif op == "insert":
        out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
    elif op == "run":
        fill = rng.choice((b"\x00", b"\xff", None))
        length = rng.randint(1, 64)
        run = fill * length if fill else bytes(rng.randrange(256) for _ in range(length))
        out[at : at + length] = run
    elif op == "copy":
        source = rng.randrange(len(data))
        out[at:at] = data[source : source + rng.randint(1, 256)]
    else:  # an extreme integer, as 1, 2, 4 or 8 little-endian bytes
        width = rng.choice((1, 2, 4, 8))
        value = rng.choice(_EXTREMES) % (1 << (8 * width))
        out[at : at + width] = value.to_bytes(width, "little")
    return bytes(out), op


def _safetensors_header_size(data: bytes) -> int:
    return 8 + struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else 0


def _rezip_member(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Corrupt one member of a zip and write the archive again with valid checksums."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    index = rng.randrange(len(members))
    name, content = members[index]
    members[index] = (name, _mutate_bytes(content, rng, hot=256)[0])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for member, content in members:
            archive.writestr(member, content)
    return buffer.getvalue(), f"member {name.rsplit('/', 1)[-1]}"


def mutants(kind: str, data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One corrupted copy of ``data`` (a file of ``kind``) and what was done to it."""
    if kind in ("pt", "npz") and rng.random() < 0.5:
        return _rezip_member(data, rng)
    hot = _safetensors_header_size(data) if kind in ("safetensors", "sparse") else 0
    return _mutate_bytes(data, rng, hot)


# ---------------------------------------------------------------------------- loaders
def _load_model(path: Path) -> None:
    from gcnshrink.checkpoint import load_checkpoint

    load_checkpoint(path).build_model()


def _load_onnx(path: Path) -> None:
    from gcnshrink.measure import measure_model
    from gcnshrink.onnx_export import OnnxRunner

    measure_model(path)
    runner = OnnxRunner(path)
    runner(np.zeros((2, 3, 4, 21, 1), dtype=np.float32))


def _load_data(spec: str) -> Callable[[Path], None]:
    def load(path: Path) -> None:
        from gcnshrink.data import load_data

        load_data(spec.format(path=path))

    return load


LOADERS: dict[str, Callable[[Path], None]] = {
    "pt": _load_model,
    "safetensors": _load_model,
    "sparse": _load_model,
    "onnx": _load_onnx,
    "npz": _load_data("{path}"),
    "pkl": _load_data("{path}?layout=coco17"),
    "stgcn": _load_data("{path}?layout=ntu25"),
    "sbu": _load_data("sbu:{path}?test_sets=2"),
}


@dataclass
class FuzzReport:
    """Outcomes per kind ("read", "refused", "unclean") and every unclean failure."""

    counts: dict[str, Counter] = field(default_factory=dict)
    unclean: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = []
        for kind, counts in self.counts.items():
            shown = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
            lines.append(f"{kind:>12}: {shown}")
        return "\n".join(lines)


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def fuzz(
    workdir: str | Path,
    cases: int,
    seed: int = 0,
    kinds=KINDS,
    memory_headroom: int | None = 4 * 2**30,
) -> FuzzReport:
    """Run every loader of ``kinds`` on ``cases`` mutants of its seed file (for a folder, of one
    of its files), under :func:`memory_cap` (``memory_headroom`` None: no cap). Deterministic for
    a given ``seed``."""
    workdir = Path(workdir)
    seeds = seed_files(workdir / "seeds")
    report = FuzzReport()
    capped = memory_cap(memory_headroom) if memory_headroom else contextlib.nullcontext()
    with capped:
        for kind in kinds:
            counts = report.counts.setdefault(kind, Counter())
            for case in range(cases):
                outcome, what = _one_case(
                    workdir / "case", seeds[kind], kind, f"{seed}-{kind}-{case}"
                )
                counts["read" if outcome is None else outcome[0]] += 1
                if outcome is not None and outcome[0] == "unclean":
                    report.unclean.append(f"{kind} case {case} (seed {seed}, {what}): {outcome[1]}")
    shutil.rmtree(workdir / "case", ignore_errors=True)
    return report


def _one_case(folder: Path, original: Path, kind: str, key: str):
    """Mutate a copy of ``original`` (one file of it, for a folder) and run ``kind``'s loader."""
    rng = random.Random(key)
    shutil.rmtree(folder, ignore_errors=True)
    target = folder / original.name
    if original.is_dir():
        shutil.copytree(original, target)
        victim = rng.choice(_folder_files(target))
    else:
        folder.mkdir(parents=True)
        shutil.copyfile(original, target)
        victim = target
    file_kind = kind if victim == target else victim.suffix.lstrip(".")
    mutated, what = mutants(file_kind, victim.read_bytes(), rng)
    victim.write_bytes(mutated)
    return _run(LOADERS[kind], target), f"{victim.name}: {what}"


@contextlib.contextmanager
def memory_cap(extra_bytes: int = 4 * 2**30):
    """Cap this process's address space at what it maps now plus ``extra_bytes`` (Linux; elsewhere
    nothing), so that an allocation bomb a loader lets through ends as a MemoryError, reported as
    unclean, instead of in the kernel's OOM killer. The old limit comes back afterwards."""
    try:
        import resource

        status = Path("/proc/self/status").read_text()
        mapped = int(
            next(line for line in status.splitlines() if line.startswith("VmSize:")).split()[1]
        )
        old = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, StopIteration, ValueError):
        yield
        return
    cap = mapped * 1024 + extra_bytes
    if old[1] != resource.RLIM_INFINITY:
        cap = min(cap, old[1])
    resource.setrlimit(resource.RLIMIT_AS, (cap, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, old)


def _run(loader: Callable[[Path], None], path: Path) -> tuple[str, str] | None:
    """None when the file was read, ("refused", line) or ("unclean", what escaped)."""
    try:
        loader(path)
    except GcnshrinkError as exc:
        message = str(exc)
        if "\n" in message or not message.strip():
            return "unclean", f"GcnshrinkError over several lines: {message!r:.300}"
        return "refused", message
    except Exception as exc:  # noqa: BLE001 - whatever escapes is what this looks for
        return "unclean", f"{type(exc).__name__}: {str(exc)[:300]!r}"
    return None
