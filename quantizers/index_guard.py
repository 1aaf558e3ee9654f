"""Keep integer index arithmetic float: find float tensors computed only from integer/index sources.

Models carry position arithmetic in float: T5's and MPNet's relative-position buckets take
``log(|i - j| / max_exact)`` of integer distances cast to float (``log 0 = -inf`` on the
diagonal, later clamped and cast back to ``long``), DeBERTa's log buckets do the same, rotary
embeddings multiply float position ids. These tensors are *indices*: their exact values matter
(a bucket off by one picks another embedding row) and they may hold ``-inf`` before a clamp.
An observer on them fails calibration ("calibration data must be finite") or, worse, rounds
the indices.

A float tensor is **index-derived** when it is computed without any float activation or
weight (only from integer/bool tensors — ``arange``, position ids, an attention mask cast to
float — and scalars) and at least one integer/bool tensor takes part in computing it.
:func:`find_index_derived` finds them structurally, before calibration; the mask guard
(:class:`pt2q.quantizers.mask_guard.MaskGuard`) keeps float every node that computes one or
reads one, and ``pt2q.report`` says why.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

__all__ = ["find_index_derived"]


def _tensor(node: Node) -> torch.Tensor | None:
    val = node.meta.get("val")
    return val if isinstance(val, torch.Tensor) else None


def _float_free(node: Node, free: dict[Node, bool]) -> bool:
    """Computed without a float activation or a float weight (scalars and 0-d constants allowed)."""
    val = _tensor(node)
    if node.op == "placeholder":
        return val is not None and not val.is_floating_point()
    if node.op == "get_attr":  # integer buffers and 0-d constants; float weights and tables are not
        return val is not None and (not val.is_floating_point() or val.numel() <= 1)
    if node.op != "call_function":
        return False
    return all(free.get(a, False) for a in node.all_input_nodes)


def find_index_derived(gm: GraphModule) -> dict[Node, str]:
    """Every node computing an index-derived float tensor (see module docs), with the integer source it came from."""
    free: dict[Node, bool] = {}
    source: dict[Node, str] = {}  # the first integer/bool tensor each float-free node derives from
    found: dict[Node, str] = {}
    for node in gm.graph.nodes:
        free[node] = _float_free(node, free)
        if not free[node]:
            continue
        val = _tensor(node)
        if val is not None and not val.is_floating_point() and val.dtype is not torch.bool:
            source[node] = node.name  # an integer tensor (bools are masks: the mask guard's business)
        else:
            origin = next((source[a] for a in node.all_input_nodes if a in source), None)
            if origin is not None:
                source[node] = origin
        if val is not None and val.is_floating_point() and node.op == "call_function" and node in source:
            found[node] = f"integer index arithmetic carried in float (derived from {source[node]})"
    return found
