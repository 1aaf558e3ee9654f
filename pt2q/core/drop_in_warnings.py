"""Warnings for inputs torchao's PT2E flow accepts and pt2q finds suspicious.

A script that ran on torchao keeps running on pt2q: where pt2q would rather refuse, it warns with one of
these classes and does what torchao does. Each names the node and says what to change; turn one into an
error with ``warnings.simplefilter("error", pt2q.UncalibratedObserverWarning)`` (or all of them with
``DropInWarning``).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from types import FrameType
from typing import Optional

import torch

__all__ = [
    "DropInWarning",
    "ObserverInQATWarning",
    "FakeQuantizeInPTQWarning",
    "MissingChannelAxisWarning",
    "UncalibratedObserverWarning",
    "NotAnInputWarning",
    "IgnoredArgumentWarning",
    "warn_drop_in",
]


class DropInWarning(UserWarning):
    """pt2q accepted, as torchao does, an input that is probably a mistake."""


class ObserverInQATWarning(DropInWarning):
    """``prepare_qat_pt2e`` with a spec that builds a plain observer: training does not simulate its
    quantization (torchao inserts the observer all the same)."""


class FakeQuantizeInPTQWarning(DropInWarning):
    """``prepare_pt2e`` with a spec that builds a fake quantizer: calibration runs through fake
    quantization (torchao inserts it all the same; some backends ask for it)."""


class MissingChannelAxisWarning(DropInWarning):
    """A per-channel spec without ``ch_axis``: the observer's default axis (0) applies, as in torchao."""


class UncalibratedObserverWarning(DropInWarning):
    """``convert_pt2e`` before calibration: observers that saw no data give their default qparams
    (scale 1.0, zero point 0), as in torchao: the model is almost certainly wrong."""


class NotAnInputWarning(DropInWarning):
    """An annotation maps a node that is not an input of the annotated node: the entry gets no observer but
    still joins sharing groups, so specs shared with it resolve as in torchao (which makes an observer for it
    that nothing reads)."""


class IgnoredArgumentWarning(DropInWarning):
    """An argument torchao accepts and ignores (an affine min-max observer's ``is_dynamic=True``, an affine
    observer's ``block_size`` that disagrees with its granularity): pt2q ignores it too, and says so, since the
    caller probably expected it to count."""


# pt2q's own folders (the package, and the layers an editable install maps into it) and torch's: a drop-in
# warning is reported at the first frame outside them, the user's call
_ROOT = Path(__file__).resolve().parents[2]
_OWN = tuple(
    str(folder) + os.sep
    for folder in (Path(__file__).resolve().parents[1], Path(torch.__file__).resolve().parent)
    + tuple(_ROOT / name for name in ("quantizers", "lowering", "runtime", "cli"))
)


def _caller_stacklevel() -> int:
    """``stacklevel`` of the first frame (counted from ``warn_drop_in``) outside pt2q, torch and generated code."""
    frame: Optional[FrameType] = sys._getframe(2)
    level = 2
    while frame is not None:
        name = frame.f_code.co_filename
        if not (name.startswith("<") or os.path.abspath(name).startswith(_OWN)):
            return level
        frame, level = frame.f_back, level + 1
    return 2


def warn_drop_in(category: type[DropInWarning], message: str) -> None:
    """Warn with ``category`` at the user's call, telling how to make it an error."""
    warnings.warn(
        f"{message} (a {category.__name__}: warnings.simplefilter('error', pt2q.{category.__name__}) makes "
        "this an error)",
        category,
        stacklevel=_caller_stacklevel(),
    )
