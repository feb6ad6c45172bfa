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
import tempfile
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


def check_folder_writable(folder: str | os.PathLike) -> Path:
    """Refuse a folder that cannot hold new files, creating nothing: the folder, or the nearest
    part of it that exists, must be a folder where a file can be created. Checked by creating an
    unnamed temporary file (``os.access`` says yes to root even on read-only mounts)."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise GcnshrinkError(f"cannot write in {folder}: {existing} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise GcnshrinkError(f"cannot write in {existing}: {exc.strerror or exc}") from None
    return folder


def check_output_path(path: str | os.PathLike, force: bool = False) -> Path:
    """Everything that would make writing ``path`` fail, checked before any slow work: an existing
    file (without ``force``), a folder in its place, a parent that is a file or is not writable."""
    path = check_writable(path, force)
    check_folder_writable(path.parent)
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GcnshrinkError(f"cannot create the folder of {path}: {exc.strerror or exc}") from None
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    # the file is created inside the try: an interrupt right after os.open still removes it
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
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
    except OSError as exc:  # a full disk, a read-only folder: the user's to fix, in one line
        tmp.unlink(missing_ok=True)
        raise GcnshrinkError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
