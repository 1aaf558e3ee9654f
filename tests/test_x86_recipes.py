"""X86InductorQuantizer on torchao's recipes: the annotation equals torchao's (the oracle), node for node.

The models exercise each part of torchao's x86 recipe: int8-in/int8-out ops (max_pool2d, avg_pool2d,
adaptive_avg_pool2d, cat, flatten) fed by quantized patterns, linear + add (+ relu) fusions in every
arrangement, unary fusions whose conv/linear has other readers, dynamic linears, QAT conv + BatchNorm
variants. The last tests pin the cases where pt2q annotates more than torchao, on purpose: torchao misses
the pattern (functional activations, which a non-strict ``torch.export`` records no module for) or crashes
(a module called twice).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pt2q.quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config
from tests.helpers import annotation_summary, export_module, pt2q_flow, qdq_signature, torchao_flow

xiq = pytest.importorskip("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _conv(i: int = 3, o: int = 8, k: int = 3, **kw) -> nn.Conv2d:
    return nn.Conv2d(i, o, k, **kw)


class ConvPool(nn.Module):
    """conv -> relu -> max_pool2d -> conv; conv -> avg_pool2d -> adaptive_avg_pool2d -> flatten -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.relu, self.mp, self.c2 = _conv(), nn.ReLU(), nn.MaxPool2d(3, 2), _conv(8, 8, 1)
        self.c3, self.ap, self.gap, self.fc = _conv(), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Linear(8, 4)

    def forward(self, x):
        a = self.c2(self.mp(self.relu(self.c1(x))))
        b = self.fc(torch.flatten(self.gap(self.ap(self.mp(self.c3(x)))), 1))
        return a, b


class PoolOutputs(nn.Module):
    """int8-in/int8-out ops whose output nobody quantizes: a flatten feeding nothing quantizable stays float."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.mp, self.c2, self.gap = _conv(), nn.MaxPool2d(2), _conv(), nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.mp(self.c1(x)), torch.flatten(self.gap(self.c2(x)), 1)


class Cats(nn.Module):
    """cat of convs, of a conv and a pooled conv (input order matters), of a tensor with itself, and with a
    float input (not quantized)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = _conv(), _conv(), _conv(32, 8, 1)
        self.c4, self.mp, self.c5 = _conv(), nn.MaxPool2d(1), _conv(16, 8, 1)

    def forward(self, x):
        a, b = self.c1(x), self.c2(x)
        y = self.c3(torch.cat([torch.cat([a, self.mp(b)], 1), torch.cat([b, b], 1)], 1))
        z = self.c4(x)
        return y, self.c5(torch.cat([z, torch.sigmoid(z)], 1))


class LinearAdds(nn.Module):
    """linear + add with the residual on either side, + relu, two linears added, a linear read twice."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.ModuleList(nn.Linear(16, 16) for _ in range(7))
        self.relu, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        fc = self.fc
        y = fc[0](x) + x  # linear + add
        y = y + fc[1](y)  # add + linear (the linear on the right)
        y = self.relu(fc[2](y) + y)  # linear + add + relu
        y = self.relu2(fc[3](y) + fc[4](y))  # two linears added, + relu
        z = fc[5](y)
        return fc[6](z + y) + z  # the linear read twice: no fusion


class Unaries(nn.Module):
    """linear + gelu/tanh/leaky_relu/relu, conv + relu6/hardswish/silu, and unary fusions whose conv/linear
    is also read elsewhere (the activation is then still int8-ready: the pooling after it is quantized)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.gelu = nn.Linear(16, 16), nn.GELU(approximate="tanh")
        self.fc2, self.tanh = nn.Linear(16, 16), nn.Tanh()
        self.fc3, self.leaky = nn.Linear(16, 16), nn.LeakyReLU(0.2)
        self.c1, self.relu6 = _conv(3, 8, 3, padding=1), nn.ReLU6()
        self.c2, self.hswish = _conv(8, 8, 3, padding=1), nn.Hardswish()
        self.c3, self.silu = _conv(8, 8, 3, padding=1), nn.SiLU()
        self.c4, self.relu, self.mp = _conv(8, 8, 1), nn.ReLU(), nn.MaxPool2d(2)

    def forward(self, x, img):
        y = self.leaky(self.fc3(self.tanh(self.fc2(self.gelu(self.fc1(x))))))
        z = self.silu(self.c3(self.hswish(self.c2(self.relu6(self.c1(img))))))
        w = self.c4(z)
        return y, self.mp(self.relu(w)), w * 2


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        attn = torch.matmul(self.q(x), self.k(x).transpose(-1, -2)).softmax(-1)
        return torch.matmul(attn, self.v(x)) * self.q(x)


class QATRecipes(nn.Module):
    """conv + bn + relu + max_pool2d, conv + bn + max_pool2d, cat, adaptive pooling, flatten, linear;
    conv + bn + add + relu; conv + bn + hardswish with the BatchNorm read twice."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1, self.relu, self.mp = _conv(), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)
        self.c2, self.b2, self.gap, self.fc = _conv(), nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Linear(16, 4)
        self.c3, self.b3 = _conv(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c4, self.b4, self.relu2 = _conv(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.c5, self.b5, self.hswish = _conv(8, 8, 1), nn.BatchNorm2d(8), nn.Hardswish()

    def forward(self, x):
        a = self.mp(self.relu(self.b1(self.c1(x))))
        b = F.max_pool2d(self.b2(self.c2(x)), 2)
        head = self.fc(torch.flatten(self.gap(torch.cat([a, b], 1)), 1))
        y = self.b3(self.c3(x))
        y = self.mp(self.relu2(self.b4(self.c4(y)) + y))
        z = self.b5(self.c5(y))
        return head, self.mp(self.hswish(z)), z + 1


def _inputs(*shapes: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(*s) for s in shapes)


IMG = (2, 3, 16, 16)
RECIPES: dict[str, tuple[Callable[[], nn.Module], tuple[tuple[int, ...], ...]]] = {
    "pooling": (ConvPool, (IMG,)),
    "pool outputs": (PoolOutputs, (IMG,)),
    "cat": (Cats, (IMG,)),
    "linear + add (+ relu)": (LinearAdds, ((2, 4, 16),)),
    "unary fusions": (Unaries, ((2, 16), (2, 3, 8, 8))),
    "attention (matmul opt-in)": (Attention, ((1, 4, 16),)),
}


def _quantizers(**kwargs):
    ours = get_default_x86_inductor_quantization_config(reduce_range=False, **kwargs)
    theirs = xiq.get_default_x86_inductor_quantization_config(**kwargs)
    return (
        X86InductorQuantizer().set_global(ours).set_function_type_qconfig(torch.matmul, ours),
        xiq.X86InductorQuantizer().set_global(theirs).set_function_type_qconfig(torch.matmul, theirs),
    )


def _annotations(model: nn.Module, example: tuple, quantizers) -> tuple[dict, dict]:
    ours, theirs = quantizers
    return (
        annotation_summary(ours.annotate(export_module(model, example))),
        annotation_summary(theirs.annotate(export_module(model, example))),
    )


@pytest.mark.parametrize("is_dynamic", [False, True])
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_annotation_matches_torchao(recipe: str, is_dynamic: bool) -> None:
    torch.manual_seed(0)
    factory, shapes = RECIPES[recipe]
    ours, theirs = _annotations(factory().eval(), _inputs(*shapes), _quantizers(is_dynamic=is_dynamic))
    assert ours == theirs
    assert len(ours) >= 3


def _pattern_flags(gm) -> dict[str, tuple[bool, bool]]:
    """operator node -> (annotated, ends a quantized pattern): torchao's x86 annotation fields, which its passes
    read (pt2q also marks the weights it claims; torchao leaves them unannotated)."""
    return {
        n.name: (bool(ann._annotated), bool(ann._is_output_of_quantized_pattern))
        for n in gm.graph.nodes
        if n.op == "call_function" and (ann := n.meta.get("quantization_annotation")) is not None
    }


@pytest.mark.parametrize("is_dynamic", [False, True])
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_pattern_output_flags_match_torchao(recipe: str, is_dynamic: bool) -> None:
    factory, shapes = RECIPES[recipe]
    model, example = factory().eval(), _inputs(*shapes)
    ours, theirs = _quantizers(is_dynamic=is_dynamic)
    flags = _pattern_flags(ours.annotate(export_module(model, example)))
    assert flags == _pattern_flags(theirs.annotate(export_module(model, example)))
    assert any(ends for _, ends in flags.values())


def test_qat_annotation_matches_torchao() -> None:
    torch.manual_seed(0)
    ours, theirs = _annotations(QATRecipes().train(), _inputs(IMG), _quantizers(is_qat=True))
    assert ours == theirs
    assert {"max_pool2d", "cat", "adaptive_avg_pool2d", "flatten", "add", "hardswish"} <= set(ours)


@pytest.mark.parametrize("recipe, is_dynamic", [("pooling", False), ("cat", False), ("linear + add (+ relu)", True)])
def test_converted_models_match_torchao_bit_for_bit(recipe: str, is_dynamic: bool) -> None:
    torch.manual_seed(0)
    factory, shapes = RECIPES[recipe]
    model, example = factory().eval(), _inputs(*shapes)
    batches = [_inputs(*shapes) for _ in range(2)]
    ours, theirs = _quantizers(is_dynamic=is_dynamic)
    a, b = pt2q_flow(ours, model, example, batches), torchao_flow(theirs, model, example, batches)
    assert qdq_signature(a) == qdq_signature(b)
    torch.testing.assert_close(a(*example), b(*example), rtol=0, atol=0)


# --- where pt2q quantizes more: torchao misses the pattern or fails ------------------------------


class FunctionalActivations(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = _conv(), nn.Linear(9, 9)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.conv(x)), 2), F.max_pool2d(F.gelu(self.fc(x)), 2)


def test_functional_activations_fuse_where_torchao_misses_them() -> None:
    """torchao matches activations by the module that produced them; a non-strict export (torch.export's
    default) records none for ``F.relu`` / ``F.gelu``, so torchao leaves the pooling after them float."""
    ours, theirs = _annotations(FunctionalActivations().eval(), _inputs((1, 3, 9, 9)), _quantizers())
    assert {"max_pool2d", "max_pool2d_1"} <= set(ours) and not {"max_pool2d", "max_pool2d_1"} & set(theirs)
    assert {k: v for k, v in ours.items() if not k.startswith("max_pool2d")} == theirs


class ReusedReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.relu = _conv(3, 8, 3, padding=1), _conv(8, 8, 3, padding=1), nn.ReLU()

    def forward(self, x):
        y = self.relu(self.c1(x))
        return self.relu(self.c2(y) + y)


def test_a_module_called_twice_is_fine_where_torchao_fails() -> None:
    ours_q, theirs_q = _quantizers()
    with pytest.raises(ValueError, match="more than one output node"):
        theirs_q.annotate(export_module(ReusedReLU().eval(), _inputs((1, 3, 8, 8))))
    ours = annotation_summary(ours_q.annotate(export_module(ReusedReLU().eval(), _inputs((1, 3, 8, 8)))))
    assert {"conv2d", "conv2d_1", "add"} <= set(ours)  # conv + relu, conv + add + relu with an int8 residual
