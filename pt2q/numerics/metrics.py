"""Error metrics between a reference tensor and an approximation of it."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["sqnr", "sqnr_of_energies", "actual_signal_sqnr"]


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


def sqnr_of_energies(signal: float, noise: float) -> float:
    """SQNR in dB from summed squares, ``10·log10(signal / noise)``: what several tensors (or batches)
    pooled together measure. inf when ``noise`` is 0, -inf when ``signal`` is 0."""
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def actual_signal_sqnr(actual: Tensor, ref: Tensor) -> Tensor:
    """``20·log10(‖actual‖ / ‖actual − ref‖)`` in dB, as a tensor: torchao's numeric-debugger definition
    (``torch.ao.ns.fx.utils.compute_sqnr``), whose signal is ``actual``, not the reference as in :func:`sqnr`."""
    return 20 * torch.log10(torch.linalg.norm(actual) / torch.linalg.norm(actual - ref))
