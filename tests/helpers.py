"""Test utilities: run a model through pt2q's or torchao's PT2E flow, and describe Q/DQ graphs."""

from __future__ import annotations

import collections
import copy
import io
from collections.abc import Callable
from typing import Any

import torch
from torch.fx import GraphModule

import pt2q

qd = torch.ops.quantized_decomposed
QDQ_TARGETS = {
    qd.quantize_per_tensor.default,
    qd.quantize_per_tensor.tensor,
    qd.quantize_per_channel.default,
    qd.dequantize_per_tensor.default,
    qd.dequantize_per_tensor.tensor,
    qd.dequantize_per_channel.default,
    qd.choose_qparams.tensor,
    qd.choose_qparams_symmetric.tensor,
}


def export_module(model: torch.nn.Module, example: tuple) -> GraphModule:
    return torch.export.export(copy.deepcopy(model), example).module()


def run_flow(prepare: Callable, convert: Callable, quantizer: Any, model, example, batches) -> GraphModule:
    m = prepare(export_module(model, example), quantizer)
    for batch in batches:
        m(*batch)
    return convert(m)


def pt2q_flow(quantizer, model, example, batches) -> GraphModule:
    return run_flow(pt2q.prepare_pt2e, pt2q.convert_pt2e, quantizer, model, example, batches)


def torchao_flow(quantizer, model, example, batches) -> GraphModule:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    return run_flow(prepare_pt2e, convert_pt2e, quantizer, model, example, batches)


def _arg_value(gm: GraphModule, arg: Any) -> Any:
    if isinstance(arg, torch.fx.Node):
        if arg.op == "get_attr":
            value = gm
            for part in arg.target.split("."):
                value = getattr(value, part)
            return (
                tuple(value.flatten().tolist()) if value.numel() < 4096 else ("tensor", tuple(value.shape), value.dtype)
            )
        return "node"
    return arg


def qdq_signature(gm: GraphModule) -> collections.Counter:
    """Multiset of (op, qparams) over all quantize/dequantize/choose_qparams nodes."""
    sig: collections.Counter = collections.Counter()
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target in QDQ_TARGETS:
            sig[(str(n.target),) + tuple(_arg_value(gm, a) for a in n.args[1:])] += 1
    return sig


def saved_size(gm: GraphModule, example: tuple) -> int:
    buf = io.BytesIO()
    torch.export.save(torch.export.export(gm, example), buf)
    return buf.getbuffer().nbytes
