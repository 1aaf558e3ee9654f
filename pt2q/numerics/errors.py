"""The errors quantization arithmetic raises for arguments it cannot work with.

Each is also the built-in exception torchao raises for the same mistake, so code catching
torchao's exceptions catches pt2q's.
"""

from __future__ import annotations

__all__ = ["QuantizationArgumentError", "UnsupportedQuantizationError", "ChannelAxisError"]


class QuantizationArgumentError(ValueError, AssertionError):
    """An invalid range, dtype, qscheme or min/max given to an observer or a quantization helper.

    Both a ``ValueError`` and the ``AssertionError`` torchao raises for the same mistakes.
    """


class UnsupportedQuantizationError(ValueError, NotImplementedError):
    """A combination an observer does not support (a qscheme, dynamic quantization, reduce_range).

    Both a ``ValueError`` and the ``NotImplementedError`` torchao raises for the same combinations.
    """


class ChannelAxisError(ValueError, IndexError):
    """A channel axis outside the tensor's dimensions (also the ``IndexError`` torchao raises there)."""
