"""The one way gcnshrink writes an output file: complete or not at all, never over an existing file
without ``force``.

The content goes to a temporary file in the destination folder, is flushed to disk, and is renamed
over the destination (``os.replace`` is atomic on POSIX and Windows), so a reader, a crash or a
Ctrl-C never leaves a half-written output. The temporary file is opened with mode 0o666 and the
user's umask, like any file they write (``tempfile.mkstemp``'s 0600 would survive the rename and
make outputs unreadable to CI artifact uploaders and web servers).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from gcnshrink.errors import GcnshrinkError


def check_writable(path: str | os.PathLike, force: bool = False) -> Path:
    """Refuse, before any work, an output that exists (without ``force``) or is a folder."""
    path = Path(path)
    if path.is_dir():
        raise GcnshrinkError(f"{path} is a folder, expected a file path")
    if path.exists() and not force:
        raise GcnshrinkError(f"{path} exists; pass --force to overwrite it")
    return path


def atomic_write(
    path: str | os.PathLike,
    content: bytes | str | Callable[[BinaryIO], object] | Callable[[str], object],
    *,
    force: bool = False,
    to_path: bool = False,
) -> Path:
    """Write ``content`` to ``path`` atomically; returns the path.

    ``content`` is bytes, text (UTF-8), or a callable. A callable gets the open binary file, or,
    with ``to_path=True``, the temporary file's name (for writers such as ``torch.save`` or
    ``onnx.save`` that want a path). Missing parent folders are created.
    """
    path = check_writable(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if to_path:
                content(str(tmp))  # type: ignore[operator, call-arg]
            elif callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
