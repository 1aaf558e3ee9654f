"""torchao's affine quantization ops, loaded for the converted graphs that call them.

``torch.ops.torchao.choose_qparams_affine / quantize_affine / dequantize_affine`` are
defined by torchao's op library; ExecuTorch's XNNPACK partitioner recognises exactly
these (dynamic per-token int8 activations, groupwise or per-channel low-bit weights), so
pt2q emits them rather than look-alikes. The library is loaded on first use, with the
log lines and warnings torchao prints at import silenced at that call. The predicates on
nodes calling them live with the other op predicates in :mod:`pt2q.core.ops` (by name: they
never load the library).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = ["affine_ops"]

_NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def _quiet_import() -> Iterator[None]:
    """Silence torchao's import-time log lines (missing optional kernels) and warnings."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@functools.lru_cache(maxsize=1)
def affine_ops() -> Any:
    """``torch.ops.torchao`` with the affine ops registered (imports torchao's op library once, quietly)."""
    import torch

    try:
        with _quiet_import():
            import torchao.quantization.quant_primitives  # noqa: F401  registers torch.ops.torchao.*_affine
    except ImportError as e:
        raise ImportError(
            "affine (low-bit) quantization emits torchao's quantize_affine/dequantize_affine ops, which need "
            "the torchao package: pip install torchao (it comes with executorch)"
        ) from e
    return torch.ops.torchao
