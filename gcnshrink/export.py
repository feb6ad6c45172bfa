"""``gcnshrink export``: compact, then write small files that load and run elsewhere.

Files written into the output folder (all verified before the command returns):

- ``model.safetensors``: the compacted weights, dense, with metadata (arch, config, classes,
  provenance, pruning record) so gcnshrink rebuilds and runs it;
- ``model.sparse.safetensors``: the same tensors, each stored dense, as a bitmask or as CSR,
  whichever is smallest (docs/formats.md); decoded bit-exactly;
- ``model.onnx``: the compacted model, dynamic batch axis, opset 18, compared with PyTorch by
  onnxruntime on real inputs (error above 1e-4 absolute);
- ``model.sparse.onnx``: the same graph with mostly-zero weights stored as ONNX sparse
  initializers (``--sparse-onnx``), checked the same way;
- ``model.int8.onnx``: onnxruntime dynamic quantization of ``model.onnx`` (``--int8``);
- ``export.json``: what was written and every check's result.

``--fp16`` stores weights as float16 in every file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path

import torch

from gcnshrink.checkpoint import Checkpoint, checkpoint_metadata
from gcnshrink.compact import check_align, compact_model
from gcnshrink.errors import GcnshrinkError
from gcnshrink.files import atomic_write, check_folder_writable
from gcnshrink.onnx_export import check_parity, export_onnx, quantize_int8
from gcnshrink.sparse_format import load_tensors, save_tensors

PARITY_ATOL = 1e-4


def exportable_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors worth shipping, on the CPU.

    num_batches_tracked only matters to training with momentum=None (loading fills it back in).
    "+ 0" turns -0.0 into +0.0: the sparse encoder keeps exact bits, and -0.0 is no zero pattern.
    """
    return {
        k: (v.detach().cpu() + 0 if v.is_floating_point() else v.detach().cpu())
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }


def export_model(
    ckpt: Checkpoint,
    out_dir: str | Path,
    *,
    calibration: torch.Tensor,
    onnx: bool = True,
    safetensors: bool = False,
    sparse: bool = True,
    fp16: bool = False,
    int8: bool = False,
    sparse_onnx: bool = False,
    force: bool = False,
    align: int = 1,
) -> dict:
    """Compact ``ckpt`` (``align``: :func:`gcnshrink.compact.compact_model`'s) and write the
    requested files; returns a summary with every check."""
    align = check_align(align)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise GcnshrinkError(f"{out_dir} exists and is not a folder")
    onnx = onnx or int8  # int8 quantizes model.onnx
    planned = []
    if safetensors:
        planned.append(out_dir / "model.safetensors")
    if sparse:
        planned.append(out_dir / "model.sparse.safetensors")
    if onnx:
        planned.append(out_dir / "model.onnx")
    if sparse_onnx:
        planned.append(out_dir / "model.sparse.onnx")
    if int8:
        planned.append(out_dir / "model.int8.onnx")
    if not planned:
        raise GcnshrinkError(
            "nothing to export: pass --onnx, --sparse-onnx, --safetensors, --sparse or --int8"
        )
    summary_path = out_dir / "export.json"
    existing = [p for p in (*planned, summary_path) if p.exists()]
    if existing and not force:
        raise GcnshrinkError(f"{existing[0]} exists; pass --force to overwrite it")
    for path in (*planned, summary_path):
        if path.is_dir():
            raise GcnshrinkError(f"{path} is a folder, expected a file path")
    check_folder_writable(out_dir)
    with _staged(out_dir) as stage:
        return _export_into(
            ckpt, stage, out_dir, planned, calibration, fp16=fp16, int8=int8, force=force,
            align=align,
        )  # fmt: skip


@contextlib.contextmanager
def _staged(out_dir: Path):
    """A temporary folder on the destination's file system that the whole set of files is written
    into; only when every file is written and verified are they moved into ``out_dir`` (renames:
    a full disk or an interrupt leaves the destination as it was, never a half set). The
    temporary folder goes in any case; so do the folders above ``out_dir`` made for it."""
    missing = [out_dir, *(p for p in out_dir.parents if not p.exists())]
    missing = [p for p in missing if not p.exists()]
    if out_dir.exists():
        stage = out_dir / f".export-{uuid.uuid4().hex[:12]}.tmp"
    else:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        stage = out_dir.parent / f".{out_dir.name}.export-{uuid.uuid4().hex[:12]}.tmp"
    try:
        stage.mkdir()
        yield stage
        if out_dir.exists():
            for item in sorted(stage.iterdir(), key=lambda p: p.name == "export.json"):
                os.replace(item, out_dir / item.name)  # export.json last: it lists the others
        else:
            os.replace(stage, out_dir)
    except OSError as exc:
        raise GcnshrinkError(f"cannot write {out_dir}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if not out_dir.exists():
            for folder in missing[1:]:  # innermost first; only the ones made for this export
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _export_into(
    ckpt: Checkpoint,
    stage: Path,
    out_dir: Path,
    planned: list[Path],
    calibration: torch.Tensor,
    *,
    fp16: bool,
    int8: bool,
    force: bool,
    align: int,
) -> dict:
    """Write and verify the planned files in ``stage``; the summary names their final paths."""
    onnx = out_dir / "model.onnx" in planned
    sparse_onnx = out_dir / "model.sparse.onnx" in planned
    force = True  # the stage is empty and ours: the destination's files were checked above
    result = compact_model(ckpt.build_model(), calibration, align=align)
    model = result.model.eval()
    compacted = Checkpoint.from_model(model, ckpt.class_names, ckpt.provenance, ckpt.pruning)
    metadata = checkpoint_metadata(compacted)
    state = exportable_state(model.state_dict())
    dtype = torch.float16 if fp16 else None
    summary: dict = {
        "compaction": {k: v for k, v in result.to_dict().items() if k != "spaces"},
        "files": [],
    }

    for name, is_sparse in (("model.safetensors", False), ("model.sparse.safetensors", True)):
        if out_dir / name not in planned:
            continue
        path = stage / name
        info = save_tensors(path, state, metadata, sparse=is_sparse, dtype=dtype, force=force)
        decoded, _ = load_tensors(path)
        for name, tensor in state.items():
            expected = (
                tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
            )
            if not torch.equal(decoded[name], expected):
                raise GcnshrinkError(f"{path}: {name} does not decode to what was written")
        entry = {
            "path": str(out_dir / path.name),
            "bytes": path.stat().st_size,
            "kind": "sparse safetensors" if is_sparse else "safetensors",
        }
        if is_sparse:
            entry["bytes_bound"] = info["bytes_bound"]
            entry["bound_ratio_tensors"] = info["bound_ratio_tensors"]
            entry["bytes_metadata"] = info["bytes_metadata"]
            entry["note"] = (
                f"{info['bound_ratio_tensors']:.3f}x the bound of {info['bytes_bound']:,} B "
                f"(kept values + cheaper index encoding), plus {info['bytes_metadata']:,} B "
                f"of gcnshrink metadata"
            )
        summary["files"].append(entry)

    if onnx or sparse_onnx:
        with torch.no_grad():
            scale = float(model(calibration).abs().max())
        atol = PARITY_ATOL if not fp16 else 1e-2 * max(1.0, scale)
    for name, wanted, sparse_weights in (
        ("model.onnx", onnx, False),
        ("model.sparse.onnx", sparse_onnx, True),
    ):
        if not wanted:
            continue
        path = stage / name
        export_onnx(
            model, calibration[:2], path, fp16=fp16, sparse=sparse_weights, metadata=metadata,
            force=force,
        )  # fmt: skip
        diff = check_parity(model, path, calibration, atol=atol)
        summary["files"].append(
            {
                "path": str(out_dir / name),
                "bytes": path.stat().st_size,
                "kind": "onnx (sparse initializers)" if sparse_weights else "onnx",
                "max_abs_diff": diff,
                "note": f"max |onnx - torch| = {diff:.2e}",
            }
        )
    if int8:
        qpath = stage / "model.int8.onnx"
        quantize_int8(stage / "model.onnx", qpath, force=force)
        summary["files"].append(
            {
                "path": str(out_dir / qpath.name),
                "bytes": qpath.stat().st_size,
                "kind": "onnx int8",
                "note": "check its accuracy with gcnshrink eval",
            }
        )
    atomic_write(stage / "export.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary
