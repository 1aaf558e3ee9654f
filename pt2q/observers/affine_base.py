"""The base of the observers for affine quantization at any granularity (per tensor, axis, group, row,
token, block); the observers themselves are in :mod:`pt2q.observers.affine_observer`.

Names, arguments and qparams follow ``torchao.quantization.pt2e._affine_quantization``;
``convert_pt2e`` asks each of these observers to write its own quantized form
(:meth:`AffineQuantizedObserverBase.convert`): ``torch.ops.torchao.quantize_affine ->
dequantize_affine`` with its qparams, or ``choose_qparams_affine`` first when the qparams
are chosen at run time (``is_dynamic``) -- the ops ExecuTorch's XNNPACK delegate runs as
dynamically quantized, blockwise low-bit linears.

Where pt2q differs, on purpose: the statistics and the block size are part of
``state_dict()`` (a prepared model checkpoints and reloads), an observer that never saw
data says so by name, arguments no observer takes are an error, and the quantize op gets
resolved ``quant_min``/``quant_max`` (the delegate reads them from the graph). Arguments torchao
takes and ignores (``block_size``; ``is_dynamic=True`` on an observer that cannot choose qparams at
run time) are ignored as there, with an :class:`~pt2q.core.drop_in_warnings.IgnoredArgumentWarning`
where they would have changed the result. The caller's granularity, ``MappingType`` and
``ZeroPointDomain`` objects are kept as given (torchao's too); pt2q reads them by kind and name.
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from enum import Enum
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.fx import GraphModule, Node

from pt2q.core.attrs import set_new_attr
from pt2q.core.drop_in_warnings import IgnoredArgumentWarning, warn_drop_in
from pt2q.core.notes import OBSERVER_KEY, copy_provenance, set_note
from pt2q.numerics.affine_ops import affine_ops
from pt2q.numerics.affine_primitives import MappingType, ZeroPointDomain, get_and_check_qmin_qmax
from pt2q.numerics.granularity import Granularity, as_granularity, get_block_size
from pt2q.observers import constructor

__all__ = ["AffineQuantizedObserverBase"]


def _check_member(observer: str, argument: str, value: object, kind: type[Enum]) -> None:
    """TypeError unless ``value`` is a member of ``kind`` or of torchao's enum of that name (equal by name)."""
    if value not in list(kind):
        raise TypeError(f"{observer}: {argument} must be a {kind.__name__} (pt2q's or torchao's), got {value!r}")


# Arguments a QuantizationSpec hands every observer it builds; affine observers take their
# dtype and granularity from their own arguments instead.
_SPEC_ARGUMENTS = frozenset({"dtype", "qscheme", "ch_axis", "reduce_range"})


class AffineQuantizedObserverBase(ABC, nn.Module):
    """Observer of affine quantization parameters for blocks of a tensor.

    ``granularity`` (``PerTensor()``, ``PerAxis(0)``, ``PerGroup(32)``, ``PerToken()``, ...)
    fixes which elements share qparams; the block size is derived from the first observed
    tensor. ``mapping_type``, ``target_dtype``, ``quant_min``/``quant_max`` (default: the
    dtype's range), ``eps``, ``scale_dtype``, ``zero_point_dtype``, ``preserve_zero`` and
    ``zero_point_domain`` have the meaning of
    :func:`pt2q.numerics.affine_primitives.choose_qparams_affine_with_min_max`.
    """

    with_args = classmethod(constructor.with_args)
    is_dynamic: bool = False

    def __init__(
        self,
        mapping_type: MappingType,
        target_dtype: torch.dtype,
        granularity: Granularity,
        quant_min: Optional[int] = None,
        quant_max: Optional[int] = None,
        eps: Optional[float] = None,
        scale_dtype: Optional[torch.dtype] = None,
        zero_point_dtype: Optional[torch.dtype] = None,
        preserve_zero: bool = True,
        zero_point_domain: Optional[ZeroPointDomain] = ZeroPointDomain.INT,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self._check_extra_arguments(kwargs)
        try:
            as_granularity(granularity)  # torchao's granularity objects too
        except TypeError as e:
            raise TypeError(f"{name}: {e}") from None
        _check_member(name, "mapping_type", mapping_type, MappingType)
        if zero_point_domain is not None:
            _check_member(name, "zero_point_domain", zero_point_domain, ZeroPointDomain)
        get_and_check_qmin_qmax(target_dtype, quant_min, quant_max)  # fails early on an impossible range
        # the caller's objects (torchao's granularity or enums too), as torchao keeps them
        self.mapping_type = mapping_type
        self.target_dtype = target_dtype
        self.granularity = granularity
        self.quant_min = quant_min
        self.quant_max = quant_max
        self.eps = eps
        self.scale_dtype = scale_dtype
        self.zero_point_dtype = zero_point_dtype
        self.preserve_zero = preserve_zero
        self.zero_point_domain = zero_point_domain
        self.block_size: Optional[tuple[int, ...]] = None  # set by forward
        self.original_dtype: Optional[torch.dtype] = None
        self.target_name = ""  # what is observed, set by prepare (for error messages)
        declared = kwargs.get("block_size")
        self._declared_block_size = None if declared is None else tuple(declared)

    def _check_extra_arguments(self, kwargs: dict[str, Any]) -> None:
        """Arguments beyond the observer's own: what a spec hands every observer, and torchao's ignored
        ``is_dynamic`` / ``block_size``; anything else is a TypeError (a misspelt argument)."""
        name = type(self).__name__
        unknown = set(kwargs) - _SPEC_ARGUMENTS - {"is_dynamic", "block_size"}
        if unknown:
            raise TypeError(f"{name} got unexpected arguments {sorted(unknown)}")
        if kwargs.get("is_dynamic") and not type(self).is_dynamic_capable():
            warn_drop_in(
                IgnoredArgumentWarning,
                f"{name} cannot choose qparams at run time: is_dynamic=True is ignored, as in torchao, and its "
                "qparams are the static ones of the data it observes; for dynamic quantization use "
                "AffineQuantizedPlaceholderObserver",
            )

    @classmethod
    def is_dynamic_capable(cls) -> bool:
        return False

    @abstractmethod
    def forward(self, input: Tensor) -> Tensor: ...

    @abstractmethod
    def calculate_qparams(self) -> tuple[Tensor, Optional[Tensor]]: ...

    @property
    def has_statistics(self) -> bool:
        """Whether ``convert`` has what it needs (the observer saw a tensor)."""
        return self.block_size is not None

    def _where(self) -> str:
        return self.target_name or type(self).__name__

    def _record_block(self, x: Tensor) -> None:
        block_size = get_block_size(x.shape, self.granularity)
        declared = getattr(self, "_declared_block_size", None)  # observers pickled before it existed lack it
        if declared is not None and block_size != declared:
            warn_drop_in(
                IgnoredArgumentWarning,
                f"{self._where()}: block_size={declared} is ignored, as in torchao: the "
                f"granularity {self.granularity} gives blocks {block_size} for a tensor of shape {tuple(x.shape)}",
            )
            self._declared_block_size = None  # once
        if self.block_size is not None and block_size != self.block_size and not self.is_dynamic:
            raise ValueError(
                f"{self._where()}: observed a tensor of shape {tuple(x.shape)} (blocks {block_size}) after tensors "
                f"with blocks {self.block_size}; static affine qparams need tensors of one block structure"
            )
        self.block_size = block_size
        self.original_dtype = x.dtype

    def _qrange(self) -> tuple[int, int]:
        return get_and_check_qmin_qmax(self.target_dtype, self.quant_min, self.quant_max)

    # ``block_size`` and ``original_dtype`` travel with state_dict(), so a reloaded
    # checkpoint converts without seeing data again.
    def get_extra_state(self) -> dict[str, Any]:
        return {"block_size": self.block_size, "original_dtype": self.original_dtype}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.block_size = None if state.get("block_size") is None else tuple(state["block_size"])
        self.original_dtype = state.get("original_dtype")

    def extra_repr(self) -> str:
        return (
            f"mapping_type={self.mapping_type.name}, target_dtype={self.target_dtype}, granularity={self.granularity}, "
            f"quant_min={self.quant_min}, quant_max={self.quant_max}, block_size={self.block_size}"
        )

    # --- convert ---------------------------------------------------------------------

    def convert(self, model: GraphModule, observer_node: Node) -> None:
        """Replace ``observer_node`` by ``quantize_affine -> dequantize_affine`` (with
        ``choose_qparams_affine`` first when dynamic) and erase it."""
        if self.block_size is None or self.original_dtype is None:
            raise RuntimeError(f"{self._where()}: the observer never saw data; calibrate before convert_pt2e")
        ops = affine_ops()
        graph = model.graph
        x = observer_node.args[0]
        qmin, qmax = self._qrange()
        block_size = list(self.block_size)
        new: list[Node] = []
        with graph.inserting_before(observer_node):
            if self.is_dynamic:
                choose = graph.call_function(
                    ops.choose_qparams_affine,  # the packets, as torchao inserts them
                    (
                        x,
                        self.mapping_type.name,
                        block_size,
                        self.target_dtype,
                        qmin,
                        qmax,
                        self.eps,
                        self.scale_dtype,
                        self.zero_point_dtype,
                    ),
                )
                scale_node = graph.call_function(operator.getitem, (choose, 0))
                zp_node = graph.call_function(operator.getitem, (choose, 1))
                new += [choose, scale_node, zp_node]
                scale: Optional[Node] = scale_node
                zero_point: Optional[Node] = zp_node
            else:
                scale_value, zp_value = self.calculate_qparams()
                scale = graph.get_attr(set_new_attr(model, "_scale_", scale_value.detach().clone()))
                zero_point = (
                    None
                    if zp_value is None
                    else graph.get_attr(set_new_attr(model, "_zero_point_", zp_value.detach().clone()))
                )
            qparams = (block_size, scale, zero_point, self.target_dtype, qmin, qmax)
            q = graph.call_function(ops.quantize_affine, (x, *qparams))
            dq = graph.call_function(ops.dequantize_affine, (q, *qparams), {"output_dtype": self.original_dtype})
        for node in (*new, q, dq):
            copy_provenance(node, observer_node)
            set_note(node, OBSERVER_KEY, type(self).__name__)
        if "val" in observer_node.meta:
            dq.meta["val"] = observer_node.meta["val"]
        observer_node.replace_all_uses_with(dq)
        graph.erase_node(observer_node)
