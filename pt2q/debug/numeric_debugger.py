"""Numeric debugger: match float and quantized activations node by node.

Every node of a float exported graph has a stable identity, its *debug handle*: the
oldest ``from_node`` ancestor torch.export recorded for it (a ``NodeSourceDebugInfo``
of that node's name and graph id). pt2q's passes copy that provenance onto every node
they insert (observers, Q/DQ, rewrites), ``torch.export.save/load`` serializes it, so
a handle found in the float graph finds the same layer in the prepared, converted,
re-exported or reloaded program.

The API is ``torchao.quantization.pt2e``'s:

>>> import torch
>>> from pt2q import convert_pt2e, prepare_pt2e
>>> from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config
>>> x = (torch.randn(2, 16),)
>>> ep = torch.export.export(torch.nn.Sequential(torch.nn.Linear(16, 4)).eval(), x)
>>> float_gm = ep.module()
>>> quantized = prepare_pt2e(ep.module(), XNNPACKQuantizer().set_global(get_symmetric_quantization_config()))
>>> _ = quantized(*x)
>>> quantized = convert_pt2e(quantized)
>>> ref = prepare_for_propagation_comparison(float_gm);  _ = ref(*x)
>>> act = prepare_for_propagation_comparison(quantized); _ = act(*x)
>>> summary = compare_results(extract_results_from_loggers(ref), extract_results_from_loggers(act))
>>> [(info.name, 20 < s.sqnr < 100) for info, s in summary.items()]   # SQNR in dB
[('linear', True)]

Each handle is logged at the last node that carries it (for a quantized layer, the
dequantized output), which is the value torchao's comparison ends up with too. Beyond
these propagated ("cumulative") errors, :func:`pt2q.report` measures each layer's own
(local) error and its effect on the final output (sensitivity).
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch.export import ExportedProgram
from torch.fx import GraphModule, Node

from pt2q.core.export_utils import NotExportedError
from pt2q.core.notes import NodeSourceDebugInfo, chain_source, debug_info, module_path, value_handle
from pt2q.numerics.metrics import actual_signal_sqnr, sqnr_of_energies

__all__ = [
    "NUMERIC_DEBUG_HANDLE_KEY",
    "CUSTOM_KEY",
    "NodeSourceDebugInfo",
    "OutputLogger",
    "QuantizationComparisonResult",
    "NodeAccuracySummary",
    "generate_numeric_debug_handle",
    "value_anchors",
    "anchor_nodes",
    "prepare_for_propagation_comparison",
    "extract_results_from_loggers",
    "compare_results",
]

NUMERIC_DEBUG_HANDLE_KEY = "numeric_debug_handle"
CUSTOM_KEY = "custom"

Results = dict["NodeSourceDebugInfo", tuple[Optional[str], object, list[object]]]


def anchor_nodes(gm: GraphModule) -> dict[NodeSourceDebugInfo, Node]:
    """For each handle, the last node in graph order that carries it and holds its output:
    where the layer's value leaves it (its dequantized output, once quantized). An input's
    Q/DQ carries its consumer's provenance but the producer's value, so it is no anchor."""
    anchors: dict[NodeSourceDebugInfo, Node] = {}
    for node in gm.graph.nodes:
        handle, source = debug_info(node), chain_source(node)
        if handle is not None and source.op != "get_attr" and debug_info(source) == handle:
            anchors[handle] = node
    return _in_graph_order(anchors)


def _in_graph_order(anchors: dict[NodeSourceDebugInfo, Node]) -> dict[NodeSourceDebugInfo, Node]:
    position = {n: i for i, n in enumerate(next(iter(anchors.values())).graph.nodes)} if anchors else {}
    return dict(sorted(anchors.items(), key=lambda item: position[item[1]]))


def value_anchors(gm: GraphModule) -> dict[NodeSourceDebugInfo, Node]:
    """For each float value, the last node in graph order that holds it (see :func:`value_handle`)."""
    anchors: dict[NodeSourceDebugInfo, Node] = {}
    for node in gm.graph.nodes:
        if node.op not in ("get_attr", "placeholder", "output") and (handle := value_handle(node)) is not None:
            anchors[handle] = node
    return _in_graph_order(anchors)


def generate_numeric_debug_handle(ep: ExportedProgram) -> None:
    """Number every node of ``ep``'s graph in ``node.meta["custom"]["numeric_debug_handle"]``
    (in place; numbers already present are kept, new ones never collide).

    Kept for scripts written for the earlier integer-handle flow; the comparison functions
    of this module identify nodes by their ``from_node`` provenance and need no call to it.
    """
    if not isinstance(ep, ExportedProgram):
        raise NotExportedError(f"generate_numeric_debug_handle expects an ExportedProgram, got {type(ep).__name__}")
    nodes = [n for n in ep.graph.nodes if n.op != "placeholder"]
    taken = [n.meta.get(CUSTOM_KEY, {}).get(NUMERIC_DEBUG_HANDLE_KEY) for n in nodes]
    next_id = max((t for t in taken if t is not None), default=0) + 1
    for node, handle in zip(nodes, taken):
        if handle is None:
            node.meta[CUSTOM_KEY] = {**node.meta.get(CUSTOM_KEY, {}), NUMERIC_DEBUG_HANDLE_KEY: next_id}
            next_id += 1


def _detach(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (list, tuple)):
        return type(value)(_detach(v) for v in value)
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    return value


class OutputLogger(torch.nn.Module):
    """Records (detached) every value that flows through it; inserted after a logged node."""

    _is_impure = True  # keep dead-code elimination away

    def __init__(
        self, debug_info: NodeSourceDebugInfo, node_name: Optional[str] = None, nn_module_stack: Optional[object] = None
    ) -> None:
        super().__init__()
        self.debug_info = debug_info
        self.node_name = node_name
        self.nn_module_stack = nn_module_stack
        self.stats: list[object] = []

    def forward(self, x: object) -> object:
        self.stats.append(_detach(x))
        return x

    def extra_repr(self) -> str:
        return f"debug_info={self.debug_info}, node_name={self.node_name}, num_stats={len(self.stats)}"


def prepare_for_propagation_comparison(model: GraphModule) -> GraphModule:
    """A copy of ``model`` with an ``OutputLogger`` after the anchor node of every handle.

    Run it on the inputs to compare, then read the logs with ``extract_results_from_loggers``.
    ``model`` itself is not changed.
    """
    if isinstance(model, ExportedProgram):
        model = model.module()
    if not isinstance(model, GraphModule):
        raise NotExportedError(
            f"prepare_for_propagation_comparison expects an exported GraphModule, got {type(model).__name__}"
        )
    model = copy.deepcopy(model)
    for index, (handle, node) in enumerate(anchor_nodes(model).items()):
        name = f"{node.name}_logger_{index}"
        model.add_submodule(name, OutputLogger(handle, node.name, node.meta.get("nn_module_stack")))
        with model.graph.inserting_after(node):
            logger = model.graph.call_module(name, (node,))
        node.replace_all_uses_with(logger, delete_user_cb=partial(operator.is_not, logger))
    model.recompile()
    return model


def extract_results_from_loggers(model: GraphModule) -> Results:
    """``{handle: (node name, nn_module_stack, [logged values, one per run])}`` of a model made
    by ``prepare_for_propagation_comparison`` and run at least once."""
    return {
        m.debug_info: (m.node_name, m.nn_module_stack, m.stats)
        for m in model.modules()
        if isinstance(m, OutputLogger) and m.stats
    }


def _same_shapes(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_shapes(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_shapes(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _shape(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (list, tuple)):
        return type(value)(_shape(v) for v in value)
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    return value


def _apply(fn: Callable[[torch.Tensor, torch.Tensor], Any], actual: object, ref: object) -> object:
    """``fn`` on each pair of tensors of two values of the same structure (None for non-tensors)."""
    if isinstance(actual, torch.Tensor) and isinstance(ref, torch.Tensor):
        return fn(actual.to(torch.float32), ref.to(torch.float32))
    if isinstance(actual, (list, tuple)) and isinstance(ref, (list, tuple)):
        return type(actual)(_apply(fn, a, r) for a, r in zip(actual, ref))
    if isinstance(actual, dict) and isinstance(ref, dict):
        return {k: _apply(fn, v, ref[k]) for k, v in actual.items()}
    return None


@dataclass(frozen=True)
class QuantizationComparisonResult:
    """One logged value of the transformed model (``actual``) against the reference's."""

    actual: object
    ref: object

    def __post_init__(self) -> None:
        for field, value in (("actual", self.actual), ("ref", self.ref)):
            if not isinstance(value, (torch.Tensor, list, tuple, dict)):
                raise ValueError(f"`{field}` must be a Tensor, list, tuple or dict, got {type(value).__name__}")
        if not _same_shapes(self.actual, self.ref):
            raise ValueError(
                f"cannot compare values of shapes {_shape(self.ref)} (ref) and {_shape(self.actual)} (actual)"
            )

    def loss(self, loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> object:
        """``loss_function(actual, ref)`` on each tensor (same structure as the values)."""
        return _apply(loss_function, self.actual, self.ref)

    @property
    def mse_loss(self) -> object:
        return self.loss(F.mse_loss)

    @property
    def sqnr(self) -> object:
        """20·log10(‖actual‖ / ‖actual − ref‖) in dB, as torchao computes it."""
        return self.loss(actual_signal_sqnr)

    @property
    def max_abs_error(self) -> object:
        return self.loss(lambda a, r: (a - r).abs().max())

    @property
    def shapes(self) -> tuple[object, object]:
        """(actual shape, ref shape)."""
        return _shape(self.actual), _shape(self.ref)

    def __repr__(self) -> str:
        return f"QuantizationComparisonResult(mse_loss={self.mse_loss}, sqnr={self.sqnr})"


@dataclass(frozen=True)
class NodeAccuracySummary:
    """All comparisons of one handle, with the node names and module paths on both sides."""

    debug_info: NodeSourceDebugInfo
    actual_node_name: str
    actual_module_stack: str
    ref_node_name: str
    ref_module_stack: str
    results: Sequence[QuantizationComparisonResult]

    @property
    def sqnr(self) -> float:
        """SQNR over all logged runs (tensor outputs only), as in ``QuantizationComparisonResult``."""
        signal = noise = 0.0
        for r in self.results:
            if isinstance(r.actual, torch.Tensor) and isinstance(r.ref, torch.Tensor):
                a, ref = r.actual.double(), r.ref.double()
                signal += float(a.square().sum())
                noise += float((a - ref).square().sum())
        return sqnr_of_energies(signal, noise)


def compare_results(ref_results: Results, actual_results: Results) -> dict[NodeSourceDebugInfo, NodeAccuracySummary]:
    """Compare, handle by handle, the logs of a reference and a transformed model.

    Handles logged on one side only are skipped. Values of different shapes raise a
    ``ValueError`` naming both nodes.
    """
    comparisons = {}
    for handle, (ref_name, ref_stack, ref_stats) in ref_results.items():
        if handle not in actual_results:
            continue
        actual_name, actual_stack, actual_stats = actual_results[handle]
        try:
            results = [QuantizationComparisonResult(actual=a, ref=r) for a, r in zip(actual_stats, ref_stats)]
        except ValueError as e:
            raise ValueError(f"{handle}: ref node {ref_name!r} and actual node {actual_name!r}: {e}") from e
        comparisons[handle] = NodeAccuracySummary(
            debug_info=handle,
            actual_node_name=actual_name or "",
            actual_module_stack=module_path(actual_stack),
            ref_node_name=ref_name or "",
            ref_module_stack=module_path(ref_stack),
            results=results,
        )
    return comparisons
