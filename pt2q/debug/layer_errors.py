"""Per-layer quantization error three ways: cumulative, local (shadow) and sensitivity.

For every debug handle (see :mod:`pt2q.debug.numeric_debugger`) shared by a float graph and
its quantized version, over a set of input batches:

* **cumulative**: the quantized model's value against the float model's, errors of all
  earlier layers included (what torchao's propagation comparison reports);
* **local** ("shadow"): the layer's quantized subgraph (input/weight/output Q/DQ and the
  op) fed the float model's values at its inputs, against the float value: the error the
  layer itself makes;
* **sensitivity**: the final output when only that layer is quantized (its local value
  substituted into an otherwise float run), against the float output: how much the
  layer's own error costs at the end, the one-at-a-time analysis of NNCF and AIMET.

All three are SQNRs with the float value as signal, accumulated over batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch.fx import GraphModule, Interpreter, Node
from torch.fx.node import map_arg
from torch.utils import _pytree as pytree

from pt2q.core.notes import NodeSourceDebugInfo, debug_info, value_handle
from pt2q.debug.numeric_debugger import value_anchors
from pt2q.numerics.metrics import sqnr_of_energies

__all__ = ["ErrorStats", "LayerErrors", "measure_layer_errors", "match_handles"]

Feed = Callable[[Node, Node, Any], Any]


@dataclass
class ErrorStats:
    """Running sums of ‖float‖², ‖float − quantized‖² and max |float − quantized|."""

    signal: float = 0.0
    noise: float = 0.0
    count: int = 0
    max_abs: float = 0.0

    def add(self, ref: torch.Tensor, actual: torch.Tensor) -> None:
        ref, diff = ref.detach().double(), (ref.detach().double() - actual.detach().double())
        self.signal += float(ref.square().sum())
        self.noise += float(diff.square().sum())
        self.count += ref.numel()
        self.max_abs = max(self.max_abs, float(diff.abs().max())) if diff.numel() else self.max_abs

    def add_outputs(self, reference: Any, actual: Any) -> None:
        """Add the float tensors of two model outputs of the same structure, pairwise."""
        for ref, act in zip(_float_leaves(reference), _float_leaves(actual)):
            self.add(ref, act)

    @property
    def sqnr(self) -> float:
        """Pooled SQNR in dB (float values as the signal)."""
        return sqnr_of_energies(self.signal, self.noise)

    @property
    def mse(self) -> float:
        return self.noise / self.count if self.count else 0.0


@dataclass
class LayerErrors:
    """Error statistics per handle (keys are the float graph's handles)."""

    cumulative: dict[NodeSourceDebugInfo, ErrorStats] = field(default_factory=dict)
    local: dict[NodeSourceDebugInfo, ErrorStats] = field(default_factory=dict)
    sensitivity: dict[NodeSourceDebugInfo, ErrorStats] = field(default_factory=dict)
    output: ErrorStats = field(default_factory=ErrorStats)
    batches: int = 0


class _Run(Interpreter):
    """Runs a graph, recording the values of chosen nodes; ``feed(user, arg, value)`` may
    replace the value an argument node hands to its user."""

    def __init__(self, gm: GraphModule, record: Optional[Iterable[Node]] = None, feed: Optional[Feed] = None) -> None:
        super().__init__(gm, garbage_collect_values=record is not None)
        self.record = None if record is None else set(record)
        self.feed = feed
        self.values: dict[Node, Any] = {}

    def run_node(self, n: Node) -> Any:
        value = super().run_node(n)
        if self.record is None or n in self.record:
            self.values[n] = value
        return value

    def fetch_args_kwargs_from_env(self, n: Node) -> tuple[Any, Any]:
        if self.feed is None:
            return super().fetch_args_kwargs_from_env(n)
        look_up = lambda a: self.feed(n, a, self.env[a])  # noqa: E731
        return map_arg(n.args, look_up), map_arg(n.kwargs, look_up)


def _float_leaves(out: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _compatible(ref: Any, actual: Any) -> bool:
    return (
        isinstance(ref, torch.Tensor)
        and isinstance(actual, torch.Tensor)
        and ref.shape == actual.shape
        and ref.dtype == actual.dtype
    )


def match_handles(float_gm: GraphModule, quantized: GraphModule) -> dict[NodeSourceDebugInfo, NodeSourceDebugInfo]:
    """Map the quantized graph's handles to the float graph's.

    A handle matches itself when the quantized model came from this float graph (or its
    ``ExportedProgram``). Otherwise (the float model was exported separately, so graph ids
    differ) it matches the float handle of the same node name, which torch.export derives
    deterministically from the model's code, when that name is unique. The choice is made
    per handle: graph ids are addresses of graph objects and can be reused, so two
    separate exports may share some of them by chance.
    """
    float_handles = set(value_anchors(float_gm))
    by_name: dict[str, list[NodeSourceDebugInfo]] = {}
    for h in float_handles:
        by_name.setdefault(h.name, []).append(h)
    q_handles = {h for n in quantized.graph.nodes for h in (debug_info(n), value_handle(n)) if h is not None}
    matched = {}
    for h in q_handles:
        if h in float_handles:
            matched[h] = h
        elif len(by_name.get(h.name, ())) == 1:
            matched[h] = by_name[h.name][0]
    return matched


def _descendants(node: Node) -> set[Node]:
    seen: set[Node] = set()
    stack = [node]
    while stack:
        for user in stack.pop().users:
            if user not in seen:
                seen.add(user)
                stack.append(user)
    return seen


@dataclass
class _Handles:
    """Where each float value is computed: the float graph's anchors, the quantized graph's (keyed by
    float handles), and per quantized node its layer (grouped) and the float value it holds."""

    f_anchor: dict[NodeSourceDebugInfo, Node]
    q_anchor: dict[NodeSourceDebugInfo, Node]
    layer_of: dict[Node, NodeSourceDebugInfo]
    value_of: dict[Node, Optional[NodeSourceDebugInfo]]
    groups: dict[NodeSourceDebugInfo, NodeSourceDebugInfo]
    to_float: dict[NodeSourceDebugInfo, NodeSourceDebugInfo]  # quantized graph's handles -> float graph's

    def group(self, h: NodeSourceDebugInfo) -> NodeSourceDebugInfo:
        return self.groups.get(h, h)


def _handles(
    float_gm: GraphModule, quantized: GraphModule, groups: dict[NodeSourceDebugInfo, NodeSourceDebugInfo]
) -> _Handles:
    to_float = match_handles(float_gm, quantized)
    q_anchor = {to_float[h]: n for h, n in value_anchors(quantized).items() if h in to_float}
    layer = {n: to_float.get(h) for n in quantized.graph.nodes if (h := debug_info(n)) is not None}
    layer_of = {n: groups.get(h, h) for n, h in layer.items() if h is not None}
    value_of = {n: to_float.get(h) for n in quantized.graph.nodes if (h := value_handle(n)) is not None}
    return _Handles(value_anchors(float_gm), q_anchor, layer_of, value_of, groups, to_float)


@dataclass
class _FloatInputs:
    """A ``feed`` for :class:`_Run`: a value crossing from one layer into another comes from the float model."""

    handles: _Handles
    by_handle: dict[NodeSourceDebugInfo, Any]

    def __call__(self, user: Node, arg: Node, value: Any) -> Any:
        h = self.handles.value_of.get(arg)
        if h is None or self.handles.group(h) == self.handles.layer_of.get(user) or h not in self.by_handle:
            return value
        ref = self.by_handle[h]
        return ref if _compatible(ref, value) else value


def _add_value_errors(
    errors: LayerErrors, handles: _Handles, by_handle: dict[NodeSourceDebugInfo, Any], cumulative: _Run, shadow: _Run
) -> None:
    for h, node in handles.q_anchor.items():
        ref = by_handle.get(h)
        for stats, run in ((errors.cumulative, cumulative), (errors.local, shadow)):
            value = run.values.get(node)
            if (
                isinstance(ref, torch.Tensor)
                and isinstance(value, torch.Tensor)
                and _compatible(ref, value)
                and ref.is_floating_point()
            ):
                stats.setdefault(h, ErrorStats()).add(ref, value)


def _add_sensitivity(
    errors: LayerErrors,
    float_gm: GraphModule,
    handles: _Handles,
    sensitive: list[NodeSourceDebugInfo],
    float_run: _Run,
    by_handle: dict[NodeSourceDebugInfo, Any],
    float_out: Any,
    shadow: _Run,
    batch: Sequence[Any],
) -> None:
    """The float model's output with each sensitive layer's local value substituted in, against the float output."""
    for h in sensitive:
        q_node, f_node = handles.q_anchor.get(h), handles.f_anchor.get(h)
        local = shadow.values.get(q_node) if q_node is not None else None
        if f_node is None or not _compatible(by_handle.get(h), local):
            continue
        downstream = _descendants(f_node)
        env = {n: v for n, v in float_run.values.items() if n not in downstream}
        env[f_node] = local
        out = _Run(float_gm, record=[]).run(*batch, initial_env=env, enable_io_processing=True)
        errors.sensitivity.setdefault(h, ErrorStats()).add_outputs(float_out, out)


def _measure_batch(
    errors: LayerErrors,
    float_gm: GraphModule,
    quantized: GraphModule,
    handles: _Handles,
    sensitive: list[NodeSourceDebugInfo],
    batch: Sequence[Any],
) -> None:
    float_run = _Run(float_gm, record=None if sensitive else handles.f_anchor.values())  # sensitivity restarts anywhere
    float_out = float_run.run(*batch, enable_io_processing=True)
    by_handle = {h: float_run.values[n] for h, n in handles.f_anchor.items() if n in float_run.values}
    cumulative = _Run(quantized, record=handles.q_anchor.values())
    errors.output.add_outputs(float_out, cumulative.run(*batch, enable_io_processing=True))
    shadow = _Run(quantized, record=handles.q_anchor.values(), feed=_FloatInputs(handles, by_handle))
    shadow.run(*batch, enable_io_processing=True)
    _add_value_errors(errors, handles, by_handle, cumulative, shadow)
    _add_sensitivity(errors, float_gm, handles, sensitive, float_run, by_handle, float_out, shadow, batch)
    errors.batches += 1


def measure_layer_errors(
    float_gm: GraphModule,
    quantized: GraphModule,
    batches: Sequence[Sequence[Any]],
    quantized_handles: Iterable[NodeSourceDebugInfo],
    sensitivity: bool = True,
    groups: Optional[dict[NodeSourceDebugInfo, NodeSourceDebugInfo]] = None,
) -> LayerErrors:
    """Cumulative and local SQNR of every float value the quantized graph computes too (keyed
    by the float graph's handles), and the output SQNR with only one layer quantized for
    each of ``quantized_handles`` (the quantized graph's value handles of those layers).

    ``groups`` maps a layer's handle to the handle of the layer it is quantized with (a relu
    fused after its linear): values crossing between them are not replaced by float ones, so
    the group's local error is the whole pattern's."""
    handles = _handles(float_gm, quantized, groups or {})
    to_float = handles.to_float
    sensitive = [to_float[h] for h in quantized_handles if h in to_float] if sensitivity else []
    errors = LayerErrors()
    for batch in batches:
        _measure_batch(errors, float_gm, quantized, handles, sensitive, batch)
    return errors
