"""Activation calibration options on top of a backend config: percentile clipping, per-channel scales.

    config = with_activation_observer(get_symmetric_quantization_config(is_per_channel=True),
                                      PercentileObserver.with_args(percentile=99.99))

* Any observer (``PercentileObserver``, ``MSEObserver``, ``HistogramObserver``, ...) for the static
  activation specs of a config; weights, dynamic activations and QAT fake quantizers are kept.
* ``per_channel_axis``: activations quantized with one scale per channel along that axis. Only
  a backend with per-channel activation kernels can run that: XNNPACK's and oneDNN's int8
  kernels take one scale per activation tensor, so ``XNNPACKQuantizer`` and
  ``X86InductorQuantizer`` reject such a config at prepare (:func:`check_per_tensor_activations`,
  naming the node); for them, ``pt2q.smooth_quant`` moves per-channel activation ranges into
  the weights instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Optional

import torch
from torch.fx import GraphModule

from pt2q.core.spec import Q_ANNOTATION_KEY, QuantizationConfig, QuantizationSpec, describe, is_per_channel

__all__ = ["with_activation_observer", "check_per_tensor_activations"]


def _activation_spec(spec: Any, observer: Callable[..., torch.nn.Module], axis: Optional[int]) -> Any:
    if not isinstance(spec, QuantizationSpec) or spec.is_dynamic:
        return spec
    changes: dict[str, Any] = {"observer_or_fake_quant_ctr": observer}
    if axis is not None:
        symmetric = spec.qscheme in (torch.per_tensor_symmetric, torch.per_channel_symmetric)
        changes.update(qscheme=torch.per_channel_symmetric if symmetric else torch.per_channel_affine, ch_axis=axis)
    return dataclasses.replace(spec, **changes)


def with_activation_observer(
    config: QuantizationConfig, observer: Callable[..., torch.nn.Module], per_channel_axis: Optional[int] = None
) -> QuantizationConfig:
    """``config`` with ``observer`` calibrating its static input/output activations (per channel
    along ``per_channel_axis`` if given)."""
    if config.is_qat:
        raise ValueError("with_activation_observer: a QAT config fake-quantizes activations; set its observer there")
    return dataclasses.replace(
        config,
        input_activation=_activation_spec(config.input_activation, observer, per_channel_axis),
        output_activation=_activation_spec(config.output_activation, observer, per_channel_axis),
    )


def check_per_tensor_activations(model: GraphModule, backend: str) -> None:
    """Raise, naming the tensor, if an activation (not a stored weight) is annotated per channel."""
    for node in model.graph.nodes:
        ann = node.meta.get(Q_ANNOTATION_KEY)
        if ann is None:
            continue
        members = [((arg, node), spec) for arg, spec in ann.input_qspec_map.items() if arg.op != "get_attr"]
        members.append((node, ann.output_qspec))
        for member, spec in members:
            if isinstance(spec, QuantizationSpec) and is_per_channel(spec.qscheme):
                raise ValueError(
                    f"{backend} runs int8 activations with one scale per tensor, but the {describe(member)} "
                    "is annotated per channel. Drop per_channel_axis from with_activation_observer, or "
                    "move per-channel activation ranges into the weights with pt2q.smooth_quant."
                )
