"""The qschemes, grouped: per tensor, per channel, symmetric; and the predicates on them."""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["PER_TENSOR_QSCHEMES", "PER_CHANNEL_QSCHEMES", "SYMMETRIC_QSCHEMES", "is_per_tensor", "is_per_channel"]

PER_TENSOR_QSCHEMES = (torch.per_tensor_affine, torch.per_tensor_symmetric)
PER_CHANNEL_QSCHEMES = (torch.per_channel_affine, torch.per_channel_symmetric, torch.per_channel_affine_float_qparams)
SYMMETRIC_QSCHEMES = (torch.per_tensor_symmetric, torch.per_channel_symmetric)


def is_per_tensor(qscheme: Optional[torch.qscheme]) -> bool:
    """Whether ``qscheme`` gives one scale and zero point for the whole tensor."""
    return qscheme in PER_TENSOR_QSCHEMES


def is_per_channel(qscheme: Optional[torch.qscheme]) -> bool:
    """Whether ``qscheme`` gives a scale and zero point per channel."""
    return qscheme in PER_CHANNEL_QSCHEMES
