"""Error metrics between a reference tensor and an approximation of it."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["sqnr"]


def sqnr(reference: Tensor, other: Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``other`` against ``reference``, in dB (inf if equal)."""
    ref = reference.detach().to(torch.float64)
    noise = (ref - other.detach().to(torch.float64)).norm().item()
    signal = ref.norm().item()
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 20.0 * math.log10(signal / noise)
