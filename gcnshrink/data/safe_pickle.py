"""Read pickled dataset files without letting them run code.

A pickle can name any importable callable and have it called while loading (``os.system`` is the
classic example). Dataset label files and pyskl annotation files only need containers, numbers,
strings and numpy arrays, so the unpickler below resolves only the handful of globals that numpy
arrays, numpy scalars and a few plain containers are rebuilt from, and refuses everything else
before anything is called.
"""

from __future__ import annotations

import collections
import io
import pickle
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

# (module, name) -> the object it stands for. Both numpy 1 (numpy.core) and numpy 2 (numpy._core)
# spellings appear in real files, as do Python 2 module names (__builtin__) in protocol-2 pickles.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
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


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        # latin1 is what numpy documents for arrays pickled by Python 2.
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise GcnshrinkError(
                f"refusing to load {self._source}: it references {module}.{name}, which could run code"
            ) from None


def safe_load_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` allowing only plain data and numpy arrays; GcnshrinkError otherwise."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, str(path)).load()
    except GcnshrinkError:
        raise
    except FileNotFoundError:
        raise GcnshrinkError(f"{path}: file not found") from None
    except OSError as exc:
        raise GcnshrinkError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise GcnshrinkError(f"{path}: not a readable pickle ({exc})") from None
