"""Helpers for writing a quantizer by hand (``torchao.quantization.pt2e.quantizer.utils``).

>>> import torch
>>> from pt2q.observer import MinMaxObserver
>>> from pt2q.quantizer import QuantizationSpec, annotate_input_qspec_map, annotate_output_qspec
>>> gm = torch.export.export(torch.nn.Sequential(torch.nn.ReLU()), (torch.randn(2),)).module()
>>> relu = next(n for n in gm.graph.nodes if n.op == "call_function")
>>> spec = QuantizationSpec(dtype=torch.int8, observer_or_fake_quant_ctr=MinMaxObserver)
>>> annotate_input_qspec_map(relu, relu.args[0], spec)
>>> annotate_output_qspec(relu, spec)
>>> is_valid_annotation(relu.meta["quantization_annotation"])
True

The ``get_*_qspec`` readers check what torchao checks: per-tensor activations, symmetric
weights, float bias. A config whose spec they refuse raises :class:`UnsupportedSpecError`, which
is both the ``AssertionError`` torchao's activation and bias readers raise and the ``ValueError``
its weight reader raises. ``strict=False`` (a pt2q addition) returns the spec unchecked: pt2q's own
quantizers read configs that way (:mod:`pt2q.quantizers.annotation`), so that per-token, low-bit
affine and int32 bias specs pass.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import NamedTuple, Optional

import torch
from torch.fx import Node

from pt2q.core.notes import module_paths
from pt2q.core.spec import (
    Q_ANNOTATION_KEY,
    QuantizationAnnotation,
    QuantizationConfig,
    QuantizationSpec,
    QuantizationSpecBase,
    is_valid_annotation,
)

__all__ = [
    "Q_ANNOTATION_KEY",
    "QuantizationAnnotation",
    "QuantizationConfig",
    "QuantizationSpec",
    "OperatorPatternType",
    "OperatorConfig",
    "UnsupportedSpecError",
    "get_input_act_qspec",
    "get_output_act_qspec",
    "get_weight_qspec",
    "get_bias_qspec",
    "annotate_input_qspec_map",
    "annotate_output_qspec",
    "get_module_name_filter",
    "is_valid_annotation",
]

# A pattern of operators a config applies to, e.g. [nn.Conv2d, torch.relu].
OperatorPatternType = typing.Annotated[list[Callable], None]


class OperatorConfig(NamedTuple):
    """A config and the operator patterns it applies to (what a quantizer says it supports)."""

    config: QuantizationConfig
    operators: list[OperatorPatternType]


class UnsupportedSpecError(ValueError, AssertionError):
    """A config's spec that these readers do not accept (e.g. a per-channel activation)."""


_PER_TENSOR = (torch.per_tensor_affine, torch.per_tensor_symmetric)
_SYMMETRIC_OR_NONE = (torch.per_tensor_symmetric, torch.per_channel_symmetric, None)


def _activation(spec: Optional[QuantizationSpec], what: str, strict: bool) -> Optional[QuantizationSpec]:
    if strict and spec is not None and spec.qscheme not in _PER_TENSOR:
        raise UnsupportedSpecError(f"{what} must be per tensor (affine or symmetric), got qscheme {spec.qscheme}")
    return spec


def get_input_act_qspec(
    quantization_config: Optional[QuantizationConfig], *, strict: bool = True
) -> Optional[QuantizationSpec]:
    """The config's input-activation spec (None without config); it must be per tensor unless not ``strict``."""
    if quantization_config is None:
        return None
    return _activation(quantization_config.input_activation, "the input activation spec", strict)


def get_output_act_qspec(
    quantization_config: Optional[QuantizationConfig], *, strict: bool = True
) -> Optional[QuantizationSpec]:
    """The config's output-activation spec (None without config); it must be per tensor unless not ``strict``."""
    if quantization_config is None:
        return None
    return _activation(quantization_config.output_activation, "the output activation spec", strict)


def get_weight_qspec(
    quantization_config: Optional[QuantizationConfig], *, strict: bool = True
) -> Optional[QuantizationSpec]:
    """The config's weight spec (None without config); it must be symmetric (or have no qscheme) unless not
    ``strict``."""
    if quantization_config is None or quantization_config.weight is None:
        return None
    spec = quantization_config.weight
    if strict and spec.qscheme not in _SYMMETRIC_OR_NONE:
        raise UnsupportedSpecError(f"Unsupported quantization_spec {spec} for weight: use a symmetric qscheme")
    return spec


def get_bias_qspec(
    quantization_config: Optional[QuantizationConfig], *, strict: bool = True
) -> Optional[QuantizationSpecBase]:
    """The config's bias spec (None without config); only float bias specs are supported unless not ``strict``."""
    if quantization_config is None or quantization_config.bias is None:
        return None
    spec = quantization_config.bias
    if strict and getattr(spec, "dtype", None) != torch.float:
        raise UnsupportedSpecError(f"only float dtype for bias is supported, got {getattr(spec, 'dtype', spec)}")
    return spec


def annotate_input_qspec_map(node: Node, input_node: Node, qspec: Optional[QuantizationSpecBase]) -> None:
    """Set the spec of the edge ``input_node -> node``, keeping the rest of ``node``'s annotation."""
    annotation = node.meta.get(Q_ANNOTATION_KEY) or QuantizationAnnotation()
    annotation.input_qspec_map[input_node] = qspec
    node.meta[Q_ANNOTATION_KEY] = annotation


def annotate_output_qspec(node: Node, qspec: Optional[QuantizationSpecBase]) -> None:
    """Set the spec of ``node``'s output, keeping the rest of its annotation."""
    annotation = node.meta.get(Q_ANNOTATION_KEY) or QuantizationAnnotation()
    annotation.output_qspec = qspec
    node.meta[Q_ANNOTATION_KEY] = annotation


def get_module_name_filter(module_name: str) -> Callable[[Node], bool]:
    """A filter accepting the nodes that come from submodule ``module_name`` (its fully qualified name,
    e.g. ``"blocks.sub"``) or from a module inside it."""

    def module_name_filter(n: Node) -> bool:
        return module_name in module_paths(n)

    module_name_filter.__qualname__ = f"get_module_name_filter({module_name!r})"
    return module_name_filter
