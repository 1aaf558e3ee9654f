"""Run an int8 ``conv1d`` as the ``conv2d`` it equals, before Inductor lowers it to oneDNN.

Inductor (torch 2.13) lowers ``dequantize -> conv1d`` to ``onednn.qconv_pointwise`` on a weight
it prepacks as 4-D, and the op's shape function then reads that weight's unit dim as the kernel:
every int8 conv1d with a kernel longer than 1 gets the wrong output length in the graph
(``x + conv1d(x)`` fails to compile with "Attempting to broadcast a dimension of length 52";
Wav2Vec2's convolutions, torchao's conv1d + relu pattern alike). A conv1d over ``(N, C, L)`` is
the conv2d over ``(N, C, 1, L)`` with a ``(O, I, 1, K)`` kernel, which Inductor lowers correctly:
:func:`quantized_conv1d_as_conv2d` writes it so, moving the unsqueeze onto the int8 tensors
(the Q/DQ pair keeps its qparams, so the int8 arithmetic is unchanged) and squeezing the output.
"""

from __future__ import annotations

import copy
from typing import Any, TypeVar

import torch
from torch.fx import GraphModule, Node

from pt2q.core.attrs import get_attr_value, set_new_attr
from pt2q.io.quiet import quiet

__all__ = ["quantized_conv1d_as_conv2d", "has_quantized_conv1d", "conv1d_as_conv2d_copy"]

aten = torch.ops.aten
M = TypeVar("M", bound=torch.nn.Module)
qd = torch.ops.quantized_decomposed
_DQ_ACT = {qd.dequantize_per_tensor.default, qd.dequantize_per_tensor.tensor}
_DQ_WEIGHT = {qd.dequantize_per_channel.default, qd.dequantize_per_tensor.default}


def _one(value: Any) -> int:
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def _quantized_parts(node: Node) -> tuple[Node, Node] | None:
    """The activation and weight dequantize of an int8 ``conv1d`` with a stored int8 weight, else None."""
    if node.op != "call_function" or node.target is not aten.conv1d.default or len(node.args) < 2:
        return None
    x, w = node.args[0], node.args[1]
    if not (isinstance(x, Node) and x.target in _DQ_ACT and isinstance(w, Node) and w.target in _DQ_WEIGHT):
        return None
    stored = w.args[0]
    if not isinstance(stored, Node) or stored.op != "get_attr":
        return None
    return x, w


def has_quantized_conv1d(gm: torch.nn.Module) -> bool:
    """Whether ``gm`` is a GraphModule with an int8 conv1d :func:`quantized_conv1d_as_conv2d` would rewrite."""
    return isinstance(gm, GraphModule) and any(_quantized_parts(n) for n in gm.graph.nodes)


def conv1d_as_conv2d_copy(model: M) -> M:
    """``model`` itself, or a copy with its int8 conv1d rewritten (the caller's model is left alone)."""
    if not has_quantized_conv1d(model):
        return model
    with quiet():  # deep-copying the module's pytree specs warns in torch 2.13
        copied = copy.deepcopy(model)
    quantized_conv1d_as_conv2d(copied)  # type: ignore[arg-type]
    return copied


def _unsqueezed_dequantize(gm: GraphModule, dq: Node, source: Node) -> Node:
    """A copy of ``dq`` reading ``source`` (its int8 input with a unit dim at 2)."""
    new = gm.graph.call_function(dq.target, (source, *dq.args[1:]), dict(dq.kwargs))  # type: ignore[arg-type]
    new.meta.update({k: v for k, v in dq.meta.items() if k != "val"})
    return new


def quantized_conv1d_as_conv2d(gm: GraphModule) -> int:
    """Rewrite every int8 ``conv1d(dq(x), dq(w), b)`` into ``squeeze(conv2d(dq(x[:, :, None]), dq(w4), b), 2)``.

    ``w4`` is the stored int8 weight with a unit dim at 2 (its per-channel axis 0 is unchanged).
    In place; returns how many convs were rewritten.
    """
    rewritten = 0
    weights: dict[str, str] = {}
    for node in list(gm.graph.nodes):
        parts = _quantized_parts(node)
        if parts is None:
            continue
        x_dq, w_dq = parts
        stored = w_dq.args[0]
        assert isinstance(stored, Node)
        target = str(stored.target)
        if target not in weights:
            weights[target] = set_new_attr(gm, "_conv1d_as_2d_weight_", get_attr_value(gm, target).unsqueeze(2))
        args = list(node.args) + [None, 1, 0, 1, 1][len(node.args) - 2 :]
        bias, stride, padding, dilation, groups = args[2:7]
        with gm.graph.inserting_before(node):
            x_int8 = gm.graph.call_function(aten.unsqueeze.default, (x_dq.args[0], 2))
            x4 = _unsqueezed_dequantize(gm, x_dq, x_int8)
            w4 = _unsqueezed_dequantize(gm, w_dq, gm.graph.get_attr(weights[target]))
            conv = gm.graph.call_function(
                aten.conv2d.default,
                (x4, w4, bias, [1, _one(stride)], [0, _one(padding)], [1, _one(dilation)], groups),
            )
            out = gm.graph.call_function(aten.squeeze.dim, (conv, 2))
        for new in (conv, out):
            new.meta.update({k: v for k, v in node.meta.items() if k != "val"})
        node.replace_all_uses_with(out)
        gm.graph.erase_node(node)
        for dq in (x_dq, w_dq):
            if not dq.users:
                gm.graph.erase_node(dq)
        rewritten += 1
    if rewritten:
        gm.graph.lint()
        gm.recompile()
    return rewritten
