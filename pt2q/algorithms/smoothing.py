"""SmoothQuant: move activation outliers into the weights, on the float exported graph, before prepare.

Trained transformers have a few input channels of their linears that are far larger than
the rest; quantized per tensor, they crush the others. For a group of linears reading the
same activation ``X`` (q/k/v, or one FFN linear) SmoothQuant (Xiao et al., 2022) picks one
scale per input channel ``j``::

    s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)     (max|W_j| over every linear of the group)

and computes ``(X / s) @ (W * s).T``, the same product, with ``X / s`` flatter and ``W * s``
quantized per output channel as before. ``max|X_j|`` is measured on the calibration data.
The division is folded into the op producing ``X`` when that is possible without changing
any other reader: a LayerNorm's affine weight and bias, or a linear's output rows; otherwise
an ``aten.div`` by the scales is inserted in front of the group (a float elementwise op that
no quantizer annotates, so the outlier tensor it reads stays float).

It is a float-to-float graph transform (outputs change only by float rounding), so it works
with any quantizer: run it on the exported graph, then ``prepare_pt2e`` as usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch.fx import GraphModule, Interpreter, Node

from pt2q.core.attrs import constant_attr, get_attr_value, set_new_attr
from pt2q.core.notes import copy_provenance
from pt2q.core.ops import LAYER_NORM, LINEAR, is_op, node_arg

__all__ = ["SmoothedGroup", "smooth_quant", "smoothing_scales"]

aten = torch.ops.aten


@dataclass(frozen=True)
class SmoothedGroup:
    """One activation smoothed for the linears reading it: where the ``1/s`` went."""

    activation: str  # the node whose output the linears read
    linears: tuple[str, ...]
    folded_into: str  # "layer_norm <name>", "linear <name>" or "div <name>" (inserted)
    max_scale: float
    min_scale: float


def smoothing_scales(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = act_absmax**alpha / weight_absmax**(1 - alpha)`` per input channel; channels that are
    zero on either side get 1 (nothing to balance)."""
    act, weight = act_absmax.double(), weight_absmax.double()
    scales = act.pow(alpha) / weight.pow(1 - alpha)
    usable = (act > 0) & (weight > 0) & torch.isfinite(scales)
    return torch.where(usable, scales, torch.ones_like(scales)).float()


class _AbsMax(Interpreter):
    """Runs a graph and keeps the running per-last-dim-channel max |value| of chosen nodes."""

    def __init__(self, gm: GraphModule, nodes: Sequence[Node]) -> None:
        super().__init__(gm)
        self.watched = set(nodes)
        self.absmax: dict[Node, torch.Tensor] = {}

    def run_node(self, n: Node) -> Any:
        value = super().run_node(n)
        if n in self.watched:
            amax = value.detach().abs().reshape(-1, value.shape[-1]).amax(0)
            self.absmax[n] = amax if n not in self.absmax else torch.maximum(self.absmax[n], amax)
        return value


def _linear_weight(gm: GraphModule, linear: Node) -> Optional[torch.Tensor]:
    weight = constant_attr(gm, linear.args[1])
    return weight if weight is not None and weight.dim() == 2 else None


def _replace_attr(gm: GraphModule, node: Node, value: torch.Tensor) -> None:
    """Point ``node``'s attribute at a new tensor (never writes into the old one, which an
    ``ExportedProgram`` or the caller's model may share)."""
    *path, name = str(node.target).split(".")
    owner = gm.get_submodule(".".join(path))
    if isinstance(getattr(owner, name), torch.nn.Parameter):
        setattr(owner, name, torch.nn.Parameter(value, requires_grad=False))
    else:
        owner.register_buffer(name, value)


def _private_params(linears: list[Node], readers: dict[str, int]) -> bool:
    """True if the group's weights (and the producer's) are read by nothing else, so scaling them is local."""
    params = [lin.args[1] for lin in linears]
    return all(isinstance(p, Node) and readers.get(str(p.target), 0) == 1 and len(p.users) == 1 for p in params)


def _groups(gm: GraphModule) -> dict[Node, list[Node]]:
    """Activation -> the linears reading it as input, for linears with a stored 2-D weight."""
    groups: dict[Node, list[Node]] = {}
    for node in gm.graph.nodes:
        if is_op(node, LINEAR) and isinstance(node.args[0], Node) and _linear_weight(gm, node) is not None:
            val = node.args[0].meta.get("val")
            if isinstance(val, torch.Tensor) and val.is_floating_point():
                groups.setdefault(node.args[0], []).append(node)
    return groups


def _fold(gm: GraphModule, act: Node, linears: list[Node], scales: torch.Tensor, readers: dict[str, int]) -> str:
    """Divide ``act`` by ``scales``: in its producer when only the group reads it, else by a new div."""
    only_group = set(act.users) == set(linears)
    params = [a for a in act.args[1:4] if isinstance(a, Node) and a.op == "get_attr"]
    local = only_group and all(len(p.users) == 1 and readers.get(str(p.target), 0) == 1 for p in params)
    if local and is_op(act, LAYER_NORM) and len(params) == len(act.args[2:4]) == 2:  # affine weight and bias
        for p in params:
            _replace_attr(gm, p, get_attr_value(gm, str(p.target)).detach() / scales)
        return f"layer_norm {act.name}"
    weight = _linear_weight(gm, act) if is_op(act, LINEAR) else None
    if local and weight is not None and weight.shape[0] == scales.numel():
        _replace_attr(gm, params[0], weight.detach() / scales[:, None])
        for p in params[1:]:
            _replace_attr(gm, p, get_attr_value(gm, str(p.target)).detach() / scales)
        return f"linear {act.name}"
    name = set_new_attr(gm, "_smooth_quant_scale_", scales.clone())
    with gm.graph.inserting_after(act):
        scale_node = gm.graph.get_attr(name)
    with gm.graph.inserting_after(scale_node):
        div = gm.graph.call_function(aten.div.Tensor, (act, scale_node))
    copy_provenance(div, act)
    div.meta["val"] = act.meta.get("val")
    for linear in linears:
        linear.replace_input_with(act, div)
    return f"div {div.name}"


def smooth_quant(
    model: GraphModule, calibration_data: Sequence[Sequence[Any]], alpha: float = 0.5
) -> list[SmoothedGroup]:
    """Apply SmoothQuant to every group of linears of ``model`` (an exported float graph), in place.

    ``calibration_data`` is a list of input tuples (the batches you calibrate with);
    ``alpha`` in [0, 1] is how much of the activation range moves to the weights (0.5
    balances them; larger helps stronger outliers). Returns what was smoothed.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smooth_quant: alpha must be in [0, 1], got {alpha}")
    if not calibration_data:
        raise ValueError("smooth_quant: needs calibration data to measure the activation ranges")
    readers: dict[str, int] = {}  # get_attr target -> how many get_attr nodes read it
    for node in model.graph.nodes:
        if node.op == "get_attr":
            readers[str(node.target)] = readers.get(str(node.target), 0) + 1
    groups = {act: lins for act, lins in _groups(model).items() if _private_params(lins, readers)}
    stats = _AbsMax(model, list(groups))
    with torch.no_grad():
        for batch in calibration_data:
            stats.run(*batch, enable_io_processing=True)
    done = []
    for act, linears in groups.items():
        if act not in stats.absmax:
            continue
        weight_nodes = [node_arg(lin, 1) for lin in linears]  # stored 2-D weights (see _groups)
        weights = [get_attr_value(model, str(w.target)) for w in weight_nodes]
        weight_absmax = torch.stack([w.detach().abs().amax(0) for w in weights]).amax(0)
        scales = smoothing_scales(stats.absmax[act], weight_absmax, alpha)
        for node, w in zip(weight_nodes, weights):
            _replace_attr(model, node, w.detach() * scales)
        where = _fold(model, act, linears, scales, readers)
        done.append(
            SmoothedGroup(act.name, tuple(lin.name for lin in linears), where, float(scales.max()), float(scales.min()))
        )
    model.graph.lint()
    model.recompile()
    return done
