"""``AffineFakeQuantize``: QAT fake quantization at any affine granularity (per group, token, axis, ...).

Name, arguments and numerics follow ``torchao.quantization.pt2e.fake_quantize.AffineFakeQuantize``:
an affine observer (:mod:`pt2q.observers.affine_observer`) computes the qparams of each block and
the input is quantized and dequantized with them (gradient straight through rounding).
``convert_pt2e`` turns it into the observer's quantized form.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.fx import GraphModule, Node

from pt2q.fake_quant.base import FakeQuantizeBase
from pt2q.fake_quant.fake_quantize import FakeQuantize
from pt2q.numerics.affine_primitives import MappingType, ZeroPointDomain, fake_quantize_affine
from pt2q.numerics.granularity import PerAxis, PerGroup, PerTensor
from pt2q.observers.affine_base import AffineQuantizedObserverBase
from pt2q.observers.affine_observer import AffineQuantizedMinMaxObserver

__all__ = [
    "AffineFakeQuantize",
    "default_affine_fake_quant",
    "default_groupwise_fake_quant",
    "default_affine_per_axis_fake_quant",
]


class AffineFakeQuantize(FakeQuantize):
    """Fake-quantize with the per-block qparams of an affine observer.

    ``observer`` is an :class:`~pt2q.observers.affine_base.AffineQuantizedObserverBase`
    constructor, given ``observer_kwargs`` (``mapping_type``, ``target_dtype``,
    ``granularity``, ...). While the observer is enabled every call re-observes its input
    and refreshes ``scale`` / ``zero_point``; while fake quantization is enabled the output
    is ``fake_quantize_affine`` of the input.
    """

    activation_post_process: AffineQuantizedObserverBase
    target_dtype: torch.dtype
    zero_point_domain: Optional[ZeroPointDomain]

    scale: Tensor
    zero_point: Tensor

    def __init__(
        self,
        observer: Callable[..., nn.Module] = AffineQuantizedMinMaxObserver,
        is_dynamic: bool = False,
        **observer_kwargs: Any,
    ) -> None:
        FakeQuantizeBase.__init__(self)  # FakeQuantize's own setup expects a qscheme-based observer
        obs = observer(is_dynamic=is_dynamic, **observer_kwargs)
        if not isinstance(obs, AffineQuantizedObserverBase):
            raise TypeError(f"AffineFakeQuantize needs an affine observer, got {type(obs).__name__}")
        self.activation_post_process = obs
        self.target_dtype = obs.target_dtype
        self.quant_min = obs.quant_min  # type: ignore[assignment]  # FakeQuantize leaves these untyped
        self.quant_max = obs.quant_max  # type: ignore[assignment]
        self.zero_point_domain = obs.zero_point_domain
        self.mapping_type = obs.mapping_type
        self.granularity = obs.granularity
        self.is_dynamic = is_dynamic
        float_zp = self.zero_point_domain == ZeroPointDomain.FLOAT  # pt2q's or torchao's member
        self.register_buffer("scale", torch.tensor([1.0], dtype=torch.float))
        self.register_buffer("zero_point", torch.tensor([0], dtype=torch.float if float_zp else torch.int))
        self.block_size: Optional[tuple[int, ...]] = None

    @property
    def eps(self) -> Any:
        return self.activation_post_process.eps

    def calculate_qparams(self) -> tuple[Tensor, Optional[Tensor]]:  # type: ignore[override]
        return self.activation_post_process.calculate_qparams()

    def forward(self, x: Tensor) -> Tensor:
        if self.observer_enabled.item() == 1:
            self.activation_post_process(x.detach())
            scale, zero_point = self.calculate_qparams()
            if self.scale.shape != scale.shape:
                self.scale.data = self.scale.new_empty(scale.shape)
            self.scale.copy_(scale)
            if zero_point is not None:
                if self.zero_point.shape != zero_point.shape:
                    self.zero_point.data = self.zero_point.new_empty(zero_point.shape)
                self.zero_point.copy_(zero_point)
            self.block_size = self.activation_post_process.block_size
        if self.fake_quant_enabled.item() == 1:
            if self.block_size is None:
                raise RuntimeError(
                    f"{self.target_name or 'AffineFakeQuantize'}: fake quantization needs qparams; run a forward "
                    "pass with the observer enabled first"
                )
            zero_point = None if self.zero_point_domain == ZeroPointDomain.NONE else self.zero_point
            return fake_quantize_affine(
                x,
                self.block_size,
                self.scale,
                zero_point,
                self.target_dtype,
                self.activation_post_process.quant_min,
                self.activation_post_process.quant_max,
                self.zero_point_domain,
            )
        return x

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        self.block_size = self.activation_post_process.block_size

    def extra_repr(self) -> str:
        return (
            f"fake_quant_enabled={self.fake_quant_enabled}, observer_enabled={self.observer_enabled}, "
            f"quant_min={self.quant_min}, quant_max={self.quant_max}, target_dtype={self.target_dtype}, "
            f"granularity={self.granularity}, mapping_type={self.mapping_type}, "
            f"zero_point_domain={self.zero_point_domain}, scale={self.scale}, zero_point={self.zero_point}, "
            f"block_size={self.block_size}"
        )

    def convert(self, model: GraphModule, observer_node: Node) -> None:
        """Replace the fake quantizer's node by its observer's quantized form."""
        self.activation_post_process.convert(model, observer_node)


default_affine_fake_quant = AffineFakeQuantize.with_args(
    observer=AffineQuantizedMinMaxObserver,
    mapping_type=MappingType.ASYMMETRIC,
    target_dtype=torch.uint8,
    granularity=PerTensor(),
)
"""Per-tensor asymmetric uint8 affine fake quantization (activations)."""

default_groupwise_fake_quant = AffineFakeQuantize.with_args(
    observer=AffineQuantizedMinMaxObserver,
    mapping_type=MappingType.SYMMETRIC,
    target_dtype=torch.int8,
    granularity=PerGroup(128),
)
"""Symmetric int8 fake quantization in groups of 128 along the last dimension (weights)."""

default_affine_per_axis_fake_quant = AffineFakeQuantize.with_args(
    observer=AffineQuantizedMinMaxObserver,
    mapping_type=MappingType.SYMMETRIC,
    target_dtype=torch.int8,
    granularity=PerAxis(0),
)
"""Symmetric int8 fake quantization per index of axis 0 (per output channel of a weight)."""
