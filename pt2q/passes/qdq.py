"""Replace observer calls with ``quantized_decomposed`` quantize/dequantize ops."""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch.fx import GraphModule, Node

from pt2q.core.attrs import set_new_attr
from pt2q.core.drop_in_warnings import UncalibratedObserverWarning, warn_drop_in
from pt2q.core.notes import OBSERVER_KEY, copy_provenance, set_note
from pt2q.core.ops import is_observer_node
from pt2q.core.spec import dtype_range, is_per_channel

__all__ = ["replace_observers_with_qdq", "UncalibratedModelError"]

qd = torch.ops.quantized_decomposed
_QUANT_DTYPES = {
    *(torch.int8, torch.uint8, torch.int16, torch.uint16, torch.int32, torch.qint8, torch.quint8, torch.qint32),
    *(torch.float8_e4m3fn, torch.float8_e5m2),  # float8 Q/DQ as torchao has them (quantized_decomposed's bounds)
}
_UNDERLYING = {torch.qint8: torch.int8, torch.quint8: torch.uint8, torch.qint32: torch.int32}
_CHOOSE_QPARAMS = {
    torch.per_tensor_affine: qd.choose_qparams.tensor,
    torch.per_tensor_symmetric: qd.choose_qparams_symmetric.tensor,
}


class UncalibratedModelError(RuntimeError):
    """convert_pt2e was called before the observers saw any data."""


def _qrange(obs: Any, dtype: torch.dtype) -> tuple[int, int]:
    full_range = dtype_range(dtype)
    if full_range is None:
        raise TypeError(f"{type(obs).__name__}: {dtype} is not an integer or float8 dtype to quantize to")
    lo, hi = full_range
    qmin = obs.quant_min if getattr(obs, "quant_min", None) is not None else lo
    qmax = obs.quant_max if getattr(obs, "quant_max", None) is not None else hi
    return int(qmin), int(qmax)


def _port_meta(new: Node, observer_node: Node, with_val: bool = False) -> None:
    """Give a new Q/DQ node the observer's provenance (and, for the float DQ output, its value meta)."""
    copy_provenance(new, observer_node)
    if with_val and "val" in observer_node.meta:
        new.meta["val"] = observer_node.meta["val"]


def _check_scale(scale: torch.Tensor, obs: Any, node: Node) -> None:
    """A zero, negative, inf or NaN scale quantizes every value to garbage: refuse it by name."""
    scale = torch.as_tensor(scale)
    if not (torch.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError(
            f"convert_pt2e: {getattr(obs, 'target_name', '') or node.name} gets scale {scale.tolist()} from its "
            f"{type(obs).__name__}; a scale must be finite and positive. Check the calibration data (values near "
            "the float32 limit overflow the scale) or the spec's qparams."
        )


def _static_qdq(gm: GraphModule, node: Node, obs: Any, dtype: torch.dtype) -> tuple[Node, Node]:
    scale, zero_point = obs.calculate_qparams()
    _check_scale(scale, obs, node)
    qmin, qmax = _qrange(obs, dtype)
    g = gm.graph
    if is_per_channel(getattr(obs, "qscheme", None)):
        scale_node = g.get_attr(set_new_attr(gm, "_scale_", scale.detach().clone()))
        zp_node = g.get_attr(set_new_attr(gm, "_zero_point_", zero_point.detach().clone()))
        qparams: tuple[Any, ...] = (scale_node, zp_node, int(obs.ch_axis), qmin, qmax, dtype)
        q_op, dq_op = qd.quantize_per_channel.default, qd.dequantize_per_channel.default
    else:
        qparams = (float(scale), int(zero_point), qmin, qmax, dtype)
        q_op, dq_op = qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default
    q = g.call_function(q_op, (node.args[0], *qparams))
    dq = g.call_function(dq_op, (q, *qparams), _out_dtype_kwargs(node))
    return q, dq


def _dynamic_qdq(gm: GraphModule, node: Node, obs: Any, dtype: torch.dtype) -> tuple[Node, Node]:
    qscheme = getattr(obs, "qscheme", torch.per_tensor_affine) or torch.per_tensor_affine
    if qscheme not in _CHOOSE_QPARAMS:
        raise ValueError(
            f"dynamic quantization of {obs.target_name or node.name} asks for qscheme {qscheme}; "
            "only per-tensor affine or symmetric qparams can be chosen at run time."
        )
    qmin, qmax = _qrange(obs, dtype)
    eps = float(getattr(obs, "eps", torch.finfo(torch.float32).eps))
    g = gm.graph
    choose = g.call_function(_CHOOSE_QPARAMS[qscheme], (node.args[0], qmin, qmax, eps, dtype))
    scale = g.call_function(operator.getitem, (choose, 0))
    zero_point = g.call_function(operator.getitem, (choose, 1))
    q = g.call_function(qd.quantize_per_tensor.tensor, (node.args[0], scale, zero_point, qmin, qmax, dtype))
    dq = g.call_function(
        qd.dequantize_per_tensor.tensor, (q, scale, zero_point, qmin, qmax, dtype), _out_dtype_kwargs(node)
    )
    for n in (choose, scale, zero_point):
        _port_meta(n, node)
    return q, dq


def _float16_cast(gm: GraphModule, node: Node) -> tuple[Node, Node]:
    """A float16 observer becomes a round trip through float16 (``convert_element_type.no_fuse``, which
    backends keep: Inductor runs a linear whose weight comes so as a float16-weight linear)."""
    to_half = gm.graph.call_function(qd.convert_element_type.no_fuse, (node.args[0], torch.float16))
    back = gm.graph.call_function(qd.convert_element_type.no_fuse, (to_half, torch.float32))
    return to_half, back


def _out_dtype_kwargs(node: Node) -> dict[str, Any]:
    val = node.args[0].meta.get("val") if isinstance(node.args[0], Node) else None
    if isinstance(val, torch.Tensor) and val.dtype != torch.float32:
        return {"out_dtype": val.dtype}
    return {}


def _saw_data(obs: Any) -> bool:
    """pt2q's ``has_statistics``; for another observer (torchao's), a recorded range (min <= max)."""
    if hasattr(obs, "has_statistics"):
        return bool(obs.has_statistics)
    inner = getattr(obs, "activation_post_process", obs)  # a fake quantizer's observer
    lo, hi = getattr(inner, "min_val", None), getattr(inner, "max_val", None)
    if isinstance(lo, torch.Tensor) and isinstance(hi, torch.Tensor):
        return lo.numel() > 0 and bool((lo <= hi).all())
    return True  # nothing to tell by: trust it


def _refuse_or_warn_uncalibrated(gm: GraphModule, observer_nodes: list[Node], where: str) -> None:
    """Observers that never saw data: an error where they have no default qparams (affine observers, as in
    torchao), else an ``UncalibratedObserverWarning`` and their defaults (scale 1.0, zero point 0), as torchao."""
    uncalibrated: dict[str, Any] = {}
    for n in observer_nodes:
        obs = gm.get_submodule(str(n.target))
        if not _saw_data(obs):
            uncalibrated.setdefault(str(getattr(obs, "target_name", "") or n.name), obs)
    if not uncalibrated:
        return
    names = sorted(uncalibrated)
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    message = f"convert_pt2e: {len(names)} observer(s) never saw data ({shown})"
    advice = "Run the prepared model on representative inputs (calibration) before calling convert_pt2e."
    if where:
        advice = (
            f"They are in the body '{where}', which calibration never ran: use inputs that take every branch "
            "of the model's control flow."
        )
    if any(callable(getattr(obs, "convert", None)) for obs in uncalibrated.values()):
        raise UncalibratedModelError(f"{message}. {advice}")  # no default qparams for a block-wise observer
    warn_drop_in(UncalibratedObserverWarning, f"{message}: they convert with scale 1.0, zero point 0. {advice}")


def replace_observers_with_qdq(gm: GraphModule, where: str = "") -> GraphModule:
    """Turn each observer call into ``quantize -> dequantize`` with the observer's qparams (in place).
    ``where`` names the control-flow body ``gm`` is, for messages."""
    observer_nodes = [n for n in gm.graph.nodes if is_observer_node(n, gm)]
    _refuse_or_warn_uncalibrated(gm, observer_nodes, where)
    for node in observer_nodes:
        obs: Any = gm.get_submodule(str(node.target))  # any observer module (duck-typed)
        convert = getattr(obs, "convert", None)
        if callable(convert):  # writes its own quantized form (affine observers: torchao's affine ops)
            convert(gm, node)
            continue
        dtype = _UNDERLYING.get(obs.dtype, obs.dtype)
        if obs.dtype not in _QUANT_DTYPES and obs.dtype != torch.float16:
            node.replace_all_uses_with(node.args[0])  # float "quantization" (e.g. placeholder fp32): no-op
        else:
            with gm.graph.inserting_before(node):
                if obs.dtype == torch.float16:
                    q, dq = _float16_cast(gm, node)
                elif getattr(obs, "is_dynamic", False):
                    q, dq = _dynamic_qdq(gm, node, obs, dtype)
                else:
                    q, dq = _static_qdq(gm, node, obs, dtype)
            _port_meta(q, node)
            _port_meta(dq, node, with_val=True)
            for new in (q, dq):
                set_note(new, OBSERVER_KEY, type(obs).__name__)
            node.replace_all_uses_with(dq)
        gm.graph.erase_node(node)
    for name in {n.target for n in observer_nodes}:
        if hasattr(gm, name):
            delattr(gm, name)
    gm.recompile()
    return gm
