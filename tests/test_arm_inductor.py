"""ArmInductorQuantizer against torchao's (the oracle): annotations on its recipes, and one converted model.

The lowering needs aarch64; these tests run the annotation and the Q/DQ flow, which are the same on x86.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pt2q.quantizers import ArmInductorQuantizer, get_default_arm_inductor_quantization_config
from tests.helpers import annotation_summary, export_module, pt2q_flow, qdq_signature, torchao_flow

aiq = pytest.importorskip("torchao.quantization.pt2e.quantizer.arm_inductor_quantizer")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Recipes(nn.Module):
    """Every arm pattern, and ops the arm recipe leaves float (relu after conv, pooling, mul)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.relu = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.c2, self.c3 = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.pool = nn.MaxPool2d(2)
        self.fc1, self.gelu = nn.Linear(128, 32), nn.GELU()
        self.fc2, self.fc3 = nn.Linear(32, 32), nn.Linear(32, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        y = self.relu(self.c1(x))  # conv (+ relu kept float)
        y = self.c2(y) + y  # conv + add: both operands int8
        y = self.relu(self.c3(y) + y)  # conv + add, relu float
        y = self.pool(y).flatten(1)
        z = self.gelu(self.fc1(y))  # linear + gelu
        z = torch.relu(self.fc2(z))  # linear + relu
        z = self.fc3(z) + z  # linear; the add stays float
        return self.head(z * z) @ torch.ones(4, 4)  # matmul: only when asked for


class QATRecipes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2, self.relu = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU()

    def forward(self, x):
        y = self.b1(self.c1(x))  # conv + bn
        return self.relu(self.b2(self.c2(y)) + y)  # conv + bn + add (relu float)


SETUPS = {
    "global": lambda q, c: q.set_global(c),
    "matmul opt-in": lambda q, c: q.set_global(c).set_function_type_qconfig(torch.matmul, c),
    "fc2 float": lambda q, c: q.set_global(c).set_module_name_qconfig("fc2", None),
    "linears only": lambda q, c: q.set_module_type_qconfig(nn.Linear, c),
}


@pytest.mark.parametrize("setup", list(SETUPS))
@pytest.mark.parametrize("is_dynamic", [False, True])
def test_annotations_match_torchao(setup: str, is_dynamic: bool) -> None:
    torch.manual_seed(0)
    model, example = Recipes().eval(), (torch.randn(1, 3, 8, 8),)
    ours = SETUPS[setup](ArmInductorQuantizer(), get_default_arm_inductor_quantization_config(is_dynamic=is_dynamic))
    theirs = SETUPS[setup](
        aiq.ArmInductorQuantizer(), aiq.get_default_arm_inductor_quantization_config(is_dynamic=is_dynamic)
    )
    summary = annotation_summary(ours.annotate(export_module(model, example)))
    assert summary == annotation_summary(theirs.annotate(export_module(model, example)))
    assert ("matmul" in summary) == (setup == "matmul opt-in")
    assert {"relu", "max_pool2d", "mul"}.isdisjoint(summary)  # the arm recipe keeps them float


def test_qat_annotations_match_torchao() -> None:
    model, example = QATRecipes().train(), (torch.randn(2, 3, 8, 8),)
    config = get_default_arm_inductor_quantization_config(is_qat=True)
    ours = annotation_summary(ArmInductorQuantizer().set_global(config).annotate(export_module(model, example)))
    their_config = aiq.get_default_arm_inductor_quantization_config(is_qat=True)
    theirs = annotation_summary(
        aiq.ArmInductorQuantizer().set_global(their_config).annotate(export_module(model, example))
    )
    assert ours == theirs and {"conv2d", "conv2d_1", "add"} <= set(ours)


def test_converted_model_matches_torchao_bit_for_bit() -> None:
    torch.manual_seed(0)
    model, example = Recipes().eval(), (torch.randn(1, 3, 8, 8),)
    batches = [(torch.randn(1, 3, 8, 8),) for _ in range(3)]
    ours = pt2q_flow(
        ArmInductorQuantizer().set_global(get_default_arm_inductor_quantization_config()), model, example, batches
    )
    theirs = torchao_flow(
        aiq.ArmInductorQuantizer().set_global(aiq.get_default_arm_inductor_quantization_config()),
        model,
        example,
        batches,
    )
    signature = qdq_signature(ours)
    assert signature == qdq_signature(theirs) and sum(signature.values()) > 10
    assert all(key[-1] == torch.int8 for key in signature)  # signed int8 activations and weights
    torch.testing.assert_close(ours(*example), theirs(*example), rtol=0, atol=0)


def test_config_and_setters() -> None:
    config = get_default_arm_inductor_quantization_config()
    act, weight = config.input_activation, config.weight
    assert (act.dtype, act.quant_min, act.quant_max, act.qscheme) == (torch.int8, -128, 127, torch.per_tensor_affine)
    assert (weight.dtype, weight.qscheme, config.bias) == (torch.int8, torch.per_tensor_symmetric, None)
    assert get_default_arm_inductor_quantization_config() is config
    with pytest.warns(UserWarning, match="cannot set a config"):
        ArmInductorQuantizer().set_function_type_qconfig(torch.nn.functional.max_pool2d, config)  # not in the recipe
