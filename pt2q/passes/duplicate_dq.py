"""Give every quantized consumer of a dequantize its own copy, so each quantized op sees a DQ -> op pattern.

:func:`duplicate_dq` is the pass ``convert_pt2e`` runs; :class:`DuplicateDQPass` is the same pass as a
``torch.fx`` pass object (torchao's ``quantizer.duplicate_dq_pass.DuplicateDQPass``).
"""

from __future__ import annotations

import operator

from torch.fx import GraphModule, Node
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from pt2q.core.ops import CHOOSE_QPARAMS_OPS, DQ_OPS, Q_OPS, is_affine_dequantize, is_op, users_except_sym_size
from pt2q.core.spec import Q_ANNOTATION_KEY, is_valid_annotation

__all__ = ["duplicate_dq", "DuplicateDQPass"]


def _dynamic_dequantize(dq: Node) -> bool:
    """``choose_qparams -> getitem -> quantize -> dq``: a value quantized at run time, dequantized once
    for all its consumers (copies would only recompute the same dequantization)."""
    q = dq.args[0]
    if not is_op(q, Q_OPS):
        return False
    assert isinstance(q, Node)
    scale = q.args[1] if len(q.args) > 1 else None
    return isinstance(scale, Node) and scale.target is operator.getitem and is_op(scale.args[0], CHOOSE_QPARAMS_OPS)


def duplicate_dq(gm: GraphModule) -> GraphModule:
    """For each dequantize read by several nodes, give each reader that the quantizer annotated its own copy
    (in place), as torchao's ``DuplicateDQPass`` does.

    Backends fuse ``dq -> op -> q`` per operator; a DQ shared by two ops would hide that pattern from
    one of them. Readers left float keep the shared one, and a dynamically quantized value keeps one
    dequantize for all.
    """
    for dq in list(gm.graph.nodes):
        if not (is_op(dq, DQ_OPS) or is_affine_dequantize(dq)):
            continue
        users = users_except_sym_size(dq)
        if len(users) < 2 or _dynamic_dequantize(dq):
            continue
        for user in users:
            if not is_valid_annotation(user.meta.get(Q_ANNOTATION_KEY)):
                continue
            with gm.graph.inserting_before(user):
                copy = gm.graph.node_copy(dq)
            user.replace_input_with(dq, copy)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


class DuplicateDQPass(PassBase):
    """Give each annotated consumer of a shared dequantize its own copy (:func:`duplicate_dq`)."""

    def call(self, graph_module: GraphModule) -> PassResult:
        duplicate_dq(graph_module)
        graph_module.graph.eliminate_dead_code()
        graph_module.recompile()
        return PassResult(graph_module, True)
