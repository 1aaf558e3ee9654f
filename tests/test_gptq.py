"""GPTQ in the PT2E flow: what it changes in a prepared model, that convert stores exactly its choice,
and that it beats round-to-nearest on the objective it optimises. (Perplexity on real text: the
llm_8da4w tutorial test and benchmarks/decoder_lm.py.)"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import pt2q
from pt2q.numerics.affine_ops import affine_ops
from pt2q.observers.affine_observer import AffineQuantizedFixedQParamsObserver
from pt2q.quantizers import (
    XNNPACKQuantizer,
    get_8da4w_quantization_config,
    get_symmetric_quantization_config,
)
from tests.helpers import export_module


class Correlated(nn.Module):
    """Inputs with strongly correlated features (a low-rank mix), as real activations have."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(16, 64, bias=False)
        self.fc1, self.fc2 = nn.Linear(64, 128), nn.Linear(128, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.nn.functional.gelu(self.fc1(self.mix(x))))


def _setup(group_size=32):
    torch.manual_seed(0)
    model = Correlated().eval()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 16, generator=g),) for _ in range(8)]
    quantizer = XNNPACKQuantizer().set_module_name("mix", None).set_global(get_8da4w_quantization_config(group_size))
    return model, batches, pt2q.prepare_pt2e(export_module(model, batches[0]), quantizer)


@pytest.mark.parametrize("group_size", [32, None])
def test_gptq_beats_rtn_and_convert_stores_exactly_its_codes(group_size) -> None:
    model, batches, prepared = _setup(group_size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    results = pt2q.gptq_quantize(prepared, batches)
    assert [r.weight for r in results] == ["fc1.weight", "fc2.weight"]
    for r in results:
        assert r.gptq_error < 0.8 * r.rtn_error, r
    observers = [m for m in prepared.modules() if isinstance(m, AffineQuantizedFixedQParamsObserver)]
    assert len(observers) == 2
    chosen = {name: prepared.get_parameter(name).detach().clone() for name in ("fc1.weight", "fc2.weight")}
    quantized = pt2q.convert_pt2e(prepared)
    # each linear's weight, dequantized from the stored int codes, is exactly what GPTQ chose
    ops = affine_ops()
    dequantized = []
    for node in quantized.graph.nodes:
        if node.target is ops.dequantize_affine and node.args[0].op == "get_attr":
            args = [quantized.get_buffer(a.target) if isinstance(a, torch.fx.Node) else a for a in node.args]
            dequantized.append(node.target(*args, **node.kwargs))
    assert len(dequantized) == 2
    for value, name in zip(dequantized, ("fc1.weight", "fc2.weight")):
        assert torch.equal(value, chosen[name])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the float model is untouched


def test_sequential_gptq_sees_the_quantized_inputs_of_earlier_layers() -> None:
    _, batches, sequential = _setup()
    _, _, at_once = _setup()
    a = pt2q.gptq_quantize(sequential, batches)
    b = pt2q.gptq_quantize(at_once, batches, sequential=False)
    assert a[0].gptq_error == b[0].gptq_error  # fc1's inputs are the same either way
    assert a[1].rtn_error != b[1].rtn_error  # fc2's Hessian comes from fc1's quantized outputs


def test_gptq_needs_affine_weight_observers_and_data() -> None:
    model, batches, prepared = _setup()
    with pytest.raises(ValueError, match="at least one calibration batch"):
        pt2q.gptq_quantize(prepared, [])
    int8 = pt2q.prepare_pt2e(
        export_module(model, batches[0]),
        XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)),
    )
    with pytest.raises(ValueError, match="no linear has a static affine weight observer"):
        pt2q.gptq_quantize(int8, batches)
    with pytest.raises(TypeError, match="GraphModule"):
        pt2q.gptq_quantize(copy.deepcopy(model), batches)
