"""with_activation_observer: percentile activations through the XNNPACK flow; per-channel activations refused."""

from __future__ import annotations

import pytest
import torch

import pt2q
from pt2q.core.notes import OBSERVER_KEY, note
from pt2q.core.ops import Q_PER_TENSOR
from pt2q.observers.range_estimators import PercentileObserver
from pt2q.quantizers import (
    X86InductorQuantizer,
    XNNPACKQuantizer,
    get_default_x86_inductor_quantization_config,
    get_symmetric_quantization_config,
    with_activation_observer,
)
from tests.transformer_zoo import TinyBert, token_batches


def test_percentile_activations_in_the_xnnpack_flow() -> None:
    base = get_symmetric_quantization_config(is_per_channel=True)
    config = with_activation_observer(base, PercentileObserver.with_args(percentile=99.9))
    assert config.weight is base.weight and config.input_activation.qscheme == torch.per_tensor_affine
    model, batches = TinyBert(layers=1).eval(), token_batches(2)
    result = pt2q.quantize(model, batches[0], XNNPACKQuantizer().set_global(config), batches, progress=False)
    observers = {note(n, OBSERVER_KEY).split("(")[0] for n in result.model.graph.nodes if n.target in Q_PER_TENSOR}
    assert observers == {"PercentileObserver"}
    assert result.metric > 20  # output SQNR in dB
    with pytest.raises(ValueError, match="QAT config"):
        with_activation_observer(get_symmetric_quantization_config(is_qat=True), PercentileObserver)


@pytest.mark.parametrize("backend", ["XNNPACK", "x86"])
def test_per_channel_activations_are_refused_by_per_tensor_backends(backend: str) -> None:
    if backend == "XNNPACK":
        base = get_symmetric_quantization_config(is_per_channel=True)
        quantizer = XNNPACKQuantizer()
    else:
        base = get_default_x86_inductor_quantization_config()
        quantizer = X86InductorQuantizer()
    config = with_activation_observer(base, PercentileObserver, per_channel_axis=-1)
    assert config.input_activation.qscheme == torch.per_channel_affine and config.input_activation.ch_axis == -1
    model, batches = TinyBert(layers=1).eval(), token_batches(1)
    gm = torch.export.export(model, batches[0]).module()
    with pytest.raises(ValueError, match=r"one scale per tensor, but the input '\w+' of node '\w+' is annotated"):
        pt2q.prepare_pt2e(gm, quantizer.set_global(config))
