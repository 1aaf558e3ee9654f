"""Reading, adding and pruning the tensors a GraphModule holds as attributes."""

from __future__ import annotations

import torch
from torch import nn
from torch.fx import GraphModule, Node

__all__ = [
    "resolve_attr",
    "get_attr_value",
    "constant_attr",
    "free_attr_name",
    "set_new_attr",
    "remove_unused_attributes",
]


def resolve_attr(gm: nn.Module, target: str) -> object:
    """The object behind a dotted ``get_attr`` target such as ``"conv.weight"`` (a tensor or a submodule)."""
    obj: object = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def get_attr_value(gm: nn.Module, target: str) -> torch.Tensor:
    """The tensor behind a dotted ``get_attr`` target such as ``"conv.weight"``."""
    obj = resolve_attr(gm, target)
    assert isinstance(obj, torch.Tensor), f"get_attr target '{target}' is not a tensor"
    return obj


def constant_attr(gm: nn.Module, node: object) -> torch.Tensor | None:
    """The tensor behind ``node`` if it is a ``get_attr`` node, else None (computed or absent)."""
    if isinstance(node, Node) and node.op == "get_attr":
        return get_attr_value(gm, str(node.target))
    return None


def free_attr_name(module: nn.Module, prefix: str) -> str:
    """The first name ``{prefix}{i}`` (i = 0, 1, ...) that ``module`` has no attribute under."""
    i = 0
    while hasattr(module, f"{prefix}{i}"):
        i += 1
    return f"{prefix}{i}"


def set_new_attr(gm: GraphModule, prefix: str, value: torch.Tensor, *, parameter: bool = False) -> str:
    """Register ``value`` under the first free name ``{prefix}{i}``; return that name."""
    name = free_attr_name(gm, prefix)
    if parameter:
        gm.register_parameter(name, nn.Parameter(value, requires_grad=value.is_floating_point()))
    else:
        gm.register_buffer(name, value)
    return name


def remove_unused_attributes(gm: GraphModule) -> GraphModule:
    """Erase get_attr nodes nobody reads and drop parameters/buffers no node refers to (in place).

    After BN folding or weight quantization the float originals are dead weight:
    keeping them would double the size of a saved program.
    """
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    used_modules = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    for name, module in list(gm.named_modules()):
        if any(name == m or name.startswith(m + ".") for m in used_modules):
            continue
        prefix = f"{name}." if name else ""
        for attr in list(module._parameters) + list(module._buffers):
            if f"{prefix}{attr}" not in used:
                delattr(module, attr)
    gm.recompile()
    return gm
