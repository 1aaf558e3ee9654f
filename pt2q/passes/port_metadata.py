"""``PortNodeMetaForQDQ`` (``torchao.quantization.pt2e.quantizer.port_metadata_pass``): give the
quantize / dequantize / choose_qparams nodes of a converted graph the metadata of the node they
were inserted for, so that a backend's partitioner (which groups nodes by ``stack_trace`` or
``quantization_tag``) sees each quantized pattern whole.

The rules, on every node whose annotation quantizes something:

* a statically quantized input: the dequantize feeding the node takes the node's metadata; when
  the quantize reads a weight (a ``get_attr``, perhaps through views), the quantize and those views
  take the weight's;
* a dynamically quantized input: its ``choose_qparams``, quantize and dequantize take the node's;
* a quantized output: the quantize after the node takes the node's.

Only ``stack_trace`` and ``quantization_tag`` are ported.
"""

from __future__ import annotations

import logging
import operator
from collections import deque
from typing import Optional

from torch._export.error import InternalError
from torch.fx import GraphModule, Node
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from pt2q.core.ops import ANY_CHOOSE_QPARAMS, ANY_DEQUANTIZE, ANY_QUANTIZE, aten, is_op, ops, users_except_sym_size
from pt2q.core.spec import Q_ANNOTATION_KEY, QuantizationSpecBase, is_valid_annotation

__all__ = ["PortNodeMetaForQDQ", "METADATA_TO_PORT", "port_node_meta_for_qdq"]

log = logging.getLogger(__name__)

METADATA_TO_PORT = ("stack_trace", "quantization_tag")

# ops a weight may pass through between its get_attr and its quantize
_WEIGHT_VIEWS = ops(
    aten.flatten.using_ints,
    aten.permute.default,
    aten.permute_copy.default,
    aten.slice_copy.Tensor,
    aten.squeeze.dim,
    aten.squeeze_copy.dim,
    aten.transpose.int,
    aten.transpose_.default,
    aten.view_copy.default,
    aten.view.default,
    aten._mkldnn_transpose.default,
)


def _port(to_node: Node, from_node: Node) -> None:
    for key in METADATA_TO_PORT:
        if key in from_node.meta:
            to_node.meta[key] = from_node.meta[key]


def _choose_qparams_after(node: Node) -> Optional[Node]:
    """The first choose_qparams reached from ``node``'s users, breadth first."""
    queue = deque(node.users)
    seen: set[Node] = set()
    while queue:
        n = queue.popleft()
        if n in seen or n.op == "output":
            continue
        seen.add(n)
        if is_op(n, ANY_CHOOSE_QPARAMS):
            return n
        queue.extend(n.users)
    return None


def _reaches(source: Node, dq: Node) -> bool:
    """Whether ``dq`` dequantizes ``source``: only quantization ops lie between them."""
    node: object = dq
    while is_op(node, ANY_QUANTIZE | ANY_DEQUANTIZE | ANY_CHOOSE_QPARAMS):
        assert isinstance(node, Node)
        first = node.args[0]
        if not isinstance(first, Node):
            raise ValueError(f"expected the first argument of '{node.name}' to be a node, got {first!r}")
        node = first
    return node is source


def _dequantize_between(producer: Node, user: Node) -> Optional[Node]:
    for arg in [*user.args, *user.kwargs.values()]:
        if is_op(arg, ANY_DEQUANTIZE) and _reaches(producer, arg):  # type: ignore[arg-type]
            return arg  # type: ignore[return-value]
    return None


def _port_dynamic_input(input_node: Node, node: Node, strict: bool) -> None:
    choose = _choose_qparams_after(input_node)
    if choose is None and not strict:
        return
    if choose is None:
        raise ValueError(f"no choose_qparams found for the dynamically quantized input of '{node.name}'")
    getitems = users_except_sym_size(choose)
    if len(getitems) != 2:
        raise InternalError(f"expected choose_qparams '{choose.name}' to have two users (scale, zero point)")
    scale = next((g for g in getitems if g.target is operator.getitem and g.args[1] == 0), getitems[-1])
    quantize = next(iter(scale.users))
    dequantizes = users_except_sym_size(quantize)
    if len(dequantizes) > 1:
        raise InternalError(f"expected the dynamic quantize '{quantize.name}' to have one user")
    for n in (choose, quantize, *dequantizes):
        _port(n, node)


def _port_static_input(input_node: Node, node: Node) -> None:
    dq = _dequantize_between(input_node, node)
    if dq is None:
        return
    q = dq.args[0]
    if is_op(q, ANY_QUANTIZE):
        assert isinstance(q, Node)
        chain = [q]
        source = q.args[0]
        while is_op(source, _WEIGHT_VIEWS):
            assert isinstance(source, Node)
            chain.append(source)
            source = source.args[0]
        if isinstance(source, Node) and source.op == "get_attr":
            for n in chain:
                _port(n, source)
    _port(dq, node)


def _port_input(input_node: Node, node: Node, qspec: Optional[QuantizationSpecBase], strict: bool) -> None:
    if qspec is None:
        return
    if getattr(qspec, "is_dynamic", False):
        _port_dynamic_input(input_node, node, strict)
    else:
        _port_static_input(input_node, node)


def _port_output(node: Node, qspec: Optional[QuantizationSpecBase]) -> None:
    if qspec is None or not node.users:
        return
    users = users_except_sym_size(node)
    if len(users) != 1:
        log.warning("expected '%s' to have a single user", node.name)
    if not users:
        return
    q = users[-1]
    if not is_op(q, ANY_QUANTIZE):
        log.warning("expected the user of '%s' to be a quantize op, got '%s'", node.name, q.name)
        return
    _port(q, node)


def port_node_meta_for_qdq(gm: GraphModule, strict: bool = True) -> GraphModule:
    """Port ``stack_trace`` / ``quantization_tag`` onto the Q/DQ nodes of a converted ``gm`` (in place).

    ``strict=False`` (what ``convert_pt2e`` uses) skips a dynamically quantized input whose
    ``choose_qparams`` cannot be found (an annotation naming a node of another graph, e.g. after a
    ``copy.deepcopy``) instead of raising as torchao's pass does."""
    for node in gm.graph.nodes:
        annotation = node.meta.get(Q_ANNOTATION_KEY)
        if not is_valid_annotation(annotation):
            continue
        for input_node, qspec in annotation.input_qspec_map.items():
            _port_input(input_node, node, qspec, strict)
        _port_output(node, annotation.output_qspec)
    return gm


class PortNodeMetaForQDQ(PassBase):
    """The pass form of :func:`port_node_meta_for_qdq` (see the module docstring for the rules)."""

    def call(self, graph_module: GraphModule) -> PassResult:
        return PassResult(port_node_meta_for_qdq(graph_module), True)
