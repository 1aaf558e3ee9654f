"""Quantization specs: what a backend says about one tensor.

A ``Quantizer`` writes these on ``node.meta["quantization_annotation"]``;
``prepare_pt2e`` turns them into observers or fake quantizers.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torch.fx import Node

from pt2q.numerics.dtypes import dtype_range
from pt2q.numerics.qschemes import is_per_channel

__all__ = [
    "Q_ANNOTATION_KEY",
    "EdgeOrNode",
    "InvalidSpecError",
    "QuantizationSpecBase",
    "QuantizationSpec",
    "FixedQParamsQuantizationSpec",
    "SharedQuantizationSpec",
    "DerivedQuantizationSpec",
    "QuantizationAnnotation",
    "QuantizationConfig",
    "is_valid_annotation",
    "dtype_range",
    "is_per_channel",
    "describe",
]

Q_ANNOTATION_KEY = "quantization_annotation"

# An input edge (producer, consumer) or a node (meaning the node's output).
EdgeOrNode = Union[tuple[Node, Node], Node]


def describe(member: EdgeOrNode) -> str:
    """A human name for an edge or a node output, for error messages."""
    if isinstance(member, tuple):
        return f"input '{member[0].name}' of node '{member[1].name}'"
    return f"output of node '{member.name}'"


class QuantizationSpecBase(ABC):  # noqa: B024
    """Base of all specs; a spec describes how one tensor (edge or node output) is quantized."""


class InvalidSpecError(ValueError, TypeError):
    """A spec argument of the wrong kind (e.g. a non-integer ``ch_axis``); also a ``TypeError``."""


def _check_range(spec: Any) -> None:
    if spec.quant_min is not None and spec.quant_max is not None and spec.quant_min > spec.quant_max:
        raise ValueError(f"quant_min ({spec.quant_min}) must be <= quant_max ({spec.quant_max})")
    ch_axis = getattr(spec, "ch_axis", None)
    if ch_axis is not None and not isinstance(ch_axis, int):
        raise InvalidSpecError(f"ch_axis must be an int, got {ch_axis!r}")


@dataclass(eq=True, frozen=True)
class QuantizationSpec(QuantizationSpecBase):
    """Quantize a tensor with qparams computed by ``observer_or_fake_quant_ctr``.

    ``ch_axis`` is the channel axis for per-channel ``qscheme``s; ``is_dynamic``
    means qparams are chosen at run time from the tensor itself.
    """

    dtype: torch.dtype
    observer_or_fake_quant_ctr: Callable[..., torch.nn.Module]
    quant_min: Optional[int] = None
    quant_max: Optional[int] = None
    qscheme: Optional[torch.qscheme] = None
    ch_axis: Optional[int] = None
    is_dynamic: bool = False

    def __post_init__(self) -> None:
        _check_range(self)


@dataclass(eq=True, frozen=True)
class FixedQParamsQuantizationSpec(QuantizationSpecBase):
    """Quantize with a scale and zero point known ahead of time (e.g. sigmoid's output)."""

    dtype: torch.dtype
    scale: float
    zero_point: int
    quant_min: Optional[int] = None
    quant_max: Optional[int] = None
    qscheme: Optional[torch.qscheme] = None
    is_dynamic: bool = False

    def __post_init__(self) -> None:
        _check_range(self)
        if not self.scale > 0:
            raise ValueError(f"FixedQParamsQuantizationSpec needs scale > 0, got {self.scale}")


@dataclass(eq=True, frozen=True)
class SharedQuantizationSpec(QuantizationSpecBase):
    """Use the same observer (and so the same qparams) as another edge or node output."""

    edge_or_node: EdgeOrNode


@dataclass(eq=True, frozen=True)
class DerivedQuantizationSpec(QuantizationSpecBase):
    """Qparams computed from the observers of other edges/nodes (e.g. bias = act_scale * w_scale)."""

    derived_from: list[EdgeOrNode]
    derive_qparams_fn: Callable[[list[torch.nn.Module]], tuple[Tensor, Tensor]]
    dtype: torch.dtype
    quant_min: Optional[int] = None
    quant_max: Optional[int] = None
    qscheme: Optional[torch.qscheme] = None
    ch_axis: Optional[int] = None
    is_dynamic: bool = False

    def __hash__(self) -> int:  # derived_from is a list
        return hash((tuple(self.derived_from), self.derive_qparams_fn, self.dtype, self.qscheme, self.ch_axis))


@dataclass
class QuantizationAnnotation:
    """How the inputs and the output of one node are quantized.

    ``input_qspec_map`` maps an input node of the annotated node to its spec;
    ``output_qspec`` describes the node's output. With ``allow_implicit_sharing``
    an input edge whose spec matches its producer's output spec shares its observer.
    ``_annotated`` marks nodes already claimed by a pattern.
    """

    input_qspec_map: dict[Node, Optional[QuantizationSpecBase]] = field(default_factory=dict)
    output_qspec: Optional[QuantizationSpecBase] = None
    allow_implicit_sharing: bool = True
    _annotated: bool = False


@dataclass(eq=True, frozen=True)
class QuantizationConfig:
    """The specs a quantizer applies to one operator pattern."""

    input_activation: Optional[QuantizationSpec]
    output_activation: Optional[QuantizationSpec]
    weight: Optional[QuantizationSpec]
    bias: Optional[QuantizationSpecBase]
    # QAT: observers are replaced by fake quantizers and conv+bn is kept for training
    is_qat: bool = False


def is_valid_annotation(annotation: Optional[QuantizationAnnotation]) -> bool:
    """True if ``annotation`` quantizes something: an input edge or the output (not just a claim)."""
    if annotation is None:
        return False
    return bool(annotation.input_qspec_map) or annotation.output_qspec is not None
