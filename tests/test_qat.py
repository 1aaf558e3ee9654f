"""Quantization-aware training: prepare_qat_pt2e, fake quantizers, BN folding at convert,
train/eval switching, checkpoints, and accuracy on real data."""

from __future__ import annotations

import collections
import copy
import dataclasses
import io
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pt2q
from pt2q.fake_quant.learnable_fake_quantize import LearnableFakeQuantize, enable_range_learning
from pt2q.fake_quantize import (
    FakeQuantize,
    FakeQuantizeBase,
    FusedMovingAvgObsFakeQuantize,
    disable_fake_quant,
    disable_observer,
    enable_fake_quant,
)
from pt2q.numerics.metrics import sqnr
from pt2q.observer import MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver
from pt2q.quantizer import QuantizationConfig, QuantizationSpec
from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config
from tests.helpers import QDQ_TARGETS, one_thread, qdq_signature  # noqa: F401  (one_thread: autouse fixture)
from tests.zoo import make

aten = torch.ops.aten


def xnnpack(is_qat: bool = True, per_channel: bool = True, **kw) -> XNNPACKQuantizer:
    return XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=per_channel, is_qat=is_qat, **kw)
    )


def export_train(model: nn.Module, example: tuple) -> torch.fx.GraphModule:
    return torch.export.export(copy.deepcopy(model).train(), example).module()


def fake_quant_nodes(gm: torch.fx.GraphModule) -> list[tuple[torch.fx.Node, nn.Module]]:
    return [
        (n, gm.get_submodule(n.target))
        for n in gm.graph.nodes
        if n.op == "call_module" and n.target.startswith("activation_post_process_")
    ]


def ops(gm: torch.fx.GraphModule) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


class SmallNet(nn.Module):
    """conv-BN-ReLU, conv(no bias)-BN-ReLU, max-pool, dropout, linear: what QAT is mostly used on."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.max_pool2d(F.relu(self.bn2(self.conv2(y))), 2)
        return self.fc(self.drop(torch.flatten(y, 1)))


def batches(n: int, seed: int = 0, batch: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 1, 8, 8, generator=g), torch.randint(0, 10, (batch,), generator=g)) for _ in range(n)]


def train_steps(model, opt, data, first_step: int = 0) -> list[float]:
    """One SGD step per batch; the dropout seed depends on the step number only."""
    losses = []
    for i, (x, y) in enumerate(data):
        torch.manual_seed(1000 + first_step + i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# --- oracle: torchao's prepare_qat_pt2e with ExecuTorch's XNNPACKQuantizer ---------------------------------


def test_qat_trains_and_converts_like_torchao() -> None:
    et = pytest.importorskip("executorch.backends.xnnpack.quantizer.xnnpack_quantizer")
    from torchao.quantization.pt2e import move_exported_model_to_eval as ao_move_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e as ao_convert
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e as ao_prepare_qat

    from tests.test_metadata import (
        assert_ops_keep_metadata,
        assert_provenance_everywhere,
        assert_qdq_stack_traces,
        tag_custom,
    )

    torch.manual_seed(0)
    model, data = SmallNet(), batches(8)
    example = (data[0][0],)
    flows = {
        "pt2q": (pt2q.prepare_qat_pt2e, pt2q.move_exported_model_to_eval, pt2q.convert_pt2e, xnnpack()),
        "torchao": (
            ao_prepare_qat,
            ao_move_to_eval,
            ao_convert,
            et.XNNPACKQuantizer().set_global(et.get_symmetric_quantization_config(is_per_channel=True, is_qat=True)),
        ),
    }
    losses, prepared, converted = {}, {}, {}
    for name, (prepare, to_eval, convert, quantizer) in flows.items():
        m = prepare(tag_custom(export_train(model, example)), quantizer)
        losses[name] = train_steps(m, torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9), data)
        to_eval(m)
        prepared[name] = copy.deepcopy(m)
        converted[name] = convert(m)
    torch.testing.assert_close(losses["pt2q"], losses["torchao"])
    assert losses["pt2q"][-1] < losses["pt2q"][0]
    sig = qdq_signature(converted["pt2q"])
    assert sum(sig.values()) >= 10
    assert sig == qdq_signature(converted["torchao"])
    for x, _ in batches(2, seed=5):
        torch.testing.assert_close(converted["pt2q"](x), converted["torchao"](x))
    # metadata through the QAT conv-bn rewrite, training, its folding at convert, and convert
    assert_ops_keep_metadata(prepared["torchao"], prepared["pt2q"], "prepared")
    assert_ops_keep_metadata(converted["torchao"], converted["pt2q"], "converted")
    assert_qdq_stack_traces(converted["torchao"], converted["pt2q"])
    assert_provenance_everywhere(prepared["pt2q"])
    assert_provenance_everywhere(converted["pt2q"])


# --- prepare: simulated conv+BN folding; convert: real folding -----------------------------------------------


class ConvBnNoAffine(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6, affine=False)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


QAT_MODELS = {
    **{
        name: (lambda name=name: make(name))
        for name in ["conv_bn_relu_stack", "conv1d", "conv_transpose", "residual", "depthwise"]
    },
    "no_conv_bias": lambda: (SmallNet(), (torch.randn(4, 1, 8, 8),)),
    "bn_without_affine": lambda: (ConvBnNoAffine(), (torch.randn(2, 3, 8, 8),)),
}


def exact_qat_config(per_channel: bool) -> QuantizationConfig:
    """XNNPACK's QAT config with unfused FakeQuantize, which fake-quantizes with the very qparams
    convert_pt2e uses. (torch's fused op behind FusedMovingAvgObsFakeQuantize picks a symmetric
    scale of max/127.5 for [-127, 127] where the observer, and so convert, pick max/127; torchao
    has the same mismatch.)"""
    base = get_symmetric_quantization_config(is_per_channel=per_channel, is_qat=True)
    weight_observer = MovingAveragePerChannelMinMaxObserver if per_channel else MovingAverageMinMaxObserver
    act = dataclasses.replace(
        base.input_activation,
        observer_or_fake_quant_ctr=FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, eps=2**-12),
    )
    weight = dataclasses.replace(
        base.weight, observer_or_fake_quant_ctr=FakeQuantize.with_args(observer=weight_observer, eps=2**-12)
    )
    return dataclasses.replace(base, input_activation=act, output_activation=act, weight=weight)


def train_a_little(m: torch.fx.GraphModule, example: tuple) -> None:
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    for step in range(3):
        torch.manual_seed(step)
        loss = m(torch.randn_like(example[0])).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("name", list(QAT_MODELS))
def test_conv_bn_trains_as_one_and_folds_at_convert(name: str, per_channel: bool) -> None:
    torch.manual_seed(0)
    model, example = QAT_MODELS[name]()
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    quantizer = XNNPACKQuantizer().set_global(exact_qat_config(per_channel))
    m = pt2q.prepare_qat_pt2e(export_train(model, example), quantizer)

    # every BatchNorm still trains; the weight its conv sees is fake-quantized after scaling by the BN
    bns = [n for n in m.graph.nodes if n.target == aten.batch_norm.default]
    assert len(bns) == n_bn and all(bn.args[5] is True for bn in bns)
    assert len([n for n, _ in fake_quant_nodes(m) if n.args[0].target == aten.mul.Tensor]) == n_bn

    # without fake quantization the rewritten graph is the float model, BN statistics included
    m.apply(disable_fake_quant)
    eager = copy.deepcopy(model).train()
    x = torch.randn_like(example[0])
    torch.manual_seed(1)  # same dropout masks
    out = m(x)
    torch.manual_seed(1)
    torch.testing.assert_close(out, eager(x), rtol=1e-4, atol=1e-5)
    eager_buffers = dict(eager.named_buffers())
    for key, value in m.named_buffers():
        if key in eager_buffers:
            torch.testing.assert_close(value, eager_buffers[key], rtol=1e-5, atol=1e-6)

    # train with fake quantization, freeze, and compare the converted graph with the prepared one
    m.apply(enable_fake_quant)
    train_a_little(m, example)
    pt2q.move_exported_model_to_eval(m)
    m.apply(disable_observer)
    x = torch.randn_like(example[0])
    with torch.no_grad():
        expected = m(x)
        q = pt2q.convert_pt2e(m)
        actual = q(x)
    assert not {aten.batch_norm.default, aten.add_.Tensor, aten.zeros_like.default} & set(ops(q))
    assert not any("num_batches_tracked" in n.target for n in q.graph.nodes if n.op == "get_attr")
    # same qparams; only the float rounding of conv(x, w) + b' versus BN(conv(x, w) / s + b) differs
    assert sqnr(expected, actual) > 45  # (bit-identical on x86 CPUs)


@pytest.mark.parametrize(
    "name, per_channel",
    # conv_transpose: per-channel weights on axis 1, which torch's fused fake-quant kernel cannot take
    [("conv_bn_relu_stack", True), ("no_conv_bias", False), ("conv_transpose", True)],
)
def test_default_qat_config_trains_and_converts(name: str, per_channel: bool) -> None:
    torch.manual_seed(0)
    model, example = QAT_MODELS[name]()
    m = pt2q.prepare_qat_pt2e(export_train(model, example), xnnpack(per_channel=per_channel))
    assert all(isinstance(fq, FusedMovingAvgObsFakeQuantize) for _, fq in fake_quant_nodes(m))
    train_a_little(m, example)
    pt2q.move_exported_model_to_eval(m)
    m.apply(disable_observer)
    x = torch.randn_like(example[0])
    with torch.no_grad():
        expected = m(x)
        actual = pt2q.convert_pt2e(m)(x)
    assert sqnr(expected, actual) > 20  # the fused op's scales differ by 0.4% from convert's


class GroupedConvTransposeBn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.bn = nn.ConvTranspose2d(4, 8, 2, stride=2, groups=2), nn.BatchNorm2d(8)

    def forward(self, x):
        return F.relu(self.bn(self.up(x)))


def test_grouped_transposed_conv_keeps_its_batchnorm() -> None:
    # its weight holds out_channels/groups channels per group: no single axis to scale by the BN
    torch.manual_seed(0)
    example = (torch.randn(2, 4, 5, 5),)
    m = pt2q.prepare_qat_pt2e(
        export_train(GroupedConvTransposeBn(), example), XNNPACKQuantizer().set_global(exact_qat_config(True))
    )
    assert aten.mul.Tensor not in ops(m)
    train_a_little(m, example)
    pt2q.move_exported_model_to_eval(m)
    m.apply(disable_observer)
    with torch.no_grad():
        expected = m(*example)
        q = pt2q.convert_pt2e(m)
        assert aten.batch_norm.default in ops(q)
        torch.testing.assert_close(q(*example), expected)


def test_convert_without_move_to_eval_folds_with_running_statistics() -> None:
    torch.manual_seed(0)
    model, example = make("conv_bn_relu_stack")
    m = pt2q.prepare_qat_pt2e(export_train(model, example), xnnpack())
    m(*example)
    q = pt2q.convert_pt2e(m)  # BN still in training mode: fold its running statistics anyway
    assert aten.batch_norm.default not in ops(q)


def test_converted_qat_model_has_the_ptq_graph_and_saves() -> None:
    torch.manual_seed(0)
    model, data = SmallNet(), batches(4)
    example = (data[0][0],)
    m = pt2q.prepare_qat_pt2e(export_train(model, example), xnnpack())
    train_steps(m, torch.optim.SGD(m.parameters(), lr=0.05), data)
    pt2q.move_exported_model_to_eval(m)
    qat = pt2q.convert_pt2e(m)
    ptq = pt2q.prepare_pt2e(torch.export.export(copy.deepcopy(model).eval(), example).module(), xnnpack(is_qat=False))
    ptq(*example)
    ptq = pt2q.convert_pt2e(ptq)
    assert collections.Counter(ops(qat)) == collections.Counter(ops(ptq))
    assert {str(k[0]) for k in qdq_signature(qat)} == {str(k[0]) for k in qdq_signature(ptq)}

    buf = io.BytesIO()
    torch.export.save(torch.export.export(qat, example), buf)
    buf.seek(0)
    loaded = torch.export.load(buf).module()
    x = data[1][0]
    assert torch.equal(loaded(x), qat(x))


# --- train/eval switching keeps dropout p, BN eps and momentum ---------------------------------------------


class DropoutBnNet(nn.Module):
    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4, eps=1e-3, momentum=0.01)
        self.drop = nn.Dropout(0.3, inplace=inplace)
        self.drop2d = nn.Dropout2d(0.3)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        y = self.drop2d(F.relu(self.bn(self.conv(x))))
        return self.fc(self.drop(y.mean(dim=(2, 3))))


def _hyperparameters(gm) -> list[tuple]:
    """(op, training flag, then p or (momentum, eps)) for every dropout and batch_norm."""
    out = []
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target == aten.batch_norm.default:
            out.append(("batch_norm", n.args[5], n.args[6], n.args[7]))
        elif n.op == "call_function" and "dropout" in str(n.target):
            out.append((n.target.__name__, n.args[2], n.args[1]))
    return out


def _small_variance(model: DropoutBnNet, x: torch.Tensor) -> DropoutBnNet:
    """Shrink the conv so that its outputs' variance (~1e-3) is close to eps, which makes a wrong
    eps visible in every number; start the running statistics at the statistics of ``x``."""
    with torch.no_grad():
        model.conv.weight.mul_(0.05)
        model.conv.bias.zero_()
        y = model.conv(x)
        model.bn.running_mean.copy_(y.mean(dim=(0, 2, 3)))
        model.bn.running_var.copy_(y.var(dim=(0, 2, 3)))
        assert model.bn.running_var.max() < 3e-3
    return model


@pytest.mark.parametrize("inplace", [False, True])
def test_train_eval_switch_keeps_dropout_p_bn_eps_and_momentum(inplace: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 6, 6)
    eager = _small_variance(DropoutBnNet(inplace), x)
    gm = export_train(eager, (x,))
    drop = "dropout_.default" if inplace else "dropout.default"

    def expected(training: bool) -> list[tuple]:
        return [("batch_norm", training, 0.01, 1e-3), ("feature_dropout.default", training, 0.3), (drop, training, 0.3)]

    assert _hyperparameters(gm) == expected(True)
    pt2q.move_exported_model_to_eval(gm)
    assert _hyperparameters(gm) == expected(False)
    counter = gm.bn.num_batches_tracked.clone()
    torch.testing.assert_close(gm(x), copy.deepcopy(eager).eval()(x))  # uses eps=1e-3 and running stats
    assert torch.equal(gm.bn.num_batches_tracked, counter)  # eval does not count batches

    pt2q.move_exported_model_to_train(gm)
    assert _hyperparameters(gm) == expected(True)
    reference = copy.deepcopy(eager).train()
    x2 = 3 * torch.randn_like(x)  # other statistics, so the running ones move
    torch.manual_seed(3)
    out = gm(x2)
    torch.manual_seed(3)
    torch.testing.assert_close(out, reference(x2))  # same dropout masks, same batch statistics
    assert not torch.allclose(gm.bn.running_var, eager.bn.running_var)
    torch.testing.assert_close(gm.bn.running_mean, reference.bn.running_mean)  # momentum 0.01
    torch.testing.assert_close(gm.bn.running_var, reference.bn.running_var)
    assert gm.bn.num_batches_tracked.item() == counter.item() + 1

    pt2q.allow_exported_model_train_eval(gm)
    gm.eval()
    assert _hyperparameters(gm) == expected(False)
    gm.train()
    assert _hyperparameters(gm) == expected(True)
    gm.train(False)
    assert _hyperparameters(gm) == expected(False)


def test_prepare_qat_keeps_each_batchnorms_eps_and_momentum() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 6, 6)
    eager = _small_variance(DropoutBnNet(), x)
    m = pt2q.prepare_qat_pt2e(export_train(eager, (x,)), xnnpack())
    assert _hyperparameters(m) == [
        ("batch_norm", True, 0.01, 1e-3),
        ("feature_dropout.default", True, 0.3),
        ("dropout.default", True, 0.3),
    ]

    # the conv weight is scaled with this BN's eps (torchao's QAT pattern hard-codes 1e-5)
    (weight_fq,) = [fq for n, fq in fake_quant_nodes(m) if n.args[0].target == aten.mul.Tensor]
    seen = []
    handle = weight_fq.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    m.apply(disable_fake_quant)
    reference = copy.deepcopy(eager).train()
    expected_weight = eager.conv.weight * (eager.bn.weight / torch.sqrt(eager.bn.running_var + 1e-3)).reshape(
        -1, 1, 1, 1
    )
    x2 = 3 * torch.randn_like(x)  # other statistics, so the running ones move
    torch.manual_seed(3)
    out = m(x2)
    torch.manual_seed(3)
    torch.testing.assert_close(out, reference(x2), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(seen[0], expected_weight.detach())
    assert not torch.allclose(m.bn.running_var, eager.bn.running_var)
    torch.testing.assert_close(m.bn.running_mean, reference.bn.running_mean)  # momentum 0.01
    torch.testing.assert_close(m.bn.running_var, reference.bn.running_var)
    handle.remove()

    # the model's own eval mode, and the folded, converted model, use eps=1e-3 too
    pt2q.move_exported_model_to_eval(m)
    assert _hyperparameters(m)[0] == ("batch_norm", False, 0.01, 1e-3)
    torch.testing.assert_close(m(x), reference.eval()(x), rtol=1e-4, atol=1e-5)
    m.apply(enable_fake_quant)
    m(x)
    q = pt2q.convert_pt2e(m)
    assert sqnr(reference(x), q(x)) > 25  # a BN folded with eps=1e-5 would be far off (var ~ 1e-3)


# --- configs of the wrong kind: accepted as torchao accepts them, with a named warning -----------------------


def test_prepare_qat_warns_about_a_ptq_config() -> None:
    model, example = make("conv_bn_relu_stack")
    with pytest.warns(pt2q.ObserverInQATWarning, match=r"prepare_qat_pt2e: .*only observes.*is_qat=True"):
        m = pt2q.prepare_qat_pt2e(export_train(model, example), xnnpack(is_qat=False))
    assert not any(hasattr(mod, "fake_quant_enabled") for mod in m.modules())  # observers, as torchao inserts
    with warnings.catch_warnings():
        warnings.simplefilter("error", pt2q.DropInWarning)
        with pytest.raises(pt2q.ObserverInQATWarning):
            pt2q.prepare_qat_pt2e(export_train(model, example), xnnpack(is_qat=False))


def test_prepare_ptq_warns_about_a_qat_config() -> None:
    model, example = make("mlp")
    gm = torch.export.export(model, example).module()
    with pytest.warns(pt2q.FakeQuantizeInPTQWarning, match=r"prepare_pt2e: .*QAT fake quantizer.*prepare_qat_pt2e"):
        m = pt2q.prepare_pt2e(gm, xnnpack(is_qat=True))
    m(*example)
    assert sum(qdq_signature(pt2q.convert_pt2e(m)).values()) > 0


@pytest.mark.parametrize("is_dynamic", [False, True])
def test_symmetric_qat_config_builds_fake_quantizers(is_dynamic: bool) -> None:
    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=True, is_dynamic=is_dynamic)
    assert config.is_qat
    act = config.input_activation.observer_or_fake_quant_ctr()
    weight = config.weight.observer_or_fake_quant_ctr()
    assert type(act) is (FakeQuantize if is_dynamic else FusedMovingAvgObsFakeQuantize)
    assert type(weight) is FusedMovingAvgObsFakeQuantize
    assert isinstance(weight.activation_post_process, MovingAveragePerChannelMinMaxObserver)
    model, example = make("mlp")
    m = pt2q.prepare_qat_pt2e(export_train(model, example), XNNPACKQuantizer().set_global(config))
    fqs = fake_quant_nodes(m)
    assert fqs and all(isinstance(fq, FakeQuantizeBase) for _, fq in fqs)
    m(*example)
    q = pt2q.convert_pt2e(m)
    assert any(n.target in QDQ_TARGETS for n in q.graph.nodes)


# --- checkpoints -------------------------------------------------------------------------------------------


def learnable_config() -> QuantizationConfig:
    act = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-128,
        quant_max=127,
        qscheme=torch.per_tensor_affine,
        observer_or_fake_quant_ctr=LearnableFakeQuantize.with_args(
            observer=MovingAverageMinMaxObserver, use_grad_scaling=True
        ),
    )
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-127,
        quant_max=127,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
        observer_or_fake_quant_ctr=LearnableFakeQuantize.with_args(
            observer=MovingAveragePerChannelMinMaxObserver, use_grad_scaling=True
        ),
    )
    return QuantizationConfig(input_activation=act, output_activation=act, weight=weight, bias=None, is_qat=True)


CHECKPOINT_QUANTIZERS = {
    "fused_per_channel": lambda: xnnpack(),
    "fused_per_tensor": lambda: xnnpack(per_channel=False),
    "learnable": lambda: XNNPACKQuantizer().set_global(learnable_config()),
}


@pytest.mark.parametrize("name", list(CHECKPOINT_QUANTIZERS))
def test_checkpoint_resumes_training_with_identical_numbers(name: str) -> None:
    torch.manual_seed(0)
    model, data = SmallNet(), batches(8)
    example = (data[0][0],)

    def fresh():
        m = pt2q.prepare_qat_pt2e(export_train(model, example), CHECKPOINT_QUANTIZERS[name]())
        return m, torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)

    a, opt_a = fresh()
    train_steps(a, opt_a, data[:3])
    if name == "learnable":
        a.apply(enable_range_learning)
    train_steps(a, opt_a, data[3:4], first_step=3)
    buf = io.BytesIO()
    torch.save({"model": a.state_dict(), "optimizer": opt_a.state_dict()}, buf)
    resumed_a = train_steps(a, opt_a, data[4:], first_step=4)

    b, opt_b = fresh()
    buf.seek(0)
    checkpoint = torch.load(buf)
    b.load_state_dict(checkpoint["model"])
    opt_b.load_state_dict(checkpoint["optimizer"])
    if name == "learnable":  # range learning resumes from the checkpoint's flags alone
        assert all(fq.scale.requires_grad and fq.observer_enabled.item() == 0 for _, fq in fake_quant_nodes(b))
    resumed_b = train_steps(b, opt_b, data[4:], first_step=4)

    assert resumed_a == resumed_b
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    pt2q.move_exported_model_to_eval(a)
    pt2q.move_exported_model_to_eval(b)
    qa, qb = pt2q.convert_pt2e(a), pt2q.convert_pt2e(b)
    assert qdq_signature(qa) == qdq_signature(qb)
    assert torch.equal(qa(data[0][0]), qb(data[0][0]))


# --- LearnableFakeQuantize ---------------------------------------------------------------------------------

LEARNABLE_CASES = {
    "per_tensor_affine": (
        dict(quant_min=0, quant_max=255, dtype=torch.quint8, qscheme=torch.per_tensor_affine),
        False,
        (6, 5),
    ),
    "per_tensor_symmetric": (
        dict(quant_min=-128, quant_max=127, dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
        False,
        (6, 5),
    ),
    "per_channel_symmetric": (
        dict(quant_min=-127, quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0),
        True,
        (6, 5),
    ),
    "per_channel_affine_axis1": (
        dict(quant_min=0, quant_max=255, dtype=torch.quint8, qscheme=torch.per_channel_affine, ch_axis=1),
        True,
        (6, 5),
    ),
}


@pytest.mark.parametrize("use_grad_scaling", [False, True])
@pytest.mark.parametrize("case", list(LEARNABLE_CASES))
def test_learnable_fake_quantize_matches_torchao(case: str, use_grad_scaling: bool) -> None:
    ao_lfq = pytest.importorskip("torchao.quantization.pt2e.learnable_fake_quantize")
    import torchao.quantization.pt2e.observer as ao_obs

    kwargs, per_channel, shape = LEARNABLE_CASES[case]
    ours_obs = MovingAveragePerChannelMinMaxObserver if per_channel else MovingAverageMinMaxObserver
    theirs_obs = ao_obs.MovingAveragePerChannelMinMaxObserver if per_channel else ao_obs.MovingAverageMinMaxObserver
    ours = LearnableFakeQuantize(ours_obs, use_grad_scaling=use_grad_scaling, **kwargs)
    theirs = ao_lfq.LearnableFakeQuantize(theirs_obs, use_grad_scaling=use_grad_scaling, **kwargs)
    assert ours.scale is None and theirs.scale is None and not ours._initialized and not theirs._initialized
    g = torch.Generator().manual_seed(0)
    weights = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape) / 10
    for step in range(7):
        if step == 3:  # observe for three steps, then learn the range
            ours.enable_range_learning()
            theirs.enable_range_learning()
        x = torch.randn(shape, generator=g) * 2
        outs, grads = [], []
        for fq in (ours, theirs):
            xi = x.clone().requires_grad_()
            y = fq(xi)
            (y * weights).sum().backward()
            outs.append(y.detach())
            grads.append(xi.grad)
        assert torch.equal(outs[0], outs[1]), step
        assert torch.equal(grads[0], grads[1]), step
        if step >= 3:
            for name in ("scale", "zero_point"):
                g_ours, g_theirs = getattr(ours, name).grad, getattr(theirs, name).grad
                assert torch.equal(g_ours, g_theirs), (step, name)
            with torch.no_grad():
                for fq in (ours, theirs):
                    fq.scale -= 1e-3 * fq.scale.grad
                    fq.zero_point -= 1e-1 * fq.zero_point.grad
                    fq.scale.grad = fq.zero_point.grad = None
    for a, b in zip(ours.calculate_qparams(), theirs.calculate_qparams()):
        assert torch.equal(a, b)
    assert ours.learning_enabled.item() == 1 and ours.observer_enabled.item() == 0
    ours.enable_observer()  # observing again stops range learning, as in torchao
    assert ours.learning_enabled.item() == 0 and not ours.scale.requires_grad


def test_learnable_fake_quantize_creates_its_qparams_at_the_first_batch() -> None:
    """As torchao 0.18: no scale or zero point before data; the first forward creates them, one per channel."""
    make_fq = LearnableFakeQuantize.with_args(
        observer=MovingAveragePerChannelMinMaxObserver,
        quant_min=-127,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
    )
    fq = make_fq()
    assert fq.scale is None and fq.zero_point is None and not fq._initialized and not fq.has_statistics
    assert not list(fq.parameters()) and not {"scale", "zero_point"} & fq.state_dict().keys()
    scale0, zero_point0 = fq.calculate_qparams()  # before any data: the initial qparams of torchao's fake quantizers
    assert scale0.tolist() == [1.0] and zero_point0.tolist() == [0]
    fq.enable_range_learning()
    assert fq.scale is None and fq.observer_enabled.item() == 0  # learning waits for the first statistics

    x = torch.randn(4, 3)
    y = fq(x)
    assert fq._initialized and fq.scale is not None and fq.zero_point is not None
    assert fq.scale.shape == (4,) and fq.scale.requires_grad and fq.zero_point.requires_grad
    observed_scale, _ = fq.activation_post_process.calculate_qparams()
    assert torch.equal(fq.scale.detach(), observed_scale) and not fq.zero_point.detach().any()
    expected = torch.fake_quantize_per_channel_affine(
        x, observed_scale, torch.zeros(4, dtype=torch.int32), 0, -127, 127
    )
    assert torch.equal(y, expected)

    scale = fq.scale
    opt = torch.optim.SGD(fq.parameters(), lr=0.1)  # built once the first batch created the qparams
    fq(torch.randn(4, 3)).square().sum().backward()
    before = scale.detach().clone()
    opt.step()
    assert fq.scale is scale and not torch.equal(scale.detach(), before)  # trained in place

    # a checkpoint with qparams loads into a module that has not seen data yet, and vice versa
    other = make_fq()
    other.load_state_dict(fq.state_dict())
    assert other._initialized and other.scale is not None and torch.equal(other.scale, fq.scale)
    assert other.scale.requires_grad and other.observer_enabled.item() == 0  # range learning resumes
    assert all(torch.equal(a, b) for a, b in zip(other.calculate_qparams(), fq.calculate_qparams()))
    x = torch.randn(4, 3)
    assert torch.equal(other(x), fq(x))
    fq.load_state_dict(make_fq().state_dict())
    assert fq.scale is None and fq.zero_point is None and not fq._initialized


def test_learnable_fake_quantize_in_the_qat_flow() -> None:
    torch.manual_seed(0)
    model, data = SmallNet(), batches(6)
    m = pt2q.prepare_qat_pt2e(export_train(model, (data[0][0],)), XNNPACKQuantizer().set_global(learnable_config()))
    fqs = list({id(fq): fq for _, fq in fake_quant_nodes(m)}.values())  # shared ones once
    assert fqs and all(isinstance(fq, LearnableFakeQuantize) for fq in fqs)
    with pytest.warns(pt2q.UncalibratedObserverWarning):  # as torchao: it converts with its initial qparams
        pt2q.convert_pt2e(copy.deepcopy(m))
    assert all(fq.scale is None for fq in fqs)
    with torch.no_grad():  # the first batch creates the qparams (as torchao 0.18), then the optimizer takes them
        m(data[0][0])
    # the qparams need a smaller step than the weights
    qparams = [p for name, p in m.named_parameters() if name.endswith(("scale", "zero_point"))]
    assert len(qparams) == 2 * len(fqs)
    others = [p for name, p in m.named_parameters() if not name.endswith(("scale", "zero_point"))]
    opt = torch.optim.SGD([{"params": others}, {"params": qparams, "lr": 1e-5}], lr=0.01)
    train_steps(m, opt, data[:3])
    m.apply(enable_range_learning)
    before = {id(fq): fq.scale.detach().clone() for fq in fqs}
    train_steps(m, opt, data[3:], first_step=3)
    assert all(fq.scale.grad is not None for fq in fqs)
    assert sum(not torch.equal(fq.scale.detach(), before[id(fq)]) for fq in fqs) >= len(fqs) - 1
    pt2q.move_exported_model_to_eval(m)
    x = data[0][0]
    with torch.no_grad():
        expected = m(x)
    learned = {round(float(fq.scale), 12) for fq in fqs if fq.scale.numel() == 1}
    q = pt2q.convert_pt2e(m)
    used = {
        round(n.args[1], 12)
        for n in q.graph.nodes
        if n.target == torch.ops.quantized_decomposed.quantize_per_tensor.default
    }
    assert used and used <= learned  # convert quantizes with the learned scales
    assert sqnr(expected, q(x)) > 25


# --- accuracy on real data ---------------------------------------------------------------------------------


def test_qat_accuracy_on_digits(capsys) -> None:
    pytest.importorskip("sklearn")
    from benchmarks.accuracy import QUANTIZERS, load_digits, markdown_table, measure

    (row,) = measure([e for e in QUANTIZERS if e.name.startswith("XNNPACK")], epochs=5, qat_epochs=2)
    with capsys.disabled():
        print("\n" + markdown_table([row], n_test=len(load_digits()[3])))
    assert row.fp32 > 95
    assert row.qat >= row.fp32 - 1.0, row
    assert row.qat >= row.ptq, row
