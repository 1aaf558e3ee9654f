"""The public helpers of torchao's ``pt2e.utils``: qscheme predicates, quantization ranges and parameters,
attribute plumbing for graph passes.

>>> import torch
>>> calculate_qmin_qmax(None, None, False, torch.quint8, reduce_range=True)
(0, 127)
>>> scale, zero_point = determine_qparams(torch.tensor(-1.0), torch.tensor(3.0), 0, 255, torch.quint8,
...                                       torch.tensor([1e-6]), has_customized_qrange=False)
>>> round(scale.item(), 6), zero_point.item()
(0.015686, 64)

Where torchao asserts, these raise :class:`QuantizationArgumentError`, an ``AssertionError`` (what
torchao's callers catch) that is also a ``ValueError``.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.fx import Graph, Node
from torch.nn.utils.parametrize import is_parametrized

from pt2q.core.attrs import free_attr_name
from pt2q.numerics.errors import QuantizationArgumentError
from pt2q.numerics.qparams import choose_qparams
from pt2q.numerics.qschemes import SYMMETRIC_QSCHEMES, is_per_channel, is_per_tensor
from pt2q.observers.pass_through import PlaceholderObserver

__all__ = [
    "QuantizationArgumentError",
    "is_per_tensor",
    "is_per_channel",
    "getattr_from_fqn",
    "to_underlying_dtype",
    "get_qparam_dict",
    "check_min_max_valid",
    "calculate_qmin_qmax",
    "validate_qmin_qmax",
    "determine_qparams",
    "has_no_children_ignoring_parametrizations",
    "get_fqn_to_example_inputs",
    "get_new_attr_name_with_prefix",
    "create_getattr_from_value",
]


def getattr_from_fqn(obj: Any, fqn: str) -> Any:
    """``obj.foo.bar.baz`` for ``fqn="foo.bar.baz"``."""
    return functools.reduce(getattr, fqn.split("."), obj)


_UNDERLYING_DTYPE = {
    torch.quint8: torch.uint8,
    torch.qint8: torch.int8,
    torch.qint32: torch.int32,
    torch.quint4x2: torch.uint8,
    torch.quint2x4: torch.uint8,
    torch.uint8: torch.uint8,
    torch.int8: torch.int8,
    torch.uint16: torch.uint16,
    torch.int16: torch.int16,
    torch.int32: torch.int32,
    torch.float8_e5m2: torch.float8_e5m2,
    torch.float8_e4m3fn: torch.float8_e4m3fn,
}


def to_underlying_dtype(qdtype: torch.dtype) -> torch.dtype:
    """The plain dtype a quantized dtype is stored in (``torch.quint8`` -> ``torch.uint8``)."""
    if qdtype not in _UNDERLYING_DTYPE:
        raise QuantizationArgumentError(f"Unsupported dtype: {qdtype}")
    return _UNDERLYING_DTYPE[qdtype]


def get_qparam_dict(observer_or_fake_quant: nn.Module) -> dict[str, Any]:
    """qscheme, dtype, scale, zero point (and axis, quant_min/max) of an observer or fake quantizer, with
    symmetric qschemes reported as affine ones (as quantized tensors know them)."""
    qscheme = getattr(observer_or_fake_quant, "qscheme", None)
    dtype = observer_or_fake_quant.dtype
    if not qscheme or isinstance(observer_or_fake_quant, PlaceholderObserver):
        return {"qscheme": None, "dtype": dtype}
    qparams: dict[str, Any] = {"qscheme": qscheme, "dtype": dtype}
    if is_per_tensor(qscheme):
        qparams["qscheme"] = torch.per_tensor_affine
    elif is_per_channel(qscheme):
        qparams["qscheme"] = torch.per_channel_affine if qscheme == torch.per_channel_symmetric else qscheme
        qparams["axis"] = observer_or_fake_quant.ch_axis
    else:
        raise RuntimeError(f"Unrecognized qscheme: {qscheme}")
    qparams["scale"], qparams["zero_point"] = observer_or_fake_quant.calculate_qparams()  # type: ignore[operator]
    for name in ("quant_min", "quant_max"):
        if hasattr(observer_or_fake_quant, name):
            qparams[name] = getattr(observer_or_fake_quant, name)
    return qparams


def check_min_max_valid(min_val: Tensor, max_val: Tensor) -> bool:
    """False (with a warning) while nothing was observed; raises if ``min_val > max_val``."""
    unobserved = min_val.numel() == 0 or max_val.numel() == 0
    if not unobserved and (min_val.dim() == 0 or max_val.dim() == 0):
        unobserved = bool(min_val == float("inf") and max_val == float("-inf"))
    if unobserved:
        warnings.warn("must run observer before calling calculate_qparams. Returning default values.", stacklevel=2)
        return False
    if not bool(torch.all(min_val <= max_val)):
        raise QuantizationArgumentError(f"min {min_val} should be less than max {max_val}")
    return True


_DEFAULT_QRANGE = {  # dtype -> (full range, reduced range)
    torch.qint8: ((-128, 127), (-64, 63)),
    torch.int8: ((-128, 127), (-64, 63)),
    torch.quint8: ((0, 255), (0, 127)),
    torch.uint8: ((0, 255), (0, 127)),
    torch.qint32: ((-(2**31), 2**31 - 1),) * 2,
    torch.int32: ((-(2**31), 2**31 - 1),) * 2,
    torch.uint16: ((0, 2**16 - 1),) * 2,
    torch.int16: ((-(2**15), 2**15 - 1),) * 2,
}


def calculate_qmin_qmax(
    quant_min: Optional[int],
    quant_max: Optional[int],
    has_customized_qrange: bool,
    dtype: torch.dtype,
    reduce_range: bool,
) -> tuple[Any, Any]:
    """The (qmin, qmax) an observer uses: the custom range (halved with ``reduce_range``), else the
    dtype's range (reduced with ``reduce_range`` for 8-bit dtypes; 4-bit ``(0, 15)`` for others)."""
    if not has_customized_qrange:
        full, reduced = _DEFAULT_QRANGE.get(dtype, ((0, 15), (0, 15)))
        return reduced if reduce_range else full
    if quant_min is not None and quant_max is not None:
        length = quant_max - quant_min + 1
        if dtype in (torch.qint8, torch.int8) and not 0 < length <= 256:
            raise QuantizationArgumentError(
                "quantization range should be positive and not exceed the maximum bit range (=256)."
            )
        if dtype in (torch.qint32, torch.int32) and not 0 < length <= 2**32:
            raise QuantizationArgumentError(
                "quantization range should be positive and not exceed the maximum bit range (=4294967296)."
            )
    if reduce_range:
        if quant_min is None or quant_max is None:
            raise QuantizationArgumentError("reduce_range with a customized range needs both quant_min and quant_max")
        return quant_min // 2, quant_max // 2
    return quant_min, quant_max


def validate_qmin_qmax(quant_min: int, quant_max: int) -> None:
    """A user-specified range must include 0 and have ``quant_min < quant_max``."""
    if not quant_min <= 0 <= quant_max:
        raise QuantizationArgumentError(
            f"the user-specified quantization range [{quant_min}, {quant_max}] must include 0"
        )
    if not quant_min < quant_max:
        raise QuantizationArgumentError(
            f"quant_min must be strictly less than quant_max, got [{quant_min}, {quant_max}]"
        )


def determine_qparams(
    min_val: Tensor,
    max_val: Tensor,
    quant_min: int,
    quant_max: int,
    dtype: torch.dtype,
    eps: Tensor,
    has_customized_qrange: bool,
    qscheme: torch.qscheme = torch.per_tensor_affine,
) -> tuple[Tensor, Tensor]:
    """Scale (float64) and zero point (int64) covering ``[min_val, max_val]`` (per tensor, or per channel
    when they are 1-d); ``(1.0, 0)`` while nothing was observed."""
    if not check_min_max_valid(min_val, max_val):
        device = min_val.device.type
        return torch.tensor([1.0], device=device), torch.tensor([0], device=device)
    symmetric = qscheme in SYMMETRIC_QSCHEMES
    scale, zero_point = choose_qparams(
        min_val,
        max_val,
        quant_min,
        quant_max,
        symmetric,
        eps.to(min_val.device),
        dtype,
        float_qparams=qscheme == torch.per_channel_affine_float_qparams,
        has_customized_qrange=has_customized_qrange,
    )
    if symmetric and dtype not in (torch.uint8, torch.quint8):
        zero_point = torch.zeros_like(zero_point)  # torchao's helper centres only 8-bit unsigned ranges
    return scale.to(torch.double), zero_point.to(torch.int64)


def has_no_children_ignoring_parametrizations(module: nn.Module) -> bool:
    """True if ``module`` has no submodules, a parametrization container aside."""
    if not module._modules:
        return True
    return is_parametrized(module) and list(module._modules) == ["parametrizations"]


def _positional_example(forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple:
    """``args`` followed by the values of ``forward``'s later positional parameters that have a default
    (given as keywords, else the default): the call as one positional tuple."""
    params = [
        p
        for p in inspect.signature(forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    rest = [kwargs.get(p.name, p.default) for p in params[len(args) :] if p.default is not inspect.Parameter.empty]
    return (*args, *rest)


def get_fqn_to_example_inputs(model: nn.Module, example_inputs: tuple[Any, ...]) -> dict[str, tuple[Any, ...]]:
    """Run ``model(*example_inputs)`` and record, for each submodule called, the inputs it got as one
    positional tuple, by qualified name (``""`` for ``model`` itself).

    Keyword arguments and defaults are flattened in signature order: ``sub(x, key2=6)`` with
    ``forward(self, x, key1=3, key2=3)`` records ``(x, 3, 6)``, as torchao documents (torchao itself
    records ``(x,)`` there, dropping keywords when fewer positionals were given). Keyword-only
    parameters cannot be passed positionally and are left out; a submodule called twice keeps its last call.
    """
    found: dict[str, tuple[Any, ...]] = {}
    handles = []

    def recorder(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            found[name] = _positional_example(module.forward, args, kwargs)

        return hook

    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(recorder(name), with_kwargs=True))
    try:
        model(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return found


def get_new_attr_name_with_prefix(prefix: str) -> Callable[[nn.Module], str]:
    """A function giving, for a module, the first free attribute name ``{prefix}{i}`` (dots become ``_``)."""
    prefix = prefix.replace(".", "_")

    def get_new_attr_name(module: nn.Module) -> str:
        return free_attr_name(module, prefix)

    return get_new_attr_name


def _unique_device(module: nn.Module) -> Optional[torch.device]:
    devices = {t.device for t in [*module.parameters(), *module.buffers()]}
    if len(devices) > 1:
        raise QuantizationArgumentError(f"prepare only works with cpu or single-device modules, got devices {devices}")
    return next(iter(devices), None)


def create_getattr_from_value(
    module: nn.Module, graph: Graph, prefix: str, value: Any, device: Optional[torch.device] = None
) -> Node:
    """Register ``value`` (a tensor, copied, or a Python value made one) as a new buffer of ``module`` and
    return a ``get_attr`` node for it in ``graph``."""
    name = get_new_attr_name_with_prefix(prefix)(module)
    if device is None:
        device = _unique_device(module)
    tensor = value.detach().clone() if isinstance(value, Tensor) else torch.tensor(value, device=device)
    module.register_buffer(name, tensor)
    return graph.create_node("get_attr", name)
