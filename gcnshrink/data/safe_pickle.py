"""Read pickled dataset files without letting them run code.

A pickle can name any importable callable and have it called while loading (``os.system`` is the
classic example). Dataset label files and pyskl annotation files only need containers, numbers,
strings and numpy arrays, so the unpickler below resolves only the handful of globals that numpy
arrays, numpy scalars and a few plain containers are rebuilt from, and refuses everything else
before anything is called. It also bounds memory by the file: every opcode's length is checked
before unpickling, and no array may be larger than the file.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import pickletools
from pathlib import Path
from typing import Any

import numpy as np

from gcnshrink.errors import GcnshrinkError


def _numpy_rebuilders() -> dict[str, Any]:
    # Take the functions from numpy's own reducers instead of importing numpy.core / numpy._core:
    # which of the two exists (and which one warns) depends on the numpy version.
    array = np.zeros(1)
    return {
        "_reconstruct": array.__reduce__()[0],
        "_frombuffer": array.__reduce_ex__(5)[0],
        "scalar": np.int64(0).__reduce__()[0],
    }


_NUMPY = _numpy_rebuilders()


class _ArrayType:
    """What the name ``numpy.ndarray`` resolves to: the type that ``_reconstruct`` is told to
    build, but not callable itself, so a pickle cannot call ``numpy.ndarray(shape)`` to allocate
    an array of any size it likes."""

    def __repr__(self) -> str:
        return "numpy.ndarray"

    def __call__(self, *args, **kwargs):
        raise GcnshrinkError("it calls numpy.ndarray(...) itself, which could allocate any size")


_ARRAY_TYPE = _ArrayType()


def _bounded_rebuilders(limit: int) -> dict[str, Any]:
    """numpy's rebuild helpers, refusing any allocation larger than ``limit`` bytes: everything an
    array really holds is inside the pickle, so no honest file asks for more than its size."""

    def reconstruct(subtype: object, shape: object, dtype: object) -> np.ndarray:
        if subtype is not _ARRAY_TYPE:
            raise pickle.UnpicklingError(f"_reconstruct of {subtype!r}, expected numpy.ndarray")
        _check_size(shape, dtype, limit)
        return _NUMPY["_reconstruct"](np.ndarray, shape, dtype)

    def frombuffer(buffer: object, dtype: object, shape: object, order: object) -> np.ndarray:
        _check_size(shape, dtype, limit)
        return _NUMPY["_frombuffer"](buffer, dtype, shape, order)

    def latin1_encode(text: object, encoding: object = "utf-8") -> bytes:
        # protocol-2 pickles store bytes as _codecs.encode(text, "latin1"), nothing else
        if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
            raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r}")
        return text.encode("latin1")

    return {"_reconstruct": reconstruct, "_frombuffer": frombuffer, "encode": latin1_encode}


def _check_size(shape: object, dtype: object, limit: int) -> None:
    dims = (shape,) if isinstance(shape, int) else shape
    if not isinstance(dims, tuple | list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims
    ):
        raise pickle.UnpicklingError(f"bad array shape {shape!r:.80}")
    itemsize = np.dtype(dtype).itemsize
    if math.prod(dims) * itemsize > limit:
        raise GcnshrinkError(
            f"an array of shape {tuple(dims)} ({math.prod(dims) * itemsize:,} bytes) is larger "
            "than the file could hold"
        )


# (module, name) -> the object it stands for. Both numpy 1 (numpy.core) and numpy 2 (numpy._core)
# spellings appear in real files, as do Python 2 module names (__builtin__) in protocol-2 pickles.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _ARRAY_TYPE,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _NUMPY["_reconstruct"],
    ("numpy._core.multiarray", "_reconstruct"): _NUMPY["_reconstruct"],
    ("numpy.core.multiarray", "scalar"): _NUMPY["scalar"],
    ("numpy._core.multiarray", "scalar"): _NUMPY["scalar"],
    ("numpy.core.numeric", "_frombuffer"): _NUMPY["_frombuffer"],
    ("numpy._core.numeric", "_frombuffer"): _NUMPY["_frombuffer"],
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(text, "latin1").
    ("_codecs", "encode"): __import__("codecs").encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
}


# The allowed names that stand for a bounded helper instead (see _bounded_rebuilders).
_BOUNDED = {"_reconstruct", "_frombuffer", "encode"}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str, limit: int) -> None:
        # latin1 is what numpy documents for arrays pickled by Python 2.
        super().__init__(file, encoding="latin1")
        self._source = source
        self._bounded = _bounded_rebuilders(limit)

    def find_class(self, module: str, name: str) -> Any:
        try:
            allowed = _ALLOWED[(module, name)]
            return self._bounded[name] if name in _BOUNDED else allowed
        except KeyError:
            raise GcnshrinkError(
                f"refusing to load {self._source}: it references {module}.{name}, which could run code"
            ) from None


ZIP_MAGIC = b"PK\x03\x04"


def safe_load_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` allowing only plain data and numpy arrays; GcnshrinkError otherwise.

    Memory is bounded too: no array may be larger than the file (see _bounded_rebuilders)."""
    path = Path(path)
    try:
        data = path.read_bytes()
        if data.startswith(ZIP_MAGIC):
            raise GcnshrinkError(
                f"{path} is a zip archive (an .npz or a .pt file?), not a pickle; name an "
                ".npz file .npz"
            )
        # Every opcode and length is checked before anything is built: a length field that
        # claims more bytes than the file holds would otherwise make the unpickler allocate them.
        for _ in pickletools.genops(data):
            pass
        return _RestrictedUnpickler(io.BytesIO(data), str(path), len(data)).load()
    except GcnshrinkError as exc:
        message = str(exc)
        if not message.startswith(("refusing", str(path))):
            message = f"refusing to load {path}: {message}"
        raise GcnshrinkError(message) from None
    except FileNotFoundError:
        raise GcnshrinkError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise GcnshrinkError(f"{path} is a folder, expected a pickle file") from None
    except OSError as exc:
        raise GcnshrinkError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except MemoryError:
        raise GcnshrinkError(f"{path}: not a readable pickle (too large for memory)") from None
    except Exception as exc:  # the unpickler and numpy's rebuilders raise many types on bad data
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise GcnshrinkError(f"{path}: not a readable pickle ({reason})") from None
