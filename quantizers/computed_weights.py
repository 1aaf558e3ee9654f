"""Fold weights computed from parameters (weight norm, ...) into stored weights before annotation.

Wav2Vec2's positional convolution computes its weight in the graph:
``conv1d(x, _weight_norm(v, g, 2), bias)``. A quantizer's conv/linear pattern gives a weight a
per-channel weight spec, but ``_weight_norm``'s output is a computed tensor, not a stored
parameter: the observer would sit on an activation (which XNNPACK and oneDNN run with one scale
per tensor) and the delegate could not pack it. At inference the computation depends on
parameters only, so its result is a constant: :func:`fold_computed_weights` evaluates it once
and stores the result as a weight the patterns quantize like any other.

A weight computed from an activation (not foldable) is left alone; the patterns give it a
per-tensor spec (:func:`pt2q.quantizers.patterns.weighted_inputs`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import GraphModule, Node
from torch.utils import _pytree as pytree

from pt2q.core.attrs import get_attr_value, set_new_attr
from pt2q.core.dead_code import erase_with_dead_inputs
from pt2q.core.ops import ANY_QDQ, CONV, CONV_TRANSPOSE, LINEAR, is_op

__all__ = ["fold_computed_weights", "parameter_only"]


def parameter_only(node: Node, memo: dict[Node, bool]) -> bool:
    """Whether ``node`` is computed from stored tensors (get_attr) and constants alone (a quantize or
    dequantize op is not a computation to fold: it is a quantized weight of an earlier round)."""
    if node not in memo:
        if node.op == "get_attr":
            memo[node] = True
        elif is_op(node, ANY_QDQ):
            memo[node] = False
        elif node.op == "call_function" and not node.target.__name__.startswith("_assert"):  # type: ignore[union-attr]
            inputs = node.all_input_nodes
            memo[node] = bool(inputs) and all(parameter_only(a, memo) for a in inputs)
        else:
            memo[node] = False
    return memo[node]


def _evaluate(gm: GraphModule, node: Node, values: dict[Node, Any]) -> Any:
    if node not in values:
        if node.op == "get_attr":
            values[node] = get_attr_value(gm, str(node.target))
        else:
            args, kwargs = pytree.tree_map_only(Node, lambda a: _evaluate(gm, a, values), (node.args, node.kwargs))
            values[node] = node.target(*args, **kwargs)  # type: ignore[operator]
    return values[node]


def fold_computed_weights(gm: GraphModule) -> GraphModule:
    """Replace each conv/linear weight computed from parameters only by a stored tensor (in place)."""
    memo: dict[Node, bool] = {}
    replaced: list[Node] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or not is_op(node, CONV | CONV_TRANSPOSE | LINEAR) or len(node.args) < 2:
            continue
        weight = node.args[1]
        if not isinstance(weight, Node) or weight.op == "get_attr" or not parameter_only(weight, memo):
            continue
        with torch.no_grad():
            value = _evaluate(gm, weight, {}).detach().clone()
        name = set_new_attr(gm, "_folded_weight_", value)
        with gm.graph.inserting_before(node):
            stored = gm.graph.get_attr(name)
        stored.meta.update({k: v for k, v in weight.meta.items() if k != "quantization_annotation"})
        node.replace_input_with(weight, stored)
        replaced.append(weight)
    if replaced:
        erase_with_dead_inputs(gm, replaced)
        gm.recompile()
    return gm
