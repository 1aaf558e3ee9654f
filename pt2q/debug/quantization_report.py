"""``pt2q.report``: what was quantized, how, what stayed float and why, and where accuracy is lost.

    r = pt2q.report(quantized_model, float_model, calibration_batches)
    print(r)                       # one row per layer of the float graph
    r.worst(3)                     # the layers whose own quantization costs the most
    r.plot("sqnr.png")             # bar chart of per-layer SQNR

Each row is one node of the float exported graph (matched through its debug handle, see
:mod:`pt2q.debug.numeric_debugger`) with the tensors quantized for it (role, dtype,
granularity, qparams, observer), or the reason it stayed float, and, given inputs, its
local, cumulative and sensitivity SQNR (:mod:`pt2q.debug.layer_errors`). SQNRs are in dB with
the float model's values as the signal; ``inf`` means bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import nn
from torch.export import ExportedProgram
from torch.fx import GraphModule, Node

from pt2q.core.notes import (
    FLOAT_REASON_KEY,
    NodeSourceDebugInfo,
    claimed_by,
    debug_info,
    module_path,
    note,
    value_handle,
)
from pt2q.core.ops import is_observer_node
from pt2q.debug.inputs import as_batches, float_graph, graph_module
from pt2q.debug.layer_errors import LayerErrors, match_handles, measure_layer_errors
from pt2q.debug.layer_quantization import layer_quantization, op_nodes, result_value
from pt2q.debug.report_table import QuantizationReport, ReportRow, TensorQuantization, owns_quantization

__all__ = ["TensorQuantization", "ReportRow", "QuantizationReport", "report", "as_batches"]


def _float_graph(float_model: Any, batches: list[tuple]) -> Optional[GraphModule]:
    if float_model is None:
        return None
    if isinstance(float_model, nn.Module) and not isinstance(float_model, GraphModule) and not batches:
        raise ValueError("pt2q.report: an eager float_model needs inputs (it is exported with the first batch)")
    first = batches[0] if batches else ()
    who, failed = "pt2q.report: float_model", "pt2q.report: could not export float_model with the first batch of inputs"
    return float_graph(float_model, first, who, export_error=failed)


def _check_converted(q_gm: GraphModule) -> None:
    observers = [n.target for n in q_gm.graph.nodes if is_observer_node(n, q_gm)]
    if observers:
        raise ValueError(
            f"pt2q.report: quantized_model still holds observers ({', '.join(observers[:3])}"
            f"{', ...' if len(observers) > 3 else ''}): calibrate it and call convert_pt2e first"
        )


def _op_name(node: Node) -> str:
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        name = target.name().split("::")[-1]
        return name[: -len(".default")] if name.endswith(".default") else name
    return getattr(target, "__name__", str(target))


def _module_path(node: Node) -> str:
    return module_path(node.meta.get("nn_module_stack") or {})


def _row_order(
    f_gm: Optional[GraphModule],
    q_gm: GraphModule,
    members: dict[NodeSourceDebugInfo, list[Node]],
    to_float: dict[NodeSourceDebugInfo, NodeSourceDebugInfo],
) -> list[tuple[Any, Any, Optional[Node]]]:
    """(float handle, quantized handle or None, float node or None) per row: the float graph's
    operators in order, or without a float graph the quantized graph's layers by first operator."""
    if f_gm is not None:
        from_float = {f: q for q, f in to_float.items()}
        return [
            (f, from_float.get(f), n)
            for n in f_gm.graph.nodes
            if n.op == "call_function" and (f := debug_info(n)) is not None
        ]
    position = {n: i for i, n in enumerate(q_gm.graph.nodes)}
    layers = [(h, ms) for h, ms in members.items() if any(m.op == "call_function" for m in ms)]
    layers.sort(key=lambda item: position[(op_nodes(item[1]) or item[1])[0]])
    return [(h, h, None) for h, _ in layers]


def _float_reason(members: list[Node], float_node: Optional[Node], folded_into: Optional[str] = None) -> str:
    if folded_into is not None:
        return f"folded into {folded_into}"
    for n in [*members, *([float_node] if float_node is not None else [])]:
        if (reason := note(n, FLOAT_REASON_KEY)) is not None:
            return reason
    node = members[-1] if members else float_node
    val = node.meta.get("val") if node is not None else None
    if isinstance(val, torch.Tensor) and not val.is_floating_point():
        return f"its output is {val.dtype}, not a float tensor"
    if not members:
        return "not in the quantized graph (removed by prepare, e.g. BatchNorm folded into its conv)"
    return "the quantizer did not annotate it"


def _group_by_pattern(
    q_gm: GraphModule, members: dict[NodeSourceDebugInfo, list[Node]]
) -> tuple[dict[NodeSourceDebugInfo, NodeSourceDebugInfo], dict[NodeSourceDebugInfo, str]]:
    """Merge the layers one quantizer rule claimed together (linear + relu) into the layer of the rule's
    anchor, in place. Returns (merged handle -> anchor handle, anchor handle -> rule name)."""
    merged_into: dict[NodeSourceDebugInfo, NodeSourceDebugInfo] = {}
    pattern: dict[NodeSourceDebugInfo, str] = {}
    for n in q_gm.graph.nodes:
        claim, h = claimed_by(n), debug_info(n)
        if claim is None or h is None:
            continue
        name, anchor = claim
        if anchor is None or anchor not in members:
            continue
        pattern[anchor] = name
        if h != anchor:
            merged_into[h] = anchor
    position = {n: i for i, n in enumerate(q_gm.graph.nodes)}
    for h, anchor in merged_into.items():
        members[anchor] = sorted([*members[anchor], *members.pop(h, [])], key=position.__getitem__)
    return merged_into, pattern


@dataclass
class _Layers:
    """The quantized graph's layers (keyed by debug handle) and how they map onto the float graph."""

    members: dict[NodeSourceDebugInfo, list[Node]]  # each layer's nodes in the quantized graph
    to_float: dict[NodeSourceDebugInfo, NodeSourceDebugInfo]
    merged_into: dict[NodeSourceDebugInfo, NodeSourceDebugInfo]  # layers shown in their pattern's row
    pattern: dict[NodeSourceDebugInfo, str]
    quantization: dict[NodeSourceDebugInfo, tuple[TensorQuantization, ...]] = field(default_factory=dict)
    # the float value each layer's result stands for (a conv with its BatchNorm folded: the BatchNorm's)
    value_of: dict[NodeSourceDebugInfo, Optional[NodeSourceDebugInfo]] = field(default_factory=dict)
    # a node that computes another's float value (a conv with its BatchNorm folded in) stands for it
    folded_into: dict[Optional[NodeSourceDebugInfo], str] = field(default_factory=dict)


def _layers(q_gm: GraphModule, f_gm: Optional[GraphModule]) -> _Layers:
    members: dict[NodeSourceDebugInfo, list[Node]] = {}
    for n in q_gm.graph.nodes:
        if (h := debug_info(n)) is not None:
            members.setdefault(h, []).append(n)
    to_float = match_handles(f_gm, q_gm) if f_gm is not None else {h: h for h in members}
    merged_into, pattern = _group_by_pattern(q_gm, members)
    layers = _Layers(members, to_float, merged_into, pattern)
    layers.quantization = {h: layer_quantization(q_gm, ms, merged_into) for h, ms in members.items()}
    layers.value_of = {h: result_value(ms) for h, ms in members.items()}
    layers.folded_into = {
        v: h.name
        for h, ms in members.items()
        for n in op_nodes(ms)
        if (v := value_handle(n)) not in (None, debug_info(n))
    }
    return layers


def _errors(
    layers: _Layers, f_gm: Optional[GraphModule], q_gm: GraphModule, batches: list[tuple], sensitivity: bool
) -> LayerErrors:
    if f_gm is None or not batches:
        return LayerErrors()
    to_float = layers.to_float
    with torch.no_grad():
        owned = [
            v for h, q in layers.quantization.items() if owns_quantization(q) and (v := layers.value_of[h]) is not None
        ]
        groups = {to_float[h]: to_float[g] for h, g in layers.merged_into.items() if h in to_float and g in to_float}
        return measure_layer_errors(f_gm, q_gm, batches, owned, sensitivity, groups)


def _sqnr(table: dict, measured: Optional[NodeSourceDebugInfo]) -> Optional[float]:
    return table[measured].sqnr if measured in table else None


def _row(
    layers: _Layers,
    errors: LayerErrors,
    f_handle: NodeSourceDebugInfo,
    q_handle: Optional[NodeSourceDebugInfo],
    f_node: Optional[Node],
) -> ReportRow:
    ms = layers.members.get(q_handle, []) if q_handle is not None else []
    ops = op_nodes(ms)
    patterned = q_handle in layers.pattern
    anchor = next((n for n in ops if debug_info(n) == q_handle), None) if patterned else None
    shown = f_node or anchor or (ops or ms)[-1]
    quant = layers.quantization.get(q_handle, ()) if q_handle is not None else ()
    value = layers.value_of.get(q_handle) if q_handle is not None else None
    measured = layers.to_float.get(value) if ms and value is not None else None
    cum = errors.cumulative.get(measured) if measured is not None else None
    return ReportRow(
        name=f_handle.name,
        module_path=_module_path(shown),
        op="+".join(map(_op_name, ops)) if patterned else _op_name(shown),
        quantization=quant,
        float_reason=None if owns_quantization(quant) else _float_reason(ms, f_node, layers.folded_into.get(q_handle)),
        local_sqnr=_sqnr(errors.local, measured),
        cumulative_sqnr=_sqnr(errors.cumulative, measured),
        sensitivity_sqnr=_sqnr(errors.sensitivity, measured),
        cumulative_mse=cum.mse if cum else None,
        max_abs_error=cum.max_abs if cum else None,
        pattern=layers.pattern.get(q_handle) if q_handle is not None else None,
    )


def report(
    quantized_model: Union[GraphModule, ExportedProgram],
    float_model: Union[nn.Module, GraphModule, ExportedProgram, None],
    inputs: Any = None,
    *,
    sensitivity: bool = True,
) -> QuantizationReport:
    """Per-node report of a converted model against its float original.

    ``float_model`` is best the exported float graph (``ep.module()`` before prepare, or
    ``ep``); an eager module is exported here with the first batch and matched by node
    names. ``inputs`` is one tuple of example inputs or a list of such tuples (batches);
    without inputs the report lists only what was quantized and how. ``sensitivity``
    runs the float model once per quantized node and batch: turn it off for big models.
    """
    q_gm = graph_module(quantized_model, "pt2q.report: quantized_model")
    _check_converted(q_gm)
    batches = as_batches(inputs)
    f_gm = _float_graph(float_model, batches)
    layers = _layers(q_gm, f_gm)
    errors = _errors(layers, f_gm, q_gm, batches, sensitivity)
    rows = [
        _row(layers, errors, f_handle, q_handle, f_node)
        for f_handle, q_handle, f_node in _row_order(f_gm, q_gm, layers.members, layers.to_float)
        if q_handle not in layers.merged_into  # shown in the row of the pattern that claimed it
    ]
    output_sqnr = errors.output.sqnr if errors.batches else None
    return QuantizationReport(rows, output_sqnr, errors.batches)
