"""GPTQ in the PT2E flow: low-bit linear weights chosen against calibration data, not rounded to nearest.

::

    prepared = prepare_pt2e(exported.module(), quantizer)     # affine weight observers (groupwise / per channel)
    gptq_quantize(prepared, calibration_batches)               # instead of (or after) plain calibration
    quantized = convert_pt2e(prepared)

For every linear whose weight has a static affine observer (``AffineQuantizedMinMaxObserver``
or the moving-average one; ``PerGroup`` or per-output-channel granularity), GPTQ
(Frantar et al., 2022) quantizes the weight one input column at a time and spreads each
column's rounding error over the columns not yet quantized, weighted by the inverse
Hessian ``H = 2 X^T X`` of the layer's inputs on the calibration data; each group's
scale and zero point are chosen (min/max, the observer's mapping) when GPTQ reaches the
group. The weight is replaced by its quantized values (exactly on the grid) and the
observer by an :class:`~pt2q.observers.affine_observer.AffineQuantizedFixedQParamsObserver` holding
those qparams, so ``convert_pt2e`` stores exactly the integers GPTQ chose.

With ``sequential`` (the default) linears are processed in order of depth: the inputs a
layer's Hessian is built from come from the model whose earlier layers are already
quantized, at the cost of one pass over the calibration data per depth level (q/k/v of
one attention block share a level). Activation observers see those passes too.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn
from torch.fx import GraphModule, Node

from pt2q.core.attrs import get_attr_value
from pt2q.core.ops import LINEAR, is_observer_node, is_op
from pt2q.numerics.affine_primitives import (
    choose_qparams_affine_with_min_max,
    get_and_check_qmin_qmax,
    reduction_params,
)
from pt2q.observers.affine_observer import AffineQuantizedFixedQParamsObserver, AffineQuantizedRunningMinMaxBase

__all__ = ["gptq_quantize", "GPTQResult", "gptq_quantize_weight"]

Batch = Union[Tensor, Sequence[Any]]


@dataclass(frozen=True)
class GPTQResult:
    """What GPTQ did to one weight: its linear, the weight attribute, and the Hessian-weighted
    output error ``tr((W - Q) H (W - Q)^T)`` of GPTQ and of round-to-nearest with the same qparams rule."""

    linear: str
    weight: str
    gptq_error: float
    rtn_error: float


@dataclass
class _Target:
    linear: Node
    weight_attr: str
    observer_node: Node
    observer: AffineQuantizedRunningMinMaxBase
    activation: Node


class _HessianRecorder(nn.Module):
    """Accumulates ``2 / n * sum x x^T`` over the rows of every tensor it sees."""

    hessian: Tensor

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features
        self.register_buffer("hessian", torch.zeros(features, features, dtype=torch.float64))
        self.rows = 0

    def forward(self, x: Tensor) -> Tensor:
        rows = x.detach().reshape(-1, self.features).double()
        total = self.rows + rows.shape[0]
        self.hessian.mul_(self.rows / total).addmm_(rows.T, rows, alpha=2.0 / total)
        self.rows = total
        return x


def _owner(gm: GraphModule, target: str) -> tuple[nn.Module, str]:
    path, _, leaf = target.rpartition(".")
    return (gm.get_submodule(path) if path else gm), leaf


def _targets(gm: GraphModule) -> list[_Target]:
    found: list[_Target] = []
    uses: defaultdict[str, int] = defaultdict(int)
    for node in gm.graph.nodes:
        if not is_op(node, LINEAR) or len(node.args) < 2:
            continue
        obs_node, act = node.args[1], node.args[0]
        if not (is_observer_node(obs_node, gm) and isinstance(act, Node)):
            continue
        observer = gm.get_submodule(obs_node.target)
        weight = obs_node.args[0]
        if not isinstance(observer, AffineQuantizedRunningMinMaxBase) or not (
            isinstance(weight, Node) and weight.op == "get_attr"
        ):
            continue
        attr = str(weight.target)
        if get_attr_value(gm, attr).dim() != 2:
            continue
        uses[attr] += 1
        found.append(_Target(node, attr, obs_node, observer, act))
    return [t for t in found if uses[t.weight_attr] == 1]  # a weight shared by several linears keeps its observer


def _levels(gm: GraphModule, targets: list[_Target]) -> list[list[_Target]]:
    """Targets grouped by how many target linears lie on their longest path from the inputs."""
    by_node = {t.linear: t for t in targets}
    depth: dict[Node, int] = {}
    levels: dict[int, list[_Target]] = defaultdict(list)
    for node in gm.graph.nodes:
        before = max((depth[n] for n in node.all_input_nodes), default=0)
        if node in by_node:
            levels[before].append(by_node[node])
            depth[node] = before + 1
        else:
            depth[node] = before
    return [levels[k] for k in sorted(levels)]


def _as_args(batch: Batch) -> tuple[Any, ...]:
    return (batch,) if isinstance(batch, Tensor) else tuple(batch)


def _record_hessians(gm: GraphModule, level: list[_Target], batches: list[tuple[Any, ...]]) -> dict[Node, Tensor]:
    """Run the calibration data once with a recorder on each distinct input of the level's linears."""
    recorders: dict[Node, tuple[str, Node]] = {}
    for t in level:
        if t.activation in recorders:
            continue
        features = get_attr_value(gm, t.weight_attr).shape[1]
        name = f"_gptq_hessian_{len(recorders)}"
        gm.add_submodule(name, _HessianRecorder(features))
        with gm.graph.inserting_after(t.activation):
            recorders[t.activation] = (name, gm.graph.call_module(name, (t.activation,)))
    gm.recompile()
    try:
        with torch.no_grad():
            for args in batches:
                gm(*args)
        return {act: _recorded(gm, name) for act, (name, _) in recorders.items()}
    finally:
        for name, node in recorders.values():
            gm.graph.erase_node(node)
            delattr(gm, name)
        gm.recompile()


def _recorded(gm: GraphModule, name: str) -> Tensor:
    recorder = gm.get_submodule(name)
    assert isinstance(recorder, _HessianRecorder)
    return recorder.hessian.clone()


def _group_qparams(observer: AffineQuantizedRunningMinMaxBase, columns: Tensor) -> tuple[Tensor, Optional[Tensor]]:
    """Scale and zero point of one group of weight columns (one per row), by the observer's rule."""
    return choose_qparams_affine_with_min_max(
        columns.amin(dim=1),
        columns.amax(dim=1),
        observer.mapping_type,
        [],
        observer.target_dtype,
        observer.quant_min,
        observer.quant_max,
        observer.eps,
        observer.scale_dtype,
        observer.zero_point_dtype,
        observer.preserve_zero,
        observer.zero_point_domain,
    )


def _round_column(w: Tensor, scale: Tensor, zero_point: Optional[Tensor], qmin: int, qmax: int) -> Tensor:
    """One column quantized and dequantized, with the arithmetic of quantize_affine / dequantize_affine."""
    scale = scale.float()
    zp = 0.0 if zero_point is None else zero_point.float()
    q = torch.clamp(torch.round(w * (1.0 / scale)) + zp, qmin, qmax)
    return (q - zp) * scale


def gptq_quantize_weight(
    weight: Tensor,
    hessian: Tensor,
    observer: AffineQuantizedRunningMinMaxBase,
    group_size: int,
    damp: float = 0.01,
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """GPTQ of one [out, in] weight with groups of ``group_size`` input columns: quantized values, scales, zero points.

    Scales and zero points are [out, in // group_size] (the qparams of each group, chosen
    when GPTQ reaches it, by the rule of ``observer``).
    """
    qmin, qmax = get_and_check_qmin_qmax(observer.target_dtype, observer.quant_min, observer.quant_max)
    w = weight.detach().clone().float()
    rows, cols = w.shape
    h = hessian.clone().double()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    block = group_size * math.ceil(128 / group_size)  # whole groups per lazy-update block
    out = torch.zeros_like(w)
    scales, zero_points = [], []
    for start in range(0, cols, block):
        end = min(start + block, cols)
        w_block, errors = w[:, start:end].clone(), torch.zeros(rows, end - start)
        h_block = hinv[start:end, start:end]
        for i in range(end - start):
            if i % group_size == 0:
                scale, zero_point = _group_qparams(observer, w_block[:, i : i + group_size])
                scales.append(scale)
                zero_points.append(zero_point)
            column = w_block[:, i]
            quantized = _round_column(column, scale, zero_point, qmin, qmax)
            out[:, start + i] = quantized
            err = (column - quantized) / h_block[i, i]
            w_block[:, i:] -= err[:, None] * h_block[i, i:][None, :]
            errors[:, i] = err
        w[:, end:] -= errors @ hinv[start:end, end:]
    scale_t = torch.stack(scales, dim=1)
    zp_t = None if zero_points[0] is None else torch.stack(zero_points, dim=1)  # type: ignore[arg-type]
    return out.to(weight.dtype), scale_t, zp_t


def _hessian_error(weight: Tensor, quantized: Tensor, hessian: Tensor) -> float:
    diff = weight.double() - quantized.double()
    return float(torch.einsum("ij,jk,ik->", diff, hessian, diff))


def _rtn(weight: Tensor, observer: AffineQuantizedRunningMinMaxBase, group_size: int) -> Tensor:
    qmin, qmax = get_and_check_qmin_qmax(observer.target_dtype, observer.quant_min, observer.quant_max)
    out = torch.empty_like(weight)
    for start in range(0, weight.shape[1], group_size):
        columns = weight[:, start : start + group_size]
        scale, zero_point = _group_qparams(observer, columns)
        shape = (-1, 1)
        out[:, start : start + group_size] = _round_column(
            columns, scale.reshape(shape), None if zero_point is None else zero_point.reshape(shape), qmin, qmax
        )
    return out


def _install(gm: GraphModule, t: _Target, quantized: Tensor, scale: Tensor, zero_point: Optional[Tensor]) -> None:
    """The weight becomes its quantized values; its observer holds the qparams that reproduce them."""
    weight = get_attr_value(gm, t.weight_attr)
    owner, leaf = _owner(gm, t.weight_attr)
    # a new tensor, so the float model the program was exported from keeps its weights
    setattr(
        owner, leaf, nn.Parameter(quantized, requires_grad=False) if isinstance(weight, nn.Parameter) else quantized
    )
    obs = t.observer
    assert obs.block_size is not None
    shape, dims = reduction_params(obs.block_size, weight.shape)
    qparam_shape = [s for i, s in enumerate(shape) if i not in dims]
    fixed = AffineQuantizedFixedQParamsObserver(
        obs.mapping_type,
        obs.target_dtype,
        obs.granularity,
        scale.reshape(qparam_shape),
        None if zero_point is None else zero_point.reshape(qparam_shape),
        obs.block_size,
        original_dtype=obs.original_dtype or weight.dtype,
        quant_min=obs.quant_min,
        quant_max=obs.quant_max,
        eps=obs.eps,
        scale_dtype=obs.scale_dtype,
        zero_point_dtype=obs.zero_point_dtype,
        preserve_zero=obs.preserve_zero,
        zero_point_domain=obs.zero_point_domain,
    )
    fixed.target_name = obs.target_name
    setattr(gm, str(t.observer_node.target), fixed)


def _group_size(t: _Target, weight: Tensor) -> int:
    block = t.observer.block_size
    if block is None:
        t.observer(weight)  # never calibrated: its block structure comes from the weight itself
        block = t.observer.block_size
    assert block is not None
    if len(block) != 2 or block[0] != 1:
        raise ValueError(
            f"gptq_quantize: the weight observer of '{t.linear.name}' has block size {block}; GPTQ needs "
            "per-output-channel (PerAxis(0)) or groupwise (PerGroup) weight qparams"
        )
    return int(block[1])


def gptq_quantize(
    model: GraphModule,
    calibration_data: Iterable[Batch],
    *,
    damp: float = 0.01,
    sequential: bool = True,
) -> list[GPTQResult]:
    """Quantize the affine-observed linear weights of a prepared model with GPTQ (in place).

    ``calibration_data`` yields the model's inputs (a tensor or a tuple of arguments per
    batch); it is iterated once per depth level with ``sequential``, once without.
    ``damp`` is the fraction of the mean Hessian diagonal added to it for stability.
    Returns, per weight, GPTQ's and round-to-nearest's Hessian-weighted errors.
    """
    if not isinstance(model, GraphModule):
        raise TypeError(f"gptq_quantize expects the GraphModule prepare_pt2e returned, got {type(model).__name__}")
    targets = _targets(model)
    if not targets:
        raise ValueError(
            "gptq_quantize: no linear has a static affine weight observer (AffineQuantizedMinMaxObserver with "
            "PerGroup or PerAxis(0)); prepare the model with a low-bit config such as get_8da4w_quantization_config()"
        )
    batches = [_as_args(b) for b in calibration_data]
    if not batches:
        raise ValueError("gptq_quantize needs at least one calibration batch")
    results = []
    for level in _levels(model, targets) if sequential else [targets]:
        hessians = _record_hessians(model, level, batches)
        for t in level:
            weight = get_attr_value(model, t.weight_attr).detach()
            group = _group_size(t, weight)
            hessian = hessians[t.activation]
            quantized, scale, zero_point = gptq_quantize_weight(weight, hessian, t.observer, group, damp)
            results.append(
                GPTQResult(
                    t.linear.name,
                    t.weight_attr,
                    _hessian_error(weight, quantized, hessian),
                    _hessian_error(weight, _rtn(weight.float(), t.observer, group), hessian),
                )
            )
            _install(model, t, quantized, scale, zero_point)
    return results
