"""Erasing nodes together with the pure producers only they used."""

from __future__ import annotations

from torch.fx import GraphModule, Node

__all__ = ["erase_with_dead_inputs"]


def erase_with_dead_inputs(gm: GraphModule, nodes: list[Node]) -> None:
    """Erase ``nodes`` (users first) and then every call_function/get_attr producer left unused.

    Unlike ``Graph.eliminate_dead_code`` this never touches unrelated side-effect
    nodes such as the exported module's ``_guards_fn`` call.
    """
    pending, erased = list(nodes), set()
    while pending:
        node = pending.pop(0)
        if node in erased or node.users or node.op not in ("call_function", "get_attr"):
            continue
        inputs = node.all_input_nodes
        gm.graph.erase_node(node)
        erased.add(node)
        pending.extend(inputs)
