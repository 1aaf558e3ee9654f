"""Atomic file writes: a temporary file in the target's folder, flushed and fsynced, then renamed.

::

    write_atomic("model.pte", data)            # bytes
    with atomic_write("table.md") as f:        # or a binary file object to write into
        f.write(text.encode())

A reader sees the old file or the complete new one, never a mix: a killed process or a
full disk leaves the previous file untouched (and at worst a ``.NAME.*.tmp`` file beside
it). A failed write raises :class:`FileWriteError`, one line naming the file and the cause.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Union

__all__ = ["FileWriteError", "atomic_write", "write_atomic"]

PathLike = Union[str, "os.PathLike[str]"]


class FileWriteError(OSError):
    """A file could not be written; the previous file at that path (if any) is untouched.

    ``errno`` and ``filename`` are the failed write's; ``str()`` is the one-line message.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else super().__str__()


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_error(path: Path, error: OSError, existed: bool) -> FileWriteError:
    cause = "no space left on device" if error.errno == errno.ENOSPC else (error.strerror or str(error))
    kept = "the previous file is untouched" if existed else "nothing was written"
    failure = FileWriteError(f"could not write {path}: {cause} ({kept})")
    failure.errno, failure.filename = error.errno, str(path)
    return failure


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[BinaryIO]:
    """A binary file whose content replaces ``path`` only when the ``with`` block completes."""
    path = Path(path)
    existed = path.exists()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    except OSError as e:
        raise _write_error(path, e, existed) from e
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if existed:
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, FileWriteError):
            raise _write_error(path, e, existed) from e
        raise
    _fsync_folder(path.parent)


def write_atomic(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)
