"""SmoothQuant on the exported graph: the scaled weights match a direct computation (and torchao's
smoothing factor), the float model's outputs do not change, and any quantizer runs after it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pt2q
from pt2q.algorithms.accuracy_aware import output_sqnr
from pt2q.core.attrs import get_attr_value
from pt2q.quantizers import (
    X86InductorQuantizer,
    XNNPACKQuantizer,
    get_default_x86_inductor_quantization_config,
    get_symmetric_quantization_config,
)
from tests.transformer_zoo import TinyBert, token_batches


class PreNorm(nn.Module):
    """LayerNorm read only by q/k/v (foldable), linear -> linear (foldable), an outlier channel."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.LayerNorm(16)
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)
        with torch.no_grad():
            self.norm.weight[5] = 30.0  # an outlier channel
            self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        h = self.norm(x)
        y = self.q(h) * torch.sigmoid(self.k(h)) + self.v(h)
        return self.down(self.up(y))


def _batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 6, 16, generator=g),) for _ in range(n)]


def _input_absmax(model: nn.Module, batches) -> dict[str, torch.Tensor]:
    """Per input channel max |x| of every nn.Linear, from forward hooks on the eager model."""
    seen: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(_module, args):
            amax = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0)
            seen[name] = torch.maximum(seen[name], amax) if name in seen else amax

        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for b in batches:
            model(*b)
    for h in handles:
        h.remove()
    return seen


def _weight(gm, linear_name: str) -> torch.Tensor:
    node = next(n for n in gm.graph.nodes if n.name == linear_name)
    return get_attr_value(gm, node.args[1].target)


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_scaled_weights_match_a_direct_computation(alpha: float) -> None:
    model, batches = PreNorm().eval(), _batches()
    ep = torch.export.export(model, batches[0])
    gm = copy.deepcopy(ep.module())
    groups = pt2q.smooth_quant(gm, batches, alpha=alpha)
    assert [(g.activation, g.linears, g.folded_into) for g in groups] == [
        ("layer_norm", ("linear", "linear_1", "linear_2"), "layer_norm layer_norm"),
        ("add", ("linear_3",), "div div_tensor"),  # an add: nothing to fold into
        ("linear_3", ("linear_4",), "linear linear_3"),
    ]
    act = _input_absmax(model, batches)

    def direct(act_max, *weights):
        w_max = torch.stack([w.abs().amax(0) for w in weights]).amax(0)
        return act_max.pow(alpha) / w_max.pow(1 - alpha)

    s_qkv = direct(act["q"], model.q.weight, model.k.weight, model.v.weight)
    s_up, s_down = direct(act["up"], model.up.weight), direct(act["down"], model.down.weight)
    for linear, module, s in (
        ("linear", model.q, s_qkv),
        ("linear_1", model.k, s_qkv),
        ("linear_2", model.v, s_qkv),
        ("linear_3", model.up, s_up),
    ):
        expected = module.weight.detach() * s
        if linear == "linear_3":  # up's rows are divided by down's scales (folded), its columns multiplied by its own
            expected = expected / s_down[:, None]
        torch.testing.assert_close(_weight(gm, linear), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(_weight(gm, "linear_4"), model.down.weight.detach() * s_down, rtol=1e-5, atol=1e-7)
    ln_weight = get_attr_value(gm, next(n for n in gm.graph.nodes if n.name == "layer_norm").args[2].target)
    torch.testing.assert_close(ln_weight, model.norm.weight.detach() / s_qkv, rtol=1e-5, atol=1e-7)
    # the transform is exact in float, and left the exported program's own weights alone
    assert output_sqnr(ep.module(), gm, _batches(seed=3)) > 100
    torch.testing.assert_close(ep.state_dict["norm.weight"], model.norm.weight)


def test_a_single_linear_gets_torchaos_smoothing_factor() -> None:
    from torchao.prototype.smoothquant.core import SmoothQuantObserver

    model, batches = PreNorm().eval(), _batches()
    gm = torch.export.export(model, batches[0]).module()
    pt2q.smooth_quant(gm, batches, alpha=0.5)
    observer = SmoothQuantObserver(model.down.weight.detach(), alpha=0.5)
    with torch.no_grad():
        for b in batches:
            observer(
                model.up(
                    model.q(model.norm(b[0])) * torch.sigmoid(model.k(model.norm(b[0]))) + model.v(model.norm(b[0]))
                )
            )
    factor, _, _ = observer.calculate_qparams()
    torch.testing.assert_close(_weight(gm, "linear_4"), model.down.weight.detach() * factor, rtol=1e-5, atol=1e-6)


def test_post_norm_bert_gets_divs_and_any_quantizer_runs_after() -> None:
    model, batches = TinyBert(outliers=True).eval(), token_batches(3)
    ep = torch.export.export(model, batches[0])
    gm = copy.deepcopy(ep.module())
    groups = pt2q.smooth_quant(gm, batches, alpha=0.5)
    # BERT's LayerNorm outputs also feed the residual adds: the scales go into a div in front of the group
    assert [g.linears for g in groups][:4] == [
        ("linear", "linear_1", "linear_2"),
        ("linear_3",),
        ("linear_4",),
        ("linear_5",),
    ]
    assert all(g.folded_into.startswith("div ") for g in groups)
    divs = [n for n in gm.graph.nodes if n.target == torch.ops.aten.div.Tensor and n.name.startswith("div_tensor")]
    assert len(divs) == len(groups)
    assert output_sqnr(ep.module(), gm, token_batches(2, seed=4)) > 100
    for quantizer in (
        XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)),
        X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config()),
    ):
        prepared = pt2q.prepare_pt2e(copy.deepcopy(gm), quantizer)
        for b in batches:
            prepared(*b)
        converted = pt2q.convert_pt2e(prepared)
        assert output_sqnr(ep.module(), converted, token_batches(2, seed=4)) > 15
        # the inserted divs stay float: no quantizer has a pattern for them
        div_inputs = [n.args[0] for n in converted.graph.nodes if n.target == torch.ops.aten.div.Tensor]
        assert not any(a.target == torch.ops.quantized_decomposed.dequantize_per_tensor.default for a in div_inputs)


def test_bad_arguments() -> None:
    gm = torch.export.export(PreNorm().eval(), _batches(1)[0]).module()
    with pytest.raises(ValueError, match="alpha must be in"):
        pt2q.smooth_quant(gm, _batches(1), alpha=1.5)
    with pytest.raises(ValueError, match="needs calibration data"):
        pt2q.smooth_quant(gm, [], alpha=0.5)


def test_tied_weights_are_left_alone() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 8)

        def forward(self, x):
            return F.linear(F.relu(self.a(x)), self.a.weight)

    model, batches = Tied().eval(), [(torch.randn(2, 8),)]
    gm = torch.export.export(model, batches[0]).module()
    assert pt2q.smooth_quant(gm, batches) == []
