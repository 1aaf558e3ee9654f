"""The two PT2E flows the benchmarks compare, with the same XNNPACK per-channel config.

``pt2q``: ``pt2q.prepare_pt2e``/``convert_pt2e`` with ``pt2q.quantizers.XNNPACKQuantizer``;
``torchao``: ``torchao.quantization.pt2e`` with ExecuTorch's ``XNNPACKQuantizer``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.fx import GraphModule

__all__ = ["Flow", "xnnpack_flows", "calibration_batches", "quantize"]


class Flow(NamedTuple):
    prepare: Callable[[GraphModule, Any], GraphModule]
    convert: Callable[[GraphModule], GraphModule]
    make_quantizer: Callable[[], Any]


def xnnpack_flows() -> dict[str, Flow]:
    """``{"pt2q": Flow, "torchao": Flow}``, both symmetric int8 with per-channel weights."""
    from executorch.backends.xnnpack.quantizer import xnnpack_quantizer as et
    from torchao.quantization.pt2e import quantize_pt2e as ao

    import pt2q
    from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config

    return {
        "pt2q": Flow(
            pt2q.prepare_pt2e,
            pt2q.convert_pt2e,
            lambda: XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)),
        ),
        "torchao": Flow(
            ao.prepare_pt2e,
            ao.convert_pt2e,
            lambda: et.XNNPACKQuantizer().set_global(et.get_symmetric_quantization_config(is_per_channel=True)),
        ),
    }


def calibration_batches(
    example_inputs: Sequence[torch.Tensor], n: int = 2, seed: int = 1
) -> list[tuple[torch.Tensor, ...]]:
    """``n`` random batches shaped like ``example_inputs`` (non-float inputs are reused as they are)."""
    g = torch.Generator().manual_seed(seed)
    return [
        tuple(torch.randn(x.shape, generator=g) if x.is_floating_point() else x for x in example_inputs)
        for _ in range(n)
    ]


def quantize(flow: Flow, model: nn.Module, example: tuple, batches: list[tuple]) -> GraphModule:
    """Export a copy of ``model``, prepare it with ``flow``, calibrate on ``batches`` and convert."""
    prepared = flow.prepare(torch.export.export(copy.deepcopy(model), example).module(), flow.make_quantizer())
    with torch.no_grad():
        for batch in batches:
            prepared(*batch)
    return flow.convert(prepared)
