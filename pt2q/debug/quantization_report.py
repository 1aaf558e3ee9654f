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

import copy
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union, cast

import torch
from torch import nn
from torch.export import ExportedProgram
from torch.fx import GraphModule, Node

from pt2q.core.attrs import constant_attr
from pt2q.core.notes import (
    FLOAT_REASON_KEY,
    OBSERVER_KEY,
    NodeSourceDebugInfo,
    claimed_by,
    debug_info,
    module_path,
    note,
    value_handle,
)
from pt2q.core.ops import (
    CHOOSE_QPARAMS_OPS,
    DQ_OPS,
    DQ_PER_CHANNEL,
    Q_OPS,
    Q_PER_CHANNEL,
    is_affine_dequantize,
    is_affine_qdq,
    is_affine_quantize,
    is_observer_node,
    is_op,
)
from pt2q.debug.layer_errors import LayerErrors, match_handles, measure_layer_errors
from pt2q.io.atomic_file import atomic_write

__all__ = ["TensorQuantization", "ReportRow", "QuantizationReport", "report", "as_batches"]

_QUANT_MACHINERY = Q_OPS | DQ_OPS | CHOOSE_QPARAMS_OPS | {operator.getitem}


def _is_machinery(node: Node) -> bool:
    return node.target in _QUANT_MACHINERY or is_affine_qdq(node)


def _is_quantize(node: Node) -> bool:
    return node.target in Q_OPS or is_affine_quantize(node)


def _is_dequantize(node: Node) -> bool:
    return node.target in DQ_OPS or is_affine_dequantize(node)


_DTYPE_NAMES = {torch.int8: "int8", torch.uint8: "uint8", torch.int16: "int16", torch.int32: "int32"}


@dataclass(frozen=True)
class TensorQuantization:
    """How one tensor of a layer is quantized.

    ``role`` is ``"input"``, ``"weight"``, ``"bias"`` or ``"output"``; ``scale`` and
    ``zero_point`` are floats/ints per tensor, tensors per channel, None when dynamic
    (chosen at run time). ``source`` names the layer whose quantized output this input
    reuses, if any.
    """

    role: str
    dtype: torch.dtype
    per_channel_axis: Optional[int]
    dynamic: bool
    scale: Union[float, torch.Tensor, None]
    zero_point: Union[int, torch.Tensor, None]
    observer: Optional[str]
    source: Optional[str] = None
    block_size: Optional[tuple[int, ...]] = None  # affine quantization: the elements sharing one scale
    quant_range: Optional[tuple[int, int]] = None  # affine quantization: (quant_min, quant_max)

    def __str__(self) -> str:
        dtype = _DTYPE_NAMES.get(self.dtype, str(self.dtype))
        if self.quant_range is not None:
            bits = math.ceil(math.log2(self.quant_range[1] - self.quant_range[0] + 1))
            dtype = f"int{bits}" if bits < 8 else dtype
        if self.block_size is not None:
            qp = ("dynamic " if self.dynamic else "") + f"blocks {self.block_size}"
            if isinstance(self.scale, torch.Tensor):
                qp += f" s∈[{float(self.scale.min()):.3g},{float(self.scale.max()):.3g}]"
        elif self.dynamic:
            qp = "dynamic"
        elif self.per_channel_axis is not None:
            s = torch.as_tensor(self.scale)
            qp = f"per-channel(axis {self.per_channel_axis}) s∈[{float(s.min()):.3g},{float(s.max()):.3g}]"
        else:
            qp = f"s={self.scale:.3g} zp={self.zero_point}"
        extra = [x for x in (self.observer, f"from {self.source}" if self.source else None) if x]
        return f"{self.role[0] if self.role != 'bias' else 'b'}:{dtype} {qp}" + (
            f" ({', '.join(extra)})" if extra else ""
        )


@dataclass(frozen=True)
class ReportRow:
    """One node of the float graph: how it was quantized, or why not, and its errors."""

    name: str
    module_path: str
    op: str
    quantization: tuple[TensorQuantization, ...]
    float_reason: Optional[str]
    local_sqnr: Optional[float] = None
    cumulative_sqnr: Optional[float] = None
    sensitivity_sqnr: Optional[float] = None
    cumulative_mse: Optional[float] = None
    max_abs_error: Optional[float] = None
    runs_on: Optional[str] = None  # set by lowerings: where the node runs (e.g. "XNNPACK")
    pattern: Optional[str] = None  # the quantizer rule that claimed it (its nodes are this one row)

    @property
    def quantized(self) -> bool:
        """Whether the layer quantizes a tensor itself (not only reads a quantized input)."""
        return _owns_quantization(self.quantization)

    @property
    def how(self) -> str:
        """The quantization in one line, or ``float: <reason>``."""
        return "; ".join(map(str, self.quantization)) if self.quantized else f"float: {self.float_reason}"


def _owns_quantization(quantization: Sequence[TensorQuantization]) -> bool:
    return any(t.source is None for t in quantization)


def _fmt(x: Optional[float]) -> str:
    return "-" if x is None else ("inf" if math.isinf(x) and x > 0 else f"{x:.1f}")


class QuantizationReport:
    """The per-node table of :func:`report`; ``str()`` renders it, ``plot()`` charts it."""

    def __init__(
        self, rows: Sequence[ReportRow], output_sqnr: Optional[float], batches: int, notes: Sequence[str] = ()
    ) -> None:
        self.rows = list(rows)
        self.output_sqnr = output_sqnr
        self.batches = batches
        self.notes = list(notes)

    def row(self, name: str) -> ReportRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row named {name!r}; rows: {', '.join(r.name for r in self.rows)}")

    @property
    def quantized_rows(self) -> list[ReportRow]:
        return [r for r in self.rows if r.quantized]

    @property
    def float_rows(self) -> list[ReportRow]:
        return [r for r in self.rows if not r.quantized]

    def worst(self, n: int = 5, by: str = "sensitivity_sqnr") -> list[ReportRow]:
        """The ``n`` rows with the lowest SQNR in column ``by`` (rows without one are skipped)."""
        scored = [r for r in self.rows if getattr(r, by) is not None]
        return sorted(scored, key=lambda r: getattr(r, by))[:n]

    def __str__(self) -> str:
        placed = any(r.runs_on for r in self.rows)
        head = ("node", "module", "op", "pattern", *(("runs on",) if placed else ()), "local", "cumul.", "sens.")
        head = (*head, "quantization")
        body = [
            (
                r.name,
                r.module_path or "-",
                r.op,
                r.pattern or "-",
                *((r.runs_on or "-",) if placed else ()),
                _fmt(r.local_sqnr),
                _fmt(r.cumulative_sqnr),
                _fmt(r.sensitivity_sqnr),
                r.how,
            )
            for r in self.rows
        ]
        widths = [max(len(str(line[i])) for line in [head, *body]) for i in range(len(head) - 1)]
        lines = [
            "  ".join(str(c).ljust(w) for c, w in zip(line[:-1], widths)) + "  " + line[-1] for line in [head, *body]
        ]
        lines.insert(1, "-" * min(max(len(x) for x in lines), 120))
        n_q = len(self.quantized_rows)
        summary = f"{n_q} of {len(self.rows)} nodes quantized"
        if self.output_sqnr is not None:
            summary += f"; output SQNR {_fmt(self.output_sqnr)} dB over {self.batches} batch(es) (SQNR columns in dB)"
        return "\n".join([summary, *self.notes, *lines])

    def __repr__(self) -> str:
        return f"QuantizationReport({len(self.rows)} rows, output_sqnr={_fmt(self.output_sqnr)})"

    def plot(self, path: Union[str, Path, None] = None, ceiling: float = 80.0) -> Any:
        """Bar chart of local, cumulative and sensitivity SQNR per quantized node; saved as
        PNG at ``path`` if given. Returns the matplotlib ``Figure`` (its bars hold the data).

        Infinite SQNRs (bit-exact) are drawn at ``ceiling`` dB.
        """
        try:
            from matplotlib.figure import Figure
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("QuantizationReport.plot needs matplotlib: pip install matplotlib") from e
        rows = [r for r in self.quantized_rows if r.cumulative_sqnr is not None]
        if not rows:
            raise ValueError("nothing to plot: the report has no per-node SQNR (pass inputs to pt2q.report)")
        fig = Figure(figsize=(max(6.0, 0.45 * len(rows) + 2), 4.5), layout="constrained")
        ax = fig.add_subplot()
        width = 0.27
        series = (("local", "local_sqnr"), ("cumulative", "cumulative_sqnr"), ("sensitivity", "sensitivity_sqnr"))
        for i, (label, attr) in enumerate(series):
            heights = [min(getattr(r, attr), ceiling) if getattr(r, attr) is not None else 0.0 for r in rows]
            ax.bar([x + (i - 1) * width for x in range(len(rows))], heights, width, label=label)
        labels = [f"{r.name}\n{r.module_path}" if r.module_path else r.name for r in rows]
        ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("SQNR vs float (dB), higher is better")
        title = "per-layer SQNR"
        if self.output_sqnr is not None:
            title += f" (model output {_fmt(self.output_sqnr)} dB)"
        ax.set_title(title)
        fig.legend(loc="outside upper right", ncols=3, fontsize=8)
        if path is not None:  # written atomically: a failed save leaves an earlier chart intact
            with atomic_write(path) as f:
                fig.savefig(f, dpi=120, format=Path(path).suffix.lstrip(".") or None)
        return fig


# --- building the rows -------------------------------------------------------------------------


def _graph_module(model: Any, what: str) -> GraphModule:
    if isinstance(model, ExportedProgram):
        return model.module()
    if isinstance(model, GraphModule):
        return model
    raise TypeError(f"pt2q.report: {what} must be a GraphModule or ExportedProgram, got {type(model).__name__}")


def as_batches(inputs: Any) -> list[tuple]:
    """``inputs`` as a list of input tuples: one tuple (or tensor) is one batch."""
    if inputs is None:
        return []
    if isinstance(inputs, torch.Tensor):
        return [(inputs,)]
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(b, (list, tuple)) for b in inputs):
        return [tuple(b) for b in inputs]
    if isinstance(inputs, (list, tuple)):
        return [tuple(inputs)]
    raise TypeError(
        f"pt2q.report: inputs must be a tuple of tensors or a list of such tuples, got {type(inputs).__name__}"
    )


def _float_graph(float_model: Any, batches: list[tuple]) -> Optional[GraphModule]:
    if float_model is None or isinstance(float_model, (GraphModule, ExportedProgram)):
        return None if float_model is None else _graph_module(float_model, "float_model")
    if not isinstance(float_model, nn.Module):
        raise TypeError(
            "pt2q.report: float_model must be an nn.Module, GraphModule or ExportedProgram, "
            f"got {type(float_model).__name__}"
        )
    if not batches:
        raise ValueError("pt2q.report: an eager float_model needs inputs (it is exported with the first batch)")
    try:
        return torch.export.export(copy.deepcopy(float_model).eval(), batches[0]).module()
    except Exception as e:
        raise ValueError(f"pt2q.report: could not export float_model with the first batch of inputs: {e}") from e


def _op_name(node: Node) -> str:
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        name = target.name().split("::")[-1]
        return name[: -len(".default")] if name.endswith(".default") else name
    return getattr(target, "__name__", str(target))


def _module_path(node: Node) -> str:
    return module_path(node.meta.get("nn_module_stack") or {})


def _qparams(gm: GraphModule, node: Node) -> tuple[Optional[int], Any, Any, torch.dtype]:
    """(per-channel axis, scale, zero point, dtype) of a Q/DQ node."""
    if is_affine_qdq(node):  # (x, block_size, scale, zero_point, dtype, quant_min, quant_max)
        scale = node.args[2]
        if isinstance(scale, Node) and scale.op != "get_attr":
            return None, None, None, cast(torch.dtype, node.args[4])
        return None, constant_attr(gm, scale), constant_attr(gm, node.args[3]), cast(torch.dtype, node.args[4])
    dtype = cast(torch.dtype, node.args[-1])
    if is_op(node, Q_PER_CHANNEL | DQ_PER_CHANNEL):
        axis = cast(int, node.args[3])
        return axis, constant_attr(gm, node.args[1]), constant_attr(gm, node.args[2]), dtype
    scale, zp = node.args[1], node.args[2]
    if isinstance(scale, Node):  # dynamic: chosen at run time
        return None, None, None, dtype
    return None, float(cast(float, scale)), int(cast(int, zp)), dtype


def _tensor_quantization(gm: GraphModule, qdq: Node, role: str, source: Optional[str] = None) -> TensorQuantization:
    axis, scale, zp, dtype = _qparams(gm, qdq)
    dynamic = scale is None and axis is None
    observer = note(qdq, OBSERVER_KEY)
    if is_affine_qdq(qdq):
        block = tuple(cast(Sequence[int], qdq.args[1]))
        qrange = (cast(int, qdq.args[5]), cast(int, qdq.args[6]))
        return TensorQuantization(role, dtype, None, dynamic, scale, zp, observer, source, block, qrange)
    return TensorQuantization(role, dtype, axis, dynamic, scale, zp, observer, source)


def _weight_role(dq: Node) -> str:
    for user in dq.users:
        if len(user.args) > 2 and user.args[2] is dq:
            return "bias"
    return "weight"


def _value_name(node: Node, row_of: dict[NodeSourceDebugInfo, NodeSourceDebugInfo]) -> str:
    """The float value a Q/DQ chain carries: the row of the nearest node up the chain that holds one
    (its layer's), or the graph input's / constant's name."""
    while (handle := value_handle(node)) is None:
        if node.op != "call_function" or not node.args or not isinstance(node.args[0], Node):
            return node.name
        node = node.args[0]
    return row_of.get(handle, handle).name


def _describe(
    gm: GraphModule, members: list[Node], row_of: dict[NodeSourceDebugInfo, NodeSourceDebugInfo]
) -> tuple[TensorQuantization, ...]:
    """The tensors quantized inside one layer's subgraph, in graph order (``row_of``: the row a merged
    layer is shown in)."""
    member_set = set(members)
    found: list[TensorQuantization] = []
    for n in members:
        if n.op != "call_function":
            continue
        if _is_quantize(n):
            src = n.args[0]
            produced_here = isinstance(src, Node) and src in member_set and not _is_machinery(src)
            found.append(_tensor_quantization(gm, n, "output" if produced_here else "input"))
        elif _is_dequantize(n) and isinstance(n.args[0], Node) and n.args[0].op == "get_attr":
            found.append(_tensor_quantization(gm, n, _weight_role(n)))
        elif not _is_machinery(n):
            for arg in n.all_input_nodes:  # an input quantized outside this layer (by its producer)
                if _is_dequantize(arg) and arg not in member_set:
                    found.append(_tensor_quantization(gm, arg, "input", _value_name(arg, row_of)))
    return tuple(found)


def _op_nodes(members: list[Node]) -> list[Node]:
    """A layer's operators, without the quantize/dequantize/qparams nodes around them."""
    return [m for m in members if m.op == "call_function" and not _is_machinery(m)]


def _value_of(members: list[Node]) -> Optional[NodeSourceDebugInfo]:
    """The float value a layer's result holds: its last operator's."""
    ops = _op_nodes(members)
    return value_handle(ops[-1]) if ops else None


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
    layers.sort(key=lambda item: position[(_op_nodes(item[1]) or item[1])[0]])
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
    q_gm = _graph_module(quantized_model, "quantized_model")
    observers = [n.target for n in q_gm.graph.nodes if is_observer_node(n, q_gm)]
    if observers:
        raise ValueError(
            f"pt2q.report: quantized_model still holds observers ({', '.join(observers[:3])}"
            f"{', ...' if len(observers) > 3 else ''}): calibrate it and call convert_pt2e first"
        )
    batches = as_batches(inputs)
    f_gm = _float_graph(float_model, batches)
    members: dict[NodeSourceDebugInfo, list[Node]] = {}  # each layer's nodes in the quantized graph
    for n in q_gm.graph.nodes:
        if (h := debug_info(n)) is not None:
            members.setdefault(h, []).append(n)
    to_float = match_handles(f_gm, q_gm) if f_gm is not None else {h: h for h in members}
    merged_into, pattern = _group_by_pattern(q_gm, members)
    quantization = {h: _describe(q_gm, ms, merged_into) for h, ms in members.items()}

    # the float value each layer's result stands for (a conv with its BatchNorm folded: the BatchNorm's)
    value_of = {h: _value_of(ms) for h, ms in members.items()}
    errors = LayerErrors()
    if f_gm is not None and batches:
        with torch.no_grad():
            owned = [v for h, q in quantization.items() if _owns_quantization(q) and (v := value_of[h]) is not None]
            groups = {to_float[h]: to_float[g] for h, g in merged_into.items() if h in to_float and g in to_float}
            errors = measure_layer_errors(f_gm, q_gm, batches, owned, sensitivity, groups)
    # a node that computes another's float value (a conv with its BatchNorm folded in) stands for it
    folded_into = {
        v: h.name
        for h, ms in members.items()
        for n in _op_nodes(ms)
        if (v := value_handle(n)) not in (None, debug_info(n))
    }

    rows = []
    for f_handle, q_handle, f_node in _row_order(f_gm, q_gm, members, to_float):
        if q_handle in merged_into:
            continue  # shown in the row of the pattern that claimed it
        ms = members.get(q_handle, []) if q_handle is not None else []
        op_nodes = _op_nodes(ms)
        anchor = next((n for n in op_nodes if debug_info(n) == q_handle), None) if q_handle in pattern else None
        shown = f_node or anchor or (op_nodes or ms)[-1]
        quant = quantization.get(q_handle, ()) if q_handle is not None else ()

        value = value_of.get(q_handle) if q_handle is not None else None
        measured = to_float.get(value) if ms and value is not None else None

        def db(table: dict, measured: Optional[NodeSourceDebugInfo] = measured) -> Optional[float]:
            return table[measured].sqnr if measured in table else None

        cum = errors.cumulative.get(measured) if measured is not None else None
        rows.append(
            ReportRow(
                name=f_handle.name,
                module_path=_module_path(shown),
                op="+".join(map(_op_name, op_nodes)) if q_handle in pattern else _op_name(shown),
                quantization=quant,
                float_reason=None
                if _owns_quantization(quant)
                else _float_reason(ms, f_node, folded_into.get(q_handle)),
                local_sqnr=db(errors.local),
                cumulative_sqnr=db(errors.cumulative),
                sensitivity_sqnr=db(errors.sensitivity),
                cumulative_mse=cum.mse if cum else None,
                max_abs_error=cum.max_abs if cum else None,
                pattern=pattern.get(q_handle),
            )
        )
    output_sqnr = errors.output.sqnr if errors.batches else None
    return QuantizationReport(rows, output_sqnr, errors.batches)
