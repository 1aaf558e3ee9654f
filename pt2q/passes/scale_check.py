"""Warn at convert time about quantization scales no real activation needs.

An int8 (or uint8) tensor with scale ``s`` spans about ``256 * s``. Above
:data:`ABSURD_SCALE` (1e3, a span over ±1.2e5) the observed range comes from constants,
not from activations: an attention mask holding ``torch.finfo(dtype).min`` (scale ~1e36),
a ``masked_fill(-1e9)``, an overflowing sum. Every ordinary value of such a tensor rounds
to the same one or two levels, so the model is silently wrong. The XNNPACK and x86
quantizers keep the masks they recognise float (``pt2q.quantizers.mask_guard``); this check
catches the rest, whatever the quantizer, and names the node so it can be kept float.
"""

from __future__ import annotations

import warnings

import torch
from torch.fx import GraphModule, Node

from pt2q.core.attrs import constant_attr
from pt2q.core.ops import DQ_OPS, Q_OPS, is_op

__all__ = ["ABSURD_SCALE", "QuantizationRangeWarning", "absurd_scales", "warn_absurd_scales"]

ABSURD_SCALE = 1e3


class QuantizationRangeWarning(UserWarning):
    """A tensor was quantized with a scale above ``ABSURD_SCALE``: its values are lost."""


def _scale(gm: GraphModule, q: Node) -> float | None:
    scale = q.args[1] if len(q.args) > 1 else None
    if isinstance(scale, (int, float)):
        return float(scale)
    value = constant_attr(gm, scale)  # per channel: a stored tensor; dynamic: computed at run time
    return float(value.max()) if isinstance(value, torch.Tensor) and value.numel() else None


def absurd_scales(gm: GraphModule) -> list[tuple[Node, float]]:
    """(quantize node, scale) for every static quantize op of ``gm`` whose scale exceeds ``ABSURD_SCALE``."""
    found = []
    for node in gm.graph.nodes:
        if is_op(node, Q_OPS):
            scale = _scale(gm, node)
            if scale is not None and not scale <= ABSURD_SCALE:  # NaN counts as absurd
                found.append((node, scale))
    return found


def _readers(q: Node) -> list[str]:
    users = [u for dq in q.users for u in (dq.users if is_op(dq, DQ_OPS) else [dq])]
    return sorted({u.name for u in users})


def warn_absurd_scales(gm: GraphModule) -> None:
    """One ``QuantizationRangeWarning`` per quantized tensor of ``gm`` with an absurd scale."""
    for q, scale in absurd_scales(gm):
        source = q.args[0].name if isinstance(q.args[0], Node) else "a constant"
        readers = ", ".join(_readers(q)) or "nothing"
        warnings.warn(
            f"convert_pt2e: node '{source}' (read by {readers}) is quantized with scale {scale:.3g}, above "
            f"{ABSURD_SCALE:g}: its observed range comes from huge constants (e.g. an attention mask "
            "holding finfo.min) and every ordinary value rounds alike. Keep {readers} float (e.g. a None "
            "config for its module).",
            QuantizationRangeWarning,
            stacklevel=3,
        )
