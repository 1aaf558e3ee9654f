"""SHA-256 digests that pt2q writes into its files, so that loading detects any changed byte.

The digest travels inside the file, where the format leaves room for it:

* a ``.pt2`` is a zip archive: the digest is the archive comment (the last bytes of the
  file, which zip readers, ``torch.export.load`` included, skip); it covers every byte
  before the comment;
* a ``.pte`` is an ExecuTorch flatbuffer whose header gives its length: the digest is a
  trailer after the program's last byte, which ExecuTorch loaders never read; it covers
  every byte before the trailer.

Either way the mark is ``pt2q-sha256:`` + 64 hex digits. A digest detects corruption
(a flipped bit, a truncated copy), not tampering: anyone can recompute it, so it says
nothing about who wrote the file.
"""

from __future__ import annotations

import hashlib
import struct
from typing import NamedTuple

__all__ = ["DigestMismatchError", "Verified", "seal_zip", "seal_trailer", "verify_zip", "verify_trailer"]

MARK = b"pt2q-sha256:"
_SEAL_LEN = len(MARK) + 64
_EOCD = b"PK\x05\x06"  # zip end-of-central-directory record, 22 bytes + comment
_EOCD_LEN = 22


class DigestMismatchError(ValueError):
    """The bytes differ from what pt2q wrote: the file is corrupt (or was edited)."""


class Verified(NamedTuple):
    """``payload``: the bytes to parse; ``sealed``: whether a digest was present (and matched)."""

    payload: bytes
    sealed: bool


def _seal(*covered: bytes | memoryview) -> bytes:
    digest = hashlib.sha256()
    for part in covered:
        digest.update(part)
    return MARK + digest.hexdigest().encode()


def _check(covered: bytes | memoryview, seal: bytes, source: str) -> None:
    if seal != _seal(covered):
        raise DigestMismatchError(
            f"{source} is corrupt: its SHA-256 digest does not match its content "
            "(a changed or missing byte); get a fresh copy of the file"
        )


def seal_trailer(data: bytes) -> bytes:
    """``data`` followed by its digest (for ``.pte`` programs)."""
    return data + _seal(data)


def verify_trailer(data: bytes, source: str = "<bytes>") -> Verified:
    """Check and strip a trailing digest; bytes without one are returned as they are (``sealed=False``)."""
    if len(data) < _SEAL_LEN or data[-_SEAL_LEN:-64] != MARK:
        return Verified(data, False)
    _check(memoryview(data)[:-_SEAL_LEN], data[-_SEAL_LEN:], source)
    return Verified(data[:-_SEAL_LEN], True)


def seal_zip(data: bytes) -> bytes:
    """A zip archive without a comment, given its digest as the comment (for ``.pt2`` archives)."""
    if len(data) < _EOCD_LEN or data[-_EOCD_LEN : -_EOCD_LEN + 4] != _EOCD or data[-2:] != b"\0\0":
        raise ValueError("expected a zip archive without an archive comment")
    length = struct.pack("<H", _SEAL_LEN)
    return b"".join((memoryview(data)[:-2], length, _seal(memoryview(data)[:-2], length)))


def verify_zip(data: bytes, source: str = "<bytes>") -> Verified:
    """Check a zip archive whose comment is a digest; an archive without one is returned as ``sealed=False``."""
    eocd = len(data) - _SEAL_LEN - _EOCD_LEN
    if eocd < 0 or data[eocd : eocd + 4] != _EOCD or data[-_SEAL_LEN:-64] != MARK:
        return Verified(data, False)
    _check(memoryview(data)[:-_SEAL_LEN], data[-_SEAL_LEN:], source)
    return Verified(data, True)
