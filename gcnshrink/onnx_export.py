"""ONNX export, int8 quantization, onnxruntime inference, parity and latency checks.

Exporter: the torch.export-based one (``torch.onnx.export(..., dynamo=True)``). It is the default
since torch 2.9 and the TorchScript exporter is deprecated, it handles every op our models use
(einsum, softmax, matmul, conv2d, batch norm, view/reshape/permute, index_select, mean), and its
built-in optimizer folds constants and fuses conv + batch norm, which keeps files small.

Graph contract: one float32 input ``skeleton`` of shape (N, C, T, V, M) with a dynamic batch axis
N, one output ``logits`` of shape (N, classes).

fp16: weights are *stored* as float16 and cast back to float32 by ``Cast`` nodes at the start of
the graph; compute and I/O stay float32. This halves the file like a fully-fp16 graph would, but
runs on every onnxruntime build (CPU has few fp16 kernels) and keeps activations at full
precision. onnxruntime folds the casts once when it loads the model.

sparse: weights that are mostly zeros move to the graph's ``sparse_initializer`` list (ONNX
``SparseTensorProto``: the nonzero values plus their int64 positions, the only index type the
ONNX checker accepts), when that is smaller than the dense tensor, i.e. below about a third
nonzero for float32. onnxruntime densifies them once at load time, so inference is unchanged.
Not every ONNX consumer reads sparse initializers, which is why it is an option
(``gcnshrink export --sparse-onnx`` writes ``model.sparse.onnx`` next to ``model.onnx``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from gcnshrink.errors import GcnshrinkError
from gcnshrink.files import atomic_write
from gcnshrink.sparse_format import check_output_file

INPUT_NAME = "skeleton"
OUTPUT_NAME = "logits"
MIN_OPSET = 18  # the torch.export-based exporter cannot emit anything older
FP16_MAX = 65504.0  # largest finite float16; bigger weights stay float32

_NUMPY_DTYPE_BY_ORT_TYPE = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """Eval mode (batch norm uses running stats) for the duration, then the caller's mode back."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _quiet_exporters():
    """Silence the exporters' warnings and log chatter (e.g. "torchvision is not installed")."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    root = logging.getLogger()
    # onnxruntime.quantization logs through the root logger; with no handler there, Python
    # would install a stderr handler for good (logging.basicConfig). A NullHandler prevents it.
    guard = logging.NullHandler() if not root.handlers else None
    if guard:
        root.addHandler(guard)
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if guard:
            root.removeHandler(guard)


def _model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's weights live, so example inputs can be sent there too."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _check_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    metadata = dict(metadata or {})
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise GcnshrinkError(f"ONNX metadata must map strings to strings; bad entry {key!r}")
    return metadata


def _check_skeleton(x: torch.Tensor | np.ndarray, what: str) -> None:
    if x.ndim != 5:
        raise GcnshrinkError(
            f"{what} must have shape (N, C, T, V, M), got {tuple(x.shape)} ({x.ndim} dims)"
        )


def _strip_debug_info(proto: onnx.ModelProto) -> None:
    """Drop what only helps debugging: per-node stack traces and source paths, doc strings and
    intermediate shape hints. They can be larger than the weights of a pruned model, and the
    exporter's shape hints trip onnxruntime's quantizer."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.graph.value_info[:]
    proto.graph.doc_string = ""
    proto.doc_string = ""


def _store_weights_fp16(proto: onnx.ModelProto) -> None:
    """Store float32 initializers as float16 followed by a Cast back to float32 (see module doc)."""
    graph = proto.graph
    graph_inputs = {i.name for i in graph.input}
    taken = {init.name for init in graph.initializer} | graph_inputs
    taken |= {name for node in graph.node for name in (*node.input, *node.output)}
    casts = []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or init.name in graph_inputs:
            continue
        weights = numpy_helper.to_array(init)
        finite = weights[np.isfinite(weights)]
        if finite.size and np.abs(finite).max() > FP16_MAX:
            continue  # would overflow to inf; keep this one in float32
        name = init.name
        half_name = f"{name}_fp16"
        while half_name in taken:
            half_name += "_"
        taken.add(half_name)
        init.CopyFrom(numpy_helper.from_array(weights.astype(np.float16), half_name))
        casts.append(
            helper.make_node(
                "Cast", [half_name], [name], name=f"{name}_to_fp32", to=onnx.TensorProto.FLOAT
            )
        )
    # The casts go first so that the node list stays topologically sorted.
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)


# A SparseTensorProto costs its dims and two small tensor headers on top of its values and indices.
_SPARSE_INITIALIZER_OVERHEAD = 32


def _store_weights_sparse(proto: onnx.ModelProto) -> None:
    """Move every floating initializer whose sparse form is smaller to ``sparse_initializer``."""
    graph = proto.graph
    graph_inputs = {i.name for i in graph.input}
    dense = []
    for init in graph.initializer:
        weights = numpy_helper.to_array(init)
        if weights.dtype.kind != "f" or weights.ndim == 0 or init.name in graph_inputs:
            dense.append(init)
            continue
        flat = weights.reshape(-1)
        # nonzero by bit pattern, so -0.0 survives like in the sparse safetensors format
        positions = np.flatnonzero(flat.view(f"i{flat.itemsize}"))
        sparse_bytes = positions.size * (flat.itemsize + 8) + _SPARSE_INITIALIZER_OVERHEAD
        if sparse_bytes >= flat.nbytes:
            dense.append(init)
            continue
        values = numpy_helper.from_array(flat[positions], init.name)
        indices = numpy_helper.from_array(positions.astype(np.int64), f"{init.name}_indices")
        graph.sparse_initializer.append(
            helper.make_sparse_tensor(values, indices, list(weights.shape))
        )
    del graph.initializer[:]
    graph.initializer.extend(dense)


def _set_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for key, value in sorted(metadata.items()):
        proto.metadata_props.add(key=key, value=value)


def _finish_and_write(proto: onnx.ModelProto, path: Path, force: bool) -> None:
    # onnx's shape inference types a sparse initializer as sparse_tensor and rejects it as the
    # input of a dense op, although runtimes densify it at load; such graphs get the structural
    # check here, and onnxruntime's parity check after export covers the rest.
    full_check = not proto.graph.sparse_initializer
    try:
        onnx.checker.check_model(proto, full_check=full_check)
    except onnx.checker.ValidationError as exc:
        # Our own export produced an invalid graph: a bug, not a user error.
        raise RuntimeError(f"exported ONNX model fails onnx.checker: {exc}") from exc
    atomic_write(path, proto.SerializeToString(), force=force)


def export_onnx(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    *,
    opset: int = 18,
    fp16: bool = False,
    sparse: bool = False,
    metadata: dict[str, str] | None = None,
    force: bool = False,
) -> None:
    """Export ``model`` to ``path`` with a dynamic batch axis (input "skeleton", output "logits").

    ``example`` is one input batch (N, C, T, V, M); only its shape matters. ``fp16`` stores the
    weights as float16 (compute stays float32); ``sparse`` stores mostly-zero weights as sparse
    initializers (see the module doc). ``metadata`` lands in the model's ``metadata_props`` (read
    back by :attr:`OnnxRunner.metadata`).
    """
    path = check_output_file(path, force)
    metadata = _check_metadata(metadata)
    max_opset = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= max_opset:
        raise GcnshrinkError(f"opset must be between {MIN_OPSET} and {max_opset}, got {opset}")
    if not isinstance(example, torch.Tensor):
        raise GcnshrinkError(f"example input must be a torch.Tensor, got {type(example).__name__}")
    _check_skeleton(example, "example input")
    example = example.detach().to(_model_device(model), torch.float32)
    if example.shape[0] == 1:
        # torch.export treats a size-1 dimension as a constant, so a batch of 1 could not be
        # declared dynamic; a batch of 2 traces the same graph.
        example = torch.cat([example, example])

    batch = torch.export.Dim("batch")
    with _eval_mode(model), _quiet_exporters():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise GcnshrinkError(f"the exporter produced opset {got} instead of {opset}")
    _strip_debug_info(proto)
    if fp16:
        _store_weights_fp16(proto)
    if sparse:
        _store_weights_sparse(proto)
    _set_metadata(proto, metadata)
    _finish_and_write(proto, path, force)


MAX_ONNX_BYTES = 2**31 - 1  # protobuf cannot hold more; bigger models need external data


def _all_tensors(graph: onnx.GraphProto):
    """Every tensor a graph holds: initializers, sparse ones, constants, nested subgraphs'."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _attribute_tensors(node.attribute)


def _attribute_tensors(attributes):
    for attr in attributes:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        sparse = list(attr.sparse_tensors)
        if attr.HasField("sparse_tensor"):
            sparse.append(attr.sparse_tensor)
        for tensor in sparse:
            yield from (tensor.values, tensor.indices)
        if attr.HasField("g"):
            yield from _all_tensors(attr.g)
        for graph in attr.graphs:
            yield from _all_tensors(graph)


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines or [type(exc).__name__])[0][:200]


def read_onnx(path: str | os.PathLike) -> tuple[bytes, onnx.ModelProto]:
    """The bytes and the parsed model of an ONNX file gcnshrink can trust to be what it says.

    Refused in one line: files that are not ONNX protobuf, models without a graph (an empty file
    parses as an empty model), models that fail ``onnx.checker``, and models that refer to
    external data files: gcnshrink writes self-contained files only, and a reference (an absolute
    path, ``../``, a symbolic link) would make it read files the model's author chose. Sessions
    are created from these bytes, so onnxruntime never opens another file either.
    """
    path = Path(path)
    if not path.is_file():
        raise GcnshrinkError(f"{path} does not exist")
    if path.stat().st_size > MAX_ONNX_BYTES:
        raise GcnshrinkError(f"{path} is larger than an ONNX protobuf can be (2 GB)")
    data = path.read_bytes()
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError, onnx its own types
        raise GcnshrinkError(f"{path} is not an ONNX model ({_one_line(exc)})") from None
    graph = proto.graph
    if not proto.HasField("graph") or not graph.node or not graph.input or not graph.output:
        raise GcnshrinkError(
            f"{path} is not an ONNX model (no graph with nodes, inputs and outputs)"
        )
    try:
        tensors = [*_all_tensors(graph)]
        for function in proto.functions:
            for node in function.node:
                tensors.extend(_attribute_tensors(node.attribute))
    except RecursionError:
        raise GcnshrinkError(f"{path}: subgraphs nested too deeply") from None
    for prop in proto.metadata_props:
        if not (isinstance(prop.key, str) and isinstance(prop.value, str)):
            raise GcnshrinkError(f"{path}: metadata that is not UTF-8 text")
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            where = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            raise GcnshrinkError(
                f"{path}: tensor {tensor.name!r} refers to the external data file {where!r}; "
                "gcnshrink reads self-contained ONNX files only"
            )
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # ValidationError, and others for malformed protos
        raise GcnshrinkError(f"{path} is not a valid ONNX model ({_one_line(exc)})") from None
    return data, proto


def quantize_int8(
    src_path: str | os.PathLike,
    dst_path: str | os.PathLike,
    *,
    per_channel: bool = True,
    force: bool = False,
) -> None:
    """Dynamic int8 quantization (onnxruntime ``quantize_dynamic``): Conv/MatMul/Gemm weights
    become int8, activations are quantized on the fly. Metadata is copied from ``src_path``.

    ``per_channel`` gives every output channel its own scale, which matters after pruning and
    batch-norm folding leave channels with very different ranges. ``src_path`` must be a float32
    export (an fp16 file's weights sit behind Cast nodes and would not be quantized).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst_path = check_output_file(dst_path, force)
    _, proto = read_onnx(src_path)
    if any(init.data_type == onnx.TensorProto.FLOAT16 for init in proto.graph.initializer):
        raise GcnshrinkError(f"{src_path} has float16 weights; quantize the float32 export")
    if proto.graph.sparse_initializer:
        raise GcnshrinkError(f"{src_path} has sparse weights; quantize the dense ONNX export")
    metadata = {p.key: p.value for p in proto.metadata_props}
    _strip_debug_info(proto)

    with tempfile.TemporaryDirectory(prefix="gcnshrink-int8-") as tmp, _quiet_exporters():
        tmp_path = Path(tmp) / "quantized.onnx"
        quantize_dynamic(proto, tmp_path, weight_type=QuantType.QInt8, per_channel=per_channel)
        quantized = onnx.load(tmp_path)
    _strip_debug_info(quantized)
    _set_metadata(quantized, metadata)  # the quantizer replaces metadata with its own
    _finish_and_write(quantized, dst_path, force)


def _to_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu").numpy()
    if isinstance(x, np.ndarray):
        return x
    raise GcnshrinkError(f"expected a torch.Tensor or numpy array, got {type(x).__name__}")


class OnnxRunner:
    """An onnxruntime CPU session for one exported model.

    ``runner(x)`` returns float32 logits (N, classes) for x of shape (N, C, T, V, M), running
    ``batch_size`` samples at a time. ``runner.metadata`` is the model's metadata_props.
    """

    def __init__(self, path: str | os.PathLike, *, batch_size: int = 64):
        import onnxruntime as ort

        self.path = Path(path)
        if batch_size < 1:
            raise GcnshrinkError(f"batch size must be at least 1, got {batch_size}")
        data, _ = read_onnx(self.path)  # checked, and never followed to other files
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only; warnings are about graph rewrites
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several unrelated exception types
            first_line = (str(exc).strip() or type(exc).__name__).splitlines()[0]
            raise GcnshrinkError(
                f"{self.path} cannot be loaded by onnxruntime: {first_line}"
            ) from None
        try:
            self._read_session(batch_size)
        except UnicodeDecodeError:  # names or metadata an edited file made invalid UTF-8
            raise GcnshrinkError(
                f"{self.path}: names or metadata that are not UTF-8 text"
            ) from None

    def _read_session(self, batch_size: int) -> None:
        if len(self.session.get_inputs()) != 1 or not self.session.get_outputs():
            raise GcnshrinkError(
                f"{self.path} has {len(self.session.get_inputs())} inputs; gcnshrink models have "
                "one, the skeleton batch"
            )
        model_input = self.session.get_inputs()[0]
        if model_input.type not in _NUMPY_DTYPE_BY_ORT_TYPE:
            raise GcnshrinkError(f"{self.path}: unsupported input type {model_input.type}")
        self.input_name = model_input.name
        self.input_dtype = _NUMPY_DTYPE_BY_ORT_TYPE[model_input.type]
        # Dimensions are ints when fixed, strings (or None) when dynamic.
        self.input_shape = list(model_input.shape)
        if len(self.input_shape) != 5:
            raise GcnshrinkError(
                f"{self.path} takes input of shape {self.input_shape}; gcnshrink models take "
                "(N, C, T, V, M)"
            )
        fixed_batch = self.input_shape[0] if isinstance(self.input_shape[0], int) else None
        self.batch_size = fixed_batch or batch_size
        self.fixed_batch = fixed_batch is not None
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def _check_input(self, x: np.ndarray) -> None:
        _check_skeleton(x, "input")
        for axis, (want, have) in enumerate(
            zip(self.input_shape[1:], x.shape[1:], strict=True), start=1
        ):
            if isinstance(want, int) and want != have:
                raise GcnshrinkError(
                    f"input axis {axis} ({'NCTVM'[axis]}) has size {have}; {self.path.name} "
                    f"expects {want} (model input shape {self.input_shape})"
                )

    def __call__(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        x = _to_numpy(x)
        self._check_input(x)
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        outputs = []
        for start in range(0, x.shape[0], self.batch_size):
            chunk = x[start : start + self.batch_size]
            real = chunk.shape[0]
            if self.fixed_batch and real < self.batch_size:
                # A model exported with a fixed batch needs full batches: pad, then drop.
                pad = np.zeros((self.batch_size - real, *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            try:
                logits = self.session.run(None, {self.input_name: chunk})[0]
            except Exception as exc:  # onnxruntime's errors: a graph that cannot run this input
                raise GcnshrinkError(
                    f"{self.path.name} fails to run on the input: {_one_line(exc)}"
                ) from None
            outputs.append(logits[:real])
        if not outputs:
            raise GcnshrinkError("input has an empty batch (N = 0)")
        return np.concatenate(outputs).astype(np.float32, copy=False)


def check_parity(
    model: torch.nn.Module,
    path: str | os.PathLike,
    inputs: torch.Tensor | np.ndarray,
    *,
    atol: float = 1e-4,
) -> float:
    """Run ``model`` (in eval mode) and the ONNX file on ``inputs``; return the max abs logit
    difference, raising GcnshrinkError if it exceeds ``atol`` (or is NaN)."""
    runner = OnnxRunner(path)
    x = torch.as_tensor(_to_numpy(inputs), dtype=torch.float32)
    with _eval_mode(model), torch.no_grad():
        expected = model(x.to(_model_device(model))).float().cpu().numpy()
    got = runner(x)
    if got.shape != expected.shape:
        raise GcnshrinkError(
            f"{runner.path.name} returns logits of shape {got.shape}, PyTorch {expected.shape}"
        )
    diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
    if not diff <= atol:  # written this way so that NaN fails too
        raise GcnshrinkError(
            f"{runner.path.name} differs from PyTorch by {diff:.3g} (allowed {atol:g})"
        )
    return diff


def onnx_latency_ms(
    path: str | os.PathLike,
    example: torch.Tensor | np.ndarray,
    repeats: int = 30,
    warmup: int = 3,
) -> float:
    """Median onnxruntime (CPU) wall time in milliseconds to run ``example`` as one batch."""
    runner = OnnxRunner(path, batch_size=max(1, int(example.shape[0])))
    x = _to_numpy(example)
    runner._check_input(x)
    feed = {runner.input_name: np.ascontiguousarray(x, dtype=runner.input_dtype)}
    for _ in range(warmup):
        runner.session.run(None, feed)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        runner.session.run(None, feed)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)
