"""Keep third-party warnings and log lines out of pt2q's output, at the call that causes them.

::

    with quiet():                     # Python warnings and torch/torchao/executorch log records
        edge = to_edge_transform_and_lower(...)
    with quiet(native=True) as log:   # also what native code writes to file descriptor 2
        program = runtime.load_program(data)
    log.last_line()                   # e.g. for an error message

Only the ``with`` block is affected: filters, logger levels and file descriptor 2 are
restored when it ends, so the user's own warnings and logging keep working.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import BinaryIO, Optional

__all__ = ["quiet", "NativeLog", "THIRD_PARTY_LOGGERS"]

THIRD_PARTY_LOGGERS = ("torch", "torchao", "executorch")


class NativeLog:
    """What native code wrote to file descriptor 2 inside a ``quiet(native=True)`` block (so far)."""

    def __init__(self) -> None:
        self._file: Optional[BinaryIO] = None
        self._text = ""

    def text(self) -> str:
        if self._file is not None:
            self._file.seek(0)
            self._text = self._file.read().decode(errors="replace")
        return self._text

    def last_line(self) -> str:
        lines = [line.strip() for line in self.text().splitlines() if line.strip()]
        return lines[-1] if lines else ""


@contextlib.contextmanager
def _third_party_loggers_at(level: int) -> Iterator[None]:
    """Raise the level of the third-party loggers (and their children that set one) for the block."""
    manager = logging.Logger.manager
    names = [
        name
        for name, logger in list(manager.loggerDict.items())
        if isinstance(logger, logging.Logger)
        and logger.level != logging.NOTSET
        and any(name == top or name.startswith(top + ".") for top in THIRD_PARTY_LOGGERS)
    ]
    loggers = {logging.getLogger(name) for name in (*THIRD_PARTY_LOGGERS, *names)}
    saved = {logger: logger.level for logger in loggers}
    try:
        for logger in loggers:
            if logger.getEffectiveLevel() < level:
                logger.setLevel(level)
        yield
    finally:
        for logger, old in saved.items():
            logger.setLevel(old)


@contextlib.contextmanager
def _native_stderr_into(log: NativeLog) -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(prefix="pt2q-native-") as file:
        log._file = file
        try:
            os.dup2(file.fileno(), 2)
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            log.text()
            log._file = None


@contextlib.contextmanager
def quiet(native: bool = False) -> Iterator[NativeLog]:
    """Silence Python warnings and third-party log records below ERROR (and, with ``native``, fd 2)."""
    log = NativeLog()
    with warnings.catch_warnings(), _third_party_loggers_at(logging.ERROR):
        warnings.simplefilter("ignore")
        if native:
            with _native_stderr_into(log):
                yield log
        else:
            yield log
