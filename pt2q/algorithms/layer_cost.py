"""What a layer costs on a rung without measurements (its multiply-accumulates x the rung's relative cost),
and what a choice of rungs costs in all."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
from torch.fx import GraphModule, Node

from pt2q.algorithms.keep_float import layer_name
from pt2q.algorithms.precision_ladder import Rung

__all__ = ["work", "RelativeCost", "estimate_cost"]


def _shape(node: Any) -> Optional[torch.Size]:
    val = node.meta.get("val") if isinstance(node, Node) else None
    return val.shape if isinstance(val, torch.Tensor) else None


def work(node: Node) -> float:
    """Multiply-accumulates of a linear/conv/matmul node, else its output's element count (>= 1)."""
    out = _shape(node)
    if out is None:
        return 1.0
    name = getattr(node.target, "__name__", str(node.target))
    weight = _shape(node.args[1]) if len(node.args) > 1 else None
    if name.startswith(("linear", "matmul", "bmm", "mm", "addmm")) and weight is not None:
        return float(out.numel() * (weight[-2] if not name.startswith("linear") else weight[-1]))
    if name.startswith(("conv", "convolution")) and weight is not None:
        return float(out.numel() * weight[1:].numel())
    return float(max(out.numel(), 1))


class RelativeCost:
    """The cost model without measurements: rung ``relative_cost`` x the layer's :func:`work`."""

    name = "relative cost x MACs (not measured)"
    unit = "MMAC-eq"

    def layer_costs(self, float_gm: GraphModule, requests: Mapping[str, Sequence[Rung]]) -> dict[str, dict[str, float]]:
        nodes = {layer_name(n): n for n in float_gm.graph.nodes if n.op == "call_function"}
        return {
            layer: {r.name: r.relative_cost * work(nodes[layer]) / 1e6 for r in rungs}
            for layer, rungs in requests.items()
            if layer in nodes
        }


def estimate_cost(costs: Mapping[str, Mapping[str, float]], choice: Mapping[str, str], base: str) -> float:
    """The summed cost of ``choice`` (layers not in it on ``base``) over the priced layers."""
    return sum(c.get(choice.get(layer, base), c.get(base, 0.0)) for layer, c in costs.items())
