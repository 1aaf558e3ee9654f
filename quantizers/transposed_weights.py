"""Turn ``addmm(bias, x, W)`` on a stored ``(in, out)`` weight into ``linear(x, W.T, bias)`` before annotation.

GPT-2's ``Conv1D`` (also in GPT-Neo's, DialoGPT's and many Hub models' code) stores its weight
transposed, ``(in_features, out_features)``, and computes ``torch.addmm(bias, x.view(-1, in), W)``.
No linear pattern sees it: every projection of the model would stay float. The product is the
same as ``linear(x, W.T, bias)``, so :func:`addmm_as_linear` stores ``W.T`` once and writes the
linear, which the quantizer's linear patterns then quantize per output channel and XNNPACK
runs as an int8 fully-connected layer. ``mm(x, W)`` without a bias is handled alike.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from pt2q.core.attrs import get_attr_value, remove_unused_attributes, set_new_attr

__all__ = ["addmm_as_linear"]

aten = torch.ops.aten


def _stored_matrix(gm: GraphModule, node: object) -> torch.Tensor | None:
    if not isinstance(node, Node) or node.op != "get_attr":
        return None
    value = get_attr_value(gm, str(node.target))
    return value if value.dim() == 2 and value.is_floating_point() else None


def addmm_as_linear(gm: GraphModule) -> int:
    """Rewrite ``addmm(b, x, W)`` / ``mm(x, W)`` with a stored 2-D ``W`` into ``linear(x, W.T, b)`` (in place)."""
    rewritten = 0
    transposed: dict[str, str] = {}  # weight target -> its stored transpose (a weight shared by several calls)
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.kwargs:  # beta/alpha other than 1 stay addmm
            continue
        if node.target is aten.addmm.default:
            bias, x, weight = node.args
            if not isinstance(bias, Node) or bias.meta.get("val") is None or bias.meta["val"].dim() != 1:
                continue
        elif node.target is aten.mm.default:
            (x, weight), bias = node.args, None
        else:
            continue
        value = _stored_matrix(gm, weight)
        if value is None or not isinstance(x, Node) or isinstance(weight, Node) and weight.op != "get_attr":
            continue
        target = str(weight.target)
        if target not in transposed:
            transposed[target] = set_new_attr(gm, "_transposed_weight_", value.detach().t().contiguous())
        with gm.graph.inserting_before(node):
            stored = gm.graph.get_attr(transposed[target])
            linear = gm.graph.call_function(aten.linear.default, (x, stored) if bias is None else (x, stored, bias))
        val = weight.meta.get("val")
        if isinstance(val, torch.Tensor):
            with val.fake_mode:  # type: ignore[attr-defined]
                stored.meta["val"] = val.t().contiguous()
        linear.meta.update({k: v for k, v in node.meta.items() if k != "quantization_annotation"})
        node.replace_all_uses_with(linear)
        gm.graph.erase_node(node)
        rewritten += 1
    if rewritten:
        remove_unused_attributes(gm)
    return rewritten
