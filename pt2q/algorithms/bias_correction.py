"""Empirical bias correction of a converted (Q/DQ) model against its float original.

Quantizing a layer's weights and inputs shifts the *mean* of its outputs per channel; the
shift accumulates through the network. For each linear and conv whose weight is quantized,
in graph order, this pass measures on calibration data the mean per output channel of the
float model's output and of the quantized model's (with the corrections of every earlier
layer already in place) and adds the difference to the layer's float bias (Nagel et al.,
2019; NNCF's BiasCorrection). Layers whose bias is itself quantized are left alone.

It works on any converted graph whatever the quantizer: float and quantized layers are
matched by their debug handles (``pt2q.debug.numeric_debugger``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule, Interpreter, Node

from pt2q.core.attrs import get_attr_value, set_new_attr
from pt2q.core.notes import NodeSourceDebugInfo, debug_info
from pt2q.core.ops import CONV, DQ_OPS, LINEAR, is_op
from pt2q.debug.layer_errors import match_handles

__all__ = ["BiasCorrection", "correct_bias"]


@dataclass(frozen=True)
class BiasCorrection:
    """The correction added to one layer's bias: its largest magnitude and its RMS."""

    layer: str
    max_abs: float
    rms: float


class _Until(Interpreter):
    """Runs a graph up to one node, returns that node's value (or records values of chosen nodes)."""

    class _Reached(Exception):
        def __init__(self, value: Any) -> None:
            self.value = value

    def __init__(self, gm: GraphModule, stop: Node | None = None, record: set[Node] | None = None) -> None:
        super().__init__(gm)
        self.stop, self.record = stop, record or set()
        self.values: dict[Node, Any] = {}

    def run_node(self, n: Node) -> Any:
        value = super().run_node(n)
        if n is self.stop:
            raise _Until._Reached(value)
        if n in self.record:
            self.values[n] = value
        return value

    def value_at(self, *batch: Any) -> Any:
        try:
            self.run(*batch, enable_io_processing=True)
        except _Until._Reached as reached:
            return reached.value
        raise RuntimeError(f"bias_correction: node {self.stop} was not reached")


def _channel_mean(value: torch.Tensor, conv: bool) -> torch.Tensor:
    dims = [d for d in range(value.dim()) if d != (1 if conv else value.dim() - 1)]
    return value.detach().double().mean(dim=dims)


def _quantized_weight(node: Node) -> bool:
    weight = node.args[1] if len(node.args) > 1 else None
    return isinstance(weight, Node) and is_op(weight, DQ_OPS) and isinstance(weight.args[0], Node)


def _targets(gm: GraphModule) -> list[Node]:
    """Linears/convs with a quantized weight and a float (or no) bias."""
    out = []
    for node in gm.graph.nodes:
        if not (is_op(node, LINEAR) or is_op(node, CONV)) or not _quantized_weight(node):
            continue
        bias = node.args[2] if len(node.args) > 2 else None
        if bias is None or (isinstance(bias, Node) and bias.op == "get_attr"):
            out.append(node)
    return out


def _add_to_bias(gm: GraphModule, node: Node, delta: torch.Tensor) -> None:
    bias = node.args[2] if len(node.args) > 2 else None
    if isinstance(bias, Node):
        *path, name = str(bias.target).split(".")
        owner = gm.get_submodule(".".join(path))
        old = get_attr_value(gm, str(bias.target)).detach()
        new = old + delta.to(old.dtype)
        if isinstance(getattr(owner, name), torch.nn.Parameter):
            setattr(owner, name, torch.nn.Parameter(new, requires_grad=False))
        else:
            owner.register_buffer(name, new)
        return
    name = set_new_attr(gm, "_bias_correction_", delta.float())
    with gm.graph.inserting_before(node):
        attr = gm.graph.get_attr(name)
    node.args = (*node.args[:2], attr, *node.args[3:])


def correct_bias(
    quantized: GraphModule, float_model: GraphModule, calibration_data: Sequence[Sequence[Any]]
) -> list[BiasCorrection]:
    """Correct the biases of ``quantized`` (a converted graph) in place; return what was added.

    ``float_model`` is the exported float graph ``quantized`` was prepared from (its
    ``ep.module()``); ``calibration_data`` a list of input tuples.
    """
    if not calibration_data:
        raise ValueError("bias_correction: needs calibration data")
    to_float = match_handles(float_model, quantized)  # by debug handle, or by node name if exported apart
    handles: dict[Node, NodeSourceDebugInfo] = {}
    for t in _targets(quantized):
        if (h := debug_info(t)) is not None and h in to_float:
            handles[t] = to_float[h]
    float_nodes = {h: n for n in float_model.graph.nodes if (h := debug_info(n)) in set(handles.values())}
    targets = [t for t in handles if handles[t] in float_nodes]
    conv = {t: is_op(t, CONV) for t in targets}

    float_run = _Until(float_model, record={float_nodes[handles[t]] for t in targets})
    float_sum: dict[Node, torch.Tensor] = {}
    with torch.no_grad():
        for batch in calibration_data:
            float_run.values = {}
            float_run.run(*batch, enable_io_processing=True)
            for t in targets:
                mean = _channel_mean(float_run.values[float_nodes[handles[t]]], conv[t])
                float_sum[t] = float_sum[t] + mean if t in float_sum else mean

    done = []
    for t in targets:  # in graph order: each layer sees the earlier corrections
        with torch.no_grad():
            quantized_mean = sum(
                _channel_mean(_Until(quantized, stop=t).value_at(*b), conv[t]) for b in calibration_data
            )
        delta = (float_sum[t] - quantized_mean) / len(calibration_data)
        _add_to_bias(quantized, t, delta)
        quantized.recompile()
        done.append(BiasCorrection(handles[t].name, float(delta.abs().max()), float(delta.pow(2).mean().sqrt())))
    return done
