"""Patterns as data: one record says which operator chain a quantizer quantizes and where the specs go.

A backend quantizer is mostly a table of :class:`Pattern` rows, applied in order (earlier
rows claim nodes first) by :func:`annotate_pattern`, plus the few annotators that need
code (``cat``, pooling, qparam propagation):

>>> import torch
>>> from pt2q.core.ops import ADD, LINEAR, RELU
>>> from pt2q.quantizers import get_symmetric_quantization_config
>>> rows = [
...     Pattern("linear_relu", (LINEAR, RELU), weighted=0),  # linear inputs; output spec on the relu
...     Pattern("add", (ADD,), operands=0),  # both operands and the output
...     Pattern("linear_add", (LINEAR, ADD), weighted=0, root=1, link_args=(0, 1)),  # found from the add
... ]
>>> class Net(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.fc = torch.nn.Linear(4, 4)
...     def forward(self, x):
...         return torch.relu(self.fc(x)) + x
>>> gm = torch.export.export(Net(), (torch.randn(1, 4),)).module()
>>> config = get_symmetric_quantization_config()
>>> [[n.name for n in part] for row in rows for part in annotate_pattern(gm, row, config)]
[['linear', 'relu', 'fc_weight', 'fc_bias'], ['add']]

A row names the chain (matched by :func:`pt2q.core.pattern.match_at`), the chain positions
whose inputs get the config's specs (``weighted``: a conv/linear's input, weight and bias;
``operands``: every tensor operand; ``extra_operand``: a binary op's operand from outside
the chain), the position whose output gets the output spec, the *anchor* that filters
and module scopes ask about, when it runs (``qat_only``, ``dynamic``) and a ``guard``
for conditions beyond operator types. Every node a row claims is noted with the row's
name and anchor (``pt2q.core.notes.PATTERN_KEY``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch._ops import OpOverloadPacket
from torch.fx import GraphModule, Node

from pt2q.core.ops import CONV_TRANSPOSE, is_op
from pt2q.core.pattern import NodeIndex, Step, find_chains
from pt2q.core.spec import QuantizationConfig, QuantizationSpec, QuantizationSpecBase
from pt2q.quantizers.annotation import (
    FilterFn,
    InputSpecs,
    accepts,
    annotate_node,
    claim,
    get_bias_qspec,
    get_input_act_qspec,
    get_output_act_qspec,
    get_weight_qspec,
    is_annotated,
    mark_annotated,
)
from pt2q.quantizers.observer_choice import weight_constructor

__all__ = ["Guard", "Pattern", "apply_pattern", "annotate_pattern", "weighted_inputs", "operand_inputs"]

# guard(graph module, matched nodes in chain order, config) -> may the match be annotated?
Guard = Callable[[GraphModule, tuple[Node, ...], Optional[QuantizationConfig]], bool]


@dataclass(frozen=True)
class Pattern:
    """One row of a quantizer's table (see the module docstring). Positions index ``chain``."""

    name: str
    chain: tuple[Step, ...]
    weighted: Optional[int] = None
    operands: Optional[int] = None
    extra_operand: Optional[int] = None
    output: Optional[int] = -1
    anchor: int = 0
    root: int = 0
    link_args: tuple[int, ...] = (0,)
    qat_only: bool = False
    dynamic: bool = False
    # a weight or bias already claimed by an earlier match blocks this one (a shared weight is quantized once)
    params_exclusive: bool = True
    # claim the chain's nodes that get no spec too (False: as ExecuTorch's conv+bn+relu leaves the bn unclaimed)
    claim_chain: bool = True
    # each chain node's only user is the next one (False: the next may share it with other users)
    exclusive: bool = True
    guard: Optional[Guard] = None
    # code for rows whose annotation is not a placement of the config's specs (cat, pooling):
    # annotate(anchor node, config) writes it and returns the partition
    annotate: Optional[Callable[[Node, Optional[QuantizationConfig]], list[Node]]] = None

    @property
    def anchor_ops(self) -> Step:
        return self.chain[self.anchor]

    def covers(self, op: Any) -> bool:
        """Whether ``set_operator_type(op, ...)`` selects this row: ``op`` is one of its anchor operators."""
        if isinstance(op, OpOverloadPacket):
            return any(getattr(o, "overloadpacket", o) is op for o in self.anchor_ops)
        return op in self.anchor_ops

    def restricted(self, anchor_ops: Step, name: Optional[str] = None) -> Pattern:
        """The same row anchored on fewer operators (a backend that runs only some overloads)."""
        chain = tuple(anchor_ops if i == self.anchor else step for i, step in enumerate(self.chain))
        return dataclasses.replace(self, chain=chain, name=name or self.name)


def _weight_qspec(op: Node, config: Optional[QuantizationConfig]) -> Optional[QuantizationSpecBase]:
    """The weight spec; a transposed conv's weight is (in, out/groups, ...): its channel axis is 1.

    A weight computed in the graph (not a stored tensor, e.g. from an activation) is quantized
    per tensor: the backends run computed tensors with one scale, as they run activations.
    """
    spec = get_weight_qspec(config)
    if is_op(op, CONV_TRANSPOSE) and isinstance(spec, QuantizationSpec):
        spec = dataclasses.replace(spec, ch_axis=1)
    weight = op.args[1]
    if isinstance(weight, Node) and weight.op != "get_attr" and isinstance(spec, QuantizationSpec):
        if spec.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine):
            per_tensor = (
                torch.per_tensor_symmetric if spec.qscheme == torch.per_channel_symmetric else torch.per_tensor_affine
            )
            spec = dataclasses.replace(
                spec, qscheme=per_tensor, ch_axis=None, observer_or_fake_quant_ctr=_per_tensor_ctr(config)
            )
    return spec


def _per_tensor_ctr(config: Optional[QuantizationConfig]) -> Any:
    return weight_constructor(bool(config is not None and config.is_qat), is_per_channel=False)


def weighted_inputs(op: Node, config: Optional[QuantizationConfig]) -> tuple[InputSpecs, list[Node]]:
    """Input specs of a conv/linear ``op(input, weight, bias)`` and its weight/bias nodes."""
    act, weight = op.args[0], op.args[1]
    bias = op.args[2] if len(op.args) > 2 else None
    inputs: InputSpecs = {}
    if isinstance(act, Node):
        inputs[act] = get_input_act_qspec(config)
    if isinstance(weight, Node):
        inputs[weight] = _weight_qspec(op, config)
    if isinstance(bias, Node):
        inputs[bias] = get_bias_qspec(config)
    return inputs, [n for n in (weight, bias) if isinstance(n, Node)]


def operand_inputs(op: Node, config: Optional[QuantizationConfig]) -> InputSpecs:
    """The input-activation spec on every tensor operand of ``op`` (Python scalars stay as they are)."""
    return {a: get_input_act_qspec(config) for a in op.args if isinstance(a, Node)}


def _extra_operand(op: Node, match: tuple[Node, ...]) -> Optional[Node]:
    return next((a for a in op.args[:2] if isinstance(a, Node) and a not in match), None)


def apply_pattern(
    gm: GraphModule,
    pattern: Pattern,
    match: tuple[Node, ...],
    config: Optional[QuantizationConfig],
    filter_fn: Optional[FilterFn] = None,
) -> Optional[list[Node]]:
    """Annotate one match of ``pattern`` unless a node is claimed, ``filter_fn`` rejects its anchor or its
    guard fails; return its partition (the matched nodes in chain order, then weights and biases) or None."""
    anchor = match[pattern.anchor]
    inputs: dict[Node, InputSpecs] = {}
    params: list[Node] = []
    if pattern.weighted is not None:
        inputs[match[pattern.weighted]], params = weighted_inputs(match[pattern.weighted], config)
    if pattern.operands is not None:
        inputs[match[pattern.operands]] = operand_inputs(match[pattern.operands], config)
    if pattern.extra_operand is not None:
        op = match[pattern.extra_operand]
        extra = _extra_operand(op, match)
        inputs[op] = {} if extra is None else {extra: get_input_act_qspec(config)}
    exclusive = [*match, *params] if pattern.params_exclusive else list(match)
    if is_annotated(exclusive) or not accepts(filter_fn, anchor):
        return None
    if pattern.guard is not None and not pattern.guard(gm, match, config):
        return None
    if pattern.annotate is not None:
        partition = pattern.annotate(anchor, config)
    else:
        out = match[pattern.output] if pattern.output is not None else None
        for node in match:
            if node in inputs or node is out:
                annotate_node(node, inputs.get(node), get_output_act_qspec(config) if node is out else None)
        claimed = match if pattern.claim_chain else [n for n in match if n in inputs or n is out]
        mark_annotated([*claimed, *params])
        partition = [*match, *params]
    claim(match, pattern.name, anchor)
    return partition


def annotate_pattern(
    gm: GraphModule,
    pattern: Pattern,
    config: Optional[QuantizationConfig],
    filter_fn: Optional[FilterFn] = None,
    index: Optional[NodeIndex] = None,
) -> list[list[Node]]:
    """Annotate every unclaimed match of ``pattern`` whose anchor ``filter_fn`` accepts, in graph order;
    return the partitions."""
    found = (
        apply_pattern(gm, pattern, match, config, filter_fn)
        for match in find_chains(gm, pattern.chain, pattern.root, pattern.link_args, index, pattern.exclusive)
    )
    return [p for p in found if p is not None]
