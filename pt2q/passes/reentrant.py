"""Quantizing a converted model again: a second round quantizes what the first left float, and nothing twice.

A converted model can be prepared again, with a quantizer for another part of it (a module-name
filter) or with the same quantizer. Three rules keep the values the first round quantized as they are:

* :func:`seal_previous_round` (before annotating): the nodes the first round annotated keep a claim
  with no specs, so quantizers (which skip claimed nodes) leave them alone;
* :func:`keep_existing_qparams` (after annotating): a new reader of a dequantized value observes
  nothing: it is quantized with the scale and zero point that value already has; a new node whose
  output feeds existing quantize nodes gets their qparams;
* :func:`drop_requantize` (in convert): ``quantize(dequantize(q))`` with the same qparams is ``q``.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch.fx import GraphModule, Node

from pt2q.core.control_flow import graph_modules
from pt2q.core.ops import DQ_PER_TENSOR, Q_PER_TENSOR, is_op
from pt2q.core.spec import Q_ANNOTATION_KEY, FixedQParamsQuantizationSpec, QuantizationAnnotation

__all__ = ["is_quantized", "seal_previous_round", "keep_existing_qparams", "drop_requantize"]

_EARLIER_ROUND = "pt2q_earlier_round"  # meta flag of a Q/DQ node whose qparams a second round reuses


def is_quantized(gm: GraphModule) -> bool:
    """True if ``gm`` (or a control-flow body in it) holds static quantize/dequantize ops: it was converted."""
    return any(is_op(n, DQ_PER_TENSOR | Q_PER_TENSOR) for m in graph_modules(gm) for n in m.graph.nodes)


def seal_previous_round(gm: GraphModule) -> GraphModule:
    """Replace each annotation of an earlier round by an empty claim (in place)."""
    for m in graph_modules(gm):
        for node in m.graph.nodes:
            if Q_ANNOTATION_KEY in node.meta:
                node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(_annotated=True)
    return gm


def _qparams(node: Node) -> tuple[Any, ...]:
    """(scale, zero_point, quant_min, quant_max, dtype) of a static per-tensor quantize or dequantize."""
    return tuple(node.args[1:6])


def _fixed(qparams: tuple[Any, ...]) -> FixedQParamsQuantizationSpec:
    scale, zero_point, quant_min, quant_max, dtype = qparams
    return FixedQParamsQuantizationSpec(
        dtype=dtype,
        scale=float(scale),
        zero_point=int(zero_point),
        quant_min=int(quant_min),
        quant_max=int(quant_max),
        qscheme=torch.per_tensor_affine,
    )


def _existing_output_qparams(node: Node) -> Optional[tuple[Any, ...]]:
    """The qparams every reader of ``node`` already quantizes it with, if all of them are quantize ops."""
    readers = list(node.users)
    if not readers or not all(is_op(u, Q_PER_TENSOR) and u.args[0] is node for u in readers):
        return None
    found = {_qparams(u) for u in readers}
    return found.pop() if len(found) == 1 else None


def keep_existing_qparams(gm: GraphModule) -> GraphModule:
    """New annotations of a second round reuse the qparams of values the first round quantized (in place)."""
    for m in graph_modules(gm):
        for node in m.graph.nodes:
            ann = node.meta.get(Q_ANNOTATION_KEY)
            if not isinstance(ann, QuantizationAnnotation):
                continue
            for arg, spec in list(ann.input_qspec_map.items()):
                if spec is not None and is_op(arg, DQ_PER_TENSOR):
                    ann.input_qspec_map[arg] = _fixed(_qparams(arg))
                    arg.meta[_EARLIER_ROUND] = True
            if ann.output_qspec is not None:
                existing = _existing_output_qparams(node)
                if existing is not None:
                    ann.output_qspec = _fixed(existing)
                    for q in node.users:
                        q.meta[_EARLIER_ROUND] = True
    return gm


def drop_requantize(gm: GraphModule) -> GraphModule:
    """``quantize(dequantize(x))`` with equal qparams, where one of the two comes from an earlier round,
    becomes ``x`` (in place, in every body too)."""
    for m in graph_modules(gm):
        for q in list(m.graph.nodes):
            dq = q.args[0] if is_op(q, Q_PER_TENSOR) else None
            if not isinstance(dq, Node) or not is_op(dq, DQ_PER_TENSOR) or _qparams(dq) != _qparams(q):
                continue
            if dq.meta.get(_EARLIER_ROUND) or q.meta.get(_EARLIER_ROUND):
                source = dq.args[0]
                assert isinstance(source, Node)
                q.replace_all_uses_with(source)
                m.graph.erase_node(q)
                if not dq.users:
                    m.graph.erase_node(dq)
        for node in m.graph.nodes:
            node.meta.pop(_EARLIER_ROUND, None)
        m.recompile()
    return gm
