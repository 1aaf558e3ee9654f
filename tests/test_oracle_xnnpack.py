"""Oracle: pt2q and torchao + ExecuTorch's XNNPACKQuantizer give the same Q/DQ graphs and numbers."""

from __future__ import annotations

import pytest
import torch

from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config
from tests.helpers import pt2q_flow, qdq_signature, torchao_flow
from tests.zoo import ZOO, calibration_batches, make

et_xnnpack = pytest.importorskip("executorch.backends.xnnpack.quantizer.xnnpack_quantizer")

CONFIGS = {
    "per_channel": dict(is_per_channel=True),
    "per_tensor": dict(is_per_channel=False),
    "narrow_act": dict(is_per_channel=True, act_qmin=-127, act_qmax=127),
}
DYNAMIC_MODELS = ["mlp", "attention", "conv_bn_relu_stack"]


def _both(name: str, config: dict):
    model, example = make(name)
    batches = calibration_batches(example)
    ours = pt2q_flow(
        XNNPACKQuantizer().set_global(get_symmetric_quantization_config(**config)), model, example, batches
    )
    theirs = torchao_flow(
        et_xnnpack.XNNPACKQuantizer().set_global(et_xnnpack.get_symmetric_quantization_config(**config)),
        model,
        example,
        batches,
    )
    return model, example, ours, theirs


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("name", list(ZOO))
def test_static_matches_torchao(name: str, config: str) -> None:
    model, example, ours, theirs = _both(name, CONFIGS[config])
    sig = qdq_signature(ours)
    assert sum(sig.values()) > 0, "nothing was quantized"
    assert sig == qdq_signature(theirs)
    # same qparams, same folded weights, same float ops: the outputs are bit-identical
    for x in calibration_batches(example, n=2, seed=7):
        torch.testing.assert_close(ours(*x), theirs(*x), rtol=0, atol=0)


@pytest.mark.parametrize("name", DYNAMIC_MODELS)
def test_dynamic_matches_torchao(name: str) -> None:
    model, example, ours, theirs = _both(name, dict(is_per_channel=True, is_dynamic=True))
    sig = qdq_signature(ours)
    assert any("choose_qparams" in key[0] for key in sig)
    assert sig == qdq_signature(theirs)
    for x in calibration_batches(example, n=2, seed=7):
        torch.testing.assert_close(ours(*x), theirs(*x), rtol=0, atol=0)
