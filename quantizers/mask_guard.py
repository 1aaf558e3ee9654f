"""Keep attention masks float: find mask-like tensors, and the nodes a quantizer must leave alone.

An additive attention mask (``scores + (1 - mask) * torch.finfo(dtype).min``, or
``torch.where(keep, 0, finfo.min)``, or ``scores.masked_fill(~keep, -inf)``) holds a few
huge constants next to ordinary values. Quantized per tensor, its range gives a scale
of ~1e36 (or ~40 for the old ``-10000.0`` masks): every attention score rounds to the same
value and softmax turns uniform. This module finds such tensors *structurally*, before any
calibration, so the XNNPACK and x86 quantizers can leave them float by default.

A float tensor is **mask-like** when either

* it is computed without any float activation or weight (only from integer/bool inputs,
  scalars and stored masks) and an extreme constant takes part in computing it, where
  extreme means non-finite or of magnitude at least :data:`MASK_VALUE_BOUND` (1e4: HF's
  ``-10000.0``, ``-1e9``, ``finfo.min``, ``-inf``) reaches it through ops that keep it (a fill,
  ``full``, add, sub, mul, a view; not ``10000 ** x`` as in rotary frequencies); or
* it is a ``where`` / ``masked_fill`` that fills with an extreme constant; or
* it is an add, sub, mul, div, ``where``, ``masked_fill`` or a view/copy of a mask-like
  tensor (``scores + mask`` is dominated by the mask's constants just the same).

The guard also keeps float the integer index arithmetic a model carries in float
(:mod:`pt2q.quantizers.index_guard`: T5/MPNet position buckets, float position ids).
A quantizer keeps float every node that computes a mask-like tensor or reads one as an
operand (:meth:`MaskGuard.allows`), and tells ``pt2q.report`` why (:meth:`MaskGuard.reason`).
"""

from __future__ import annotations

import math
from typing import Optional, TypeGuard

import torch
from torch.fx import GraphModule, Node

from pt2q.core.attrs import get_attr_value
from pt2q.core.ops import ADD, DIV, FULL, MASKED_FILL, MOVE_OPS, MUL, SUB, WHERE, is_op, ops
from pt2q.quantizers.index_guard import find_index_derived

__all__ = ["MASK_VALUE_BOUND", "find_mask_like", "MaskGuard"]

MASK_VALUE_BOUND = 1e4
_INDEX_WHY = "positions and buckets must stay exact (and may hold -inf before a clamp)"

# ops that fill masked positions with a value
_FILL_OPS = WHERE | MASKED_FILL
# elementwise arithmetic whose result a mask operand dominates
_ARITH_OPS = (
    ADD | SUB | MUL | DIV | ops(torch.ops.aten.add.Scalar, torch.ops.aten.mul.Scalar, torch.ops.aten.neg.default)
)
# ops whose extreme scalar argument ends up in their output (not pow(10000, x), not x / 1e4)
_TAKES_EXTREME = _FILL_OPS | FULL | ADD | SUB | MUL | ops(torch.ops.aten.add.Scalar, torch.ops.aten.mul.Scalar)
# ops whose output keeps an extreme value of their input (not exp, pow, softmax, ...)
_KEEPS_EXTREME = MOVE_OPS | _FILL_OPS | _ARITH_OPS


def _is_float(node: Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.is_floating_point()


def _extreme_number(x: object) -> TypeGuard[int | float]:
    return (
        isinstance(x, (int, float)) and not isinstance(x, bool) and (not math.isfinite(x) or abs(x) >= MASK_VALUE_BOUND)
    )


def _extreme_attr(gm: GraphModule, node: Node) -> Optional[float]:
    """The largest-magnitude value of a stored float tensor, if it is extreme."""
    try:
        value = get_attr_value(gm, str(node.target)).detach()
    except (AttributeError, AssertionError):
        return None
    if not value.is_floating_point() or value.numel() == 0:
        return None
    peak = float(value.flatten()[value.abs().flatten().argmax()])
    return peak if _extreme_number(peak) else None


def _scalar_args(node: Node) -> list[object]:
    return [a for a in (*node.args, *node.kwargs.values()) if not isinstance(a, Node)]


def _fmt(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else str(value)


def find_mask_like(gm: GraphModule) -> dict[Node, str]:
    """Every node computing a mask-like float tensor (see module docs), with a description."""
    constant: dict[Node, bool] = {}  # computed without float activations
    extreme: dict[Node, Optional[float]] = {}  # an extreme constant taking part in computing it
    found: dict[Node, str] = {}
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            constant[n], extreme[n] = not _is_float(n), None
            continue
        if n.op == "get_attr":  # scalars, integer buffers and stored masks; not weights or tables
            extreme[n] = _extreme_attr(gm, n)
            constant[n] = extreme[n] is not None or not _is_float(n) or n.meta["val"].numel() <= 1
            continue
        if n.op != "call_function":
            continue
        inputs = n.all_input_nodes
        constant[n] = all(constant.get(a, False) for a in inputs)
        scalars = [float(x) for x in _scalar_args(n) if _extreme_number(x)] if is_op(n, _TAKES_EXTREME) else []
        upstream = [extreme[a] for a in inputs if extreme.get(a) is not None] if is_op(n, _KEEPS_EXTREME) else []
        extreme[n] = value = scalars[0] if scalars else (upstream[0] if upstream else None)
        if not _is_float(n):
            continue
        masks = [a for a in inputs if a in found]
        if constant[n] and value is not None:
            found[n] = f"an attention mask (it holds {_fmt(value)})"
        elif is_op(n, _FILL_OPS) and scalars:
            found[n] = f"a masked tensor (filled with {_fmt(scalars[0])})"
        elif masks and is_op(n, MOVE_OPS):
            found[n] = found[masks[0]]
        elif masks and is_op(n, _FILL_OPS | _ARITH_OPS):
            found[n] = f"a masked tensor (it reads the mask {masks[0].name})"
    return found


class MaskGuard:
    """A quantizer's guard that keeps mask-like tensors and index arithmetic float (on by default).

    Index arithmetic: float tensors computed only from integer sources (positions, buckets;
    :func:`pt2q.quantizers.index_guard.find_index_derived`), and the nodes reading them.

    ``scan(gm)`` once per ``annotate``; then ``allows(node)`` filters the patterns
    (False for a node computing or reading a mask-like tensor) and ``reason(node)``
    says why it stayed float. ``MaskGuard(enabled=False)`` quantizes masks like any
    tensor (what torchao and ExecuTorch do).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._reasons: dict[str, str] = {}

    def scan(self, gm: GraphModule) -> MaskGuard:
        self._reasons = {}
        if not self.enabled:
            return self
        masks = find_mask_like(gm)
        indices = {n: why for n, why in find_index_derived(gm).items() if n not in masks}
        for node in gm.graph.nodes:
            operand = next((a for a in node.all_input_nodes if a in masks), None)
            index = next((a for a in node.all_input_nodes if a in indices), None)
            if operand is not None and node.op == "call_function":
                self._reasons[node.name] = (
                    f"kept float (mask guard): its operand {operand.name} is {masks[operand]}; "
                    "quantized, its range would round every ordinary value alike"
                )
            elif node in masks:
                self._reasons[node.name] = f"kept float (mask guard): it computes {masks[node]}"
            elif node in indices:
                self._reasons[node.name] = f"kept float (index guard): it computes {indices[node]}; {_INDEX_WHY}"
            elif index is not None and node.op == "call_function":
                self._reasons[node.name] = (
                    f"kept float (index guard): its operand {index.name} is {indices[index]}; {_INDEX_WHY}"
                )
        return self

    def allows(self, node: Node) -> bool:
        """False if ``node`` computes or reads a mask-like tensor (it must stay float)."""
        return node.name not in self._reasons

    def reason(self, node: Node) -> Optional[str]:
        """Why ``node`` stays float, if the guard is what keeps it."""
        return self._reasons.get(node.name)
