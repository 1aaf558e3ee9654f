"""A ``.pt2`` archive read as data: its records by name, CRC-checked, and the errors of reading one."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

__all__ = ["Pt2LoadError", "UntrustedContentError", "Pt2Archive", "first_line"]


class Pt2LoadError(RuntimeError):
    """The file is not a ``.pt2`` program pt2q can read (corrupt, truncated or malformed)."""


class UntrustedContentError(Pt2LoadError):
    """Loading the ``.pt2`` would run code stored in it; pass ``trust=True`` (``--trust``) to allow it."""


def first_line(error: object) -> str:
    """The first line of an error's message."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "(no message)"


class Pt2Archive:
    """The records of a ``.pt2`` zip (names without the archive's top folder), read with CRC checks."""

    def __init__(self, data: bytes, source: str) -> None:
        from torch.export.pt2_archive.constants import ARCHIVE_FORMAT_PATH, ARCHIVE_FORMAT_VALUE

        self.source = source
        try:
            self._zip = zipfile.ZipFile(io.BytesIO(data))
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
            raise Pt2LoadError(f"{source} is not a readable .pt2 archive: {first_line(e)}") from e
        roots = {info.filename.split("/", 1)[0] for info in infos}
        if len(roots) != 1 or any("/" not in info.filename for info in infos):
            raise Pt2LoadError(f"{source} is not a .pt2 archive: its records are not under one top folder")
        self._root = roots.pop() + "/"
        self.names = [info.filename[len(self._root) :] for info in infos]
        for info in infos:
            if info.file_size > 64 * max(info.compress_size, 1 << 20):
                raise Pt2LoadError(f"{source}: record {info.filename} would expand {info.file_size} bytes; refusing it")
        if "serialized_exported_program.json" in self.names:
            raise self.refuse("the archive", "it is in the torch 2.7 format, whose tensors are a pickle")
        if ARCHIVE_FORMAT_PATH not in self.names or self.text(ARCHIVE_FORMAT_PATH) != ARCHIVE_FORMAT_VALUE:
            raise Pt2LoadError(f"{source} is not a torch.export .pt2 archive (no '{ARCHIVE_FORMAT_PATH}' record)")

    def read(self, name: str) -> bytes:
        if name not in self.names:
            raise Pt2LoadError(f"{self.source}: the archive has no record {name!r}")
        try:
            return self._zip.read(self._root + name)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError) as e:
            raise Pt2LoadError(f"{self.source}: record {name} is corrupt: {first_line(e)}") from e

    def text(self, name: str) -> str:
        try:
            return self.read(name).decode()
        except UnicodeDecodeError as e:
            raise Pt2LoadError(f"{self.source}: record {name} is not text: {e}") from e

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.text(name))
        except (json.JSONDecodeError, RecursionError) as e:
            raise Pt2LoadError(f"{self.source}: record {name} is not valid JSON: {first_line(e)}") from e

    def refuse(self, what: str, why: str) -> UntrustedContentError:
        return UntrustedContentError(
            f"{self.source}: refusing {what}: {why}, and loading it would run code stored in the file. "
            "If you trust its author, load it with --trust (pt2q CLI) or trust=True (pt2q.load_pt2)"
        )
