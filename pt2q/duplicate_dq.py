"""Give every consumer of a dequantize its own copy, so each quantized op sees a DQ -> op pattern."""

from __future__ import annotations

from torch.fx import GraphModule

from pt2q.ops import DQ_OPS, is_op

__all__ = ["duplicate_dq"]


def duplicate_dq(gm: GraphModule) -> GraphModule:
    """For each dequantize node with several users, clone it once per extra user (in place).

    Backends fuse ``dq -> op -> q`` per operator; a DQ shared by two ops would
    hide that pattern from one of them.
    """
    for dq in list(gm.graph.nodes):
        if not is_op(dq, DQ_OPS) or len(dq.users) < 2:
            continue
        for user in list(dq.users)[1:]:
            with gm.graph.inserting_before(user):
                copy = gm.graph.node_copy(dq)
            user.replace_input_with(dq, copy)
    gm.recompile()
    return gm
