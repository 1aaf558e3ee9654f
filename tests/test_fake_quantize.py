"""Fake quantizers: outputs, gradients and qparams equal torchao's; switches, state, errors."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pt2q.fake_quantize as pf
import pt2q.observer as po

af = pytest.importorskip("torchao.quantization.pt2e.fake_quantize")
ao = pytest.importorskip("torchao.quantization.pt2e.observer")
pytestmark = pytest.mark.filterwarnings("ignore:Please use quant_min and quant_max")  # torchao on reduce_range

CONFIGS = [
    (
        "FakeQuantize",
        "MovingAverageMinMaxObserver",
        dict(quant_min=0, quant_max=255, dtype=torch.quint8, reduce_range=True),
    ),
    (
        "FakeQuantize",
        "MovingAverageMinMaxObserver",
        dict(quant_min=-128, quant_max=127, dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
    ),
    (
        "FakeQuantize",
        "MovingAveragePerChannelMinMaxObserver",
        dict(quant_min=-128, quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=1),
    ),
    (
        "FakeQuantize",
        "MovingAveragePerChannelMinMaxObserver",
        dict(
            quant_min=0,
            quant_max=255,
            dtype=torch.quint8,
            qscheme=torch.per_channel_affine_float_qparams,
            ch_axis=0,
            averaging_constant=1,
        ),
    ),
    ("FakeQuantize", "HistogramObserver", dict(quant_min=-128, quant_max=127, dtype=torch.int8, bins=256)),
    (
        "FusedMovingAvgObsFakeQuantize",
        "MovingAverageMinMaxObserver",
        dict(quant_min=0, quant_max=255, dtype=torch.quint8),
    ),
    (
        "FusedMovingAvgObsFakeQuantize",
        "MovingAveragePerChannelMinMaxObserver",
        dict(
            quant_min=-127, quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0, eps=2**-12
        ),
    ),
]


def build(fq: str, obs: str, kwargs: dict):
    return getattr(pf, fq)(observer=getattr(po, obs), **kwargs), getattr(af, fq)(observer=getattr(ao, obs), **kwargs)


def step(ours, theirs, x: torch.Tensor) -> None:
    """One training step through both: equal outputs, input gradients and qparams."""
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(a), theirs(b)
    grad = torch.randn_like(ya)
    ya.backward(grad)
    yb.backward(grad)
    assert torch.equal(ya, yb)
    assert torch.equal(a.grad, b.grad)
    for name in ("scale", "zero_point"):
        mine, ref = getattr(ours, name), getattr(theirs, name)
        assert mine.dtype == ref.dtype and torch.equal(mine, ref), name


@pytest.mark.parametrize("fq,obs,kwargs", CONFIGS, ids=lambda c: str(c)[:60])
@given(seed=st.integers(0, 2**16), scales=st.lists(st.sampled_from([1e-3, 0.5, 1.0, 8.0]), min_size=1, max_size=4))
@settings(max_examples=5, deadline=None)
def test_forward_and_gradient_match_torchao(fq, obs, kwargs, seed, scales) -> None:
    ours, theirs = build(fq, obs, kwargs)
    gen = torch.Generator().manual_seed(seed)
    for i, scale in enumerate(scales):
        step(ours, theirs, torch.randn(4, 6, 5, generator=gen) * scale + i)
    for mod in (ours, theirs):  # frozen qparams keep fake-quantizing
        mod.disable_observer()
    step(ours, theirs, torch.randn(4, 6, 5, generator=gen) * 20)
    assert ours.has_statistics


def test_fixed_qparams_fake_quantize_matches_torchao() -> None:
    observer = po.FixedQParamsObserver.with_args(scale=1 / 256, zero_point=0, dtype=torch.quint8)
    ours = pf.FixedQParamsFakeQuantize(observer=observer)
    theirs = af.FixedQParamsFakeQuantize(observer=ao.default_fixed_qparams_range_0to1_observer)
    step(ours, theirs, torch.rand(3, 7) * 1.5 - 0.25)
    assert ours.calculate_qparams()[0] is ours.scale and ours.has_statistics
    with pytest.raises(TypeError):
        pf.FixedQParamsFakeQuantize(observer=po.MinMaxObserver)


@pytest.mark.parametrize(
    "name",
    [
        "default_fake_quant",
        "default_weight_fake_quant",
        "default_per_channel_weight_fake_quant",
        "default_dynamic_fake_quant",
    ],
)
def test_defaults_match_torchao(name: str) -> None:
    ours, theirs = getattr(pf, name)(), getattr(af, name)()
    for attr in ("dtype", "qscheme", "quant_min", "quant_max", "is_dynamic", "ch_axis"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    step(ours, theirs, torch.randn(5, 4) * 3)


def test_switches_work_with_model_apply() -> None:
    model = torch.nn.Sequential(pf.default_fake_quant(), torch.nn.ReLU(), pf.default_weight_fake_quant())
    x = torch.randn(8) * 4
    model.apply(pf.disable_fake_quant)
    assert torch.equal(model(x), torch.relu(x))
    scale = model[0].scale.clone()
    model.apply(pf.disable_observer)
    model(x * 100)
    assert torch.equal(model[0].scale, scale)  # frozen
    model.apply(pf.enable_fake_quant)
    model.apply(pf.enable_observer)
    y = model(x * 100)
    assert not torch.equal(model[0].scale, scale)  # observing again
    assert len(torch.unique(y)) <= 128 and not torch.equal(y, torch.relu(x * 100))  # fake-quantized again


def test_nan_is_an_error_naming_the_target() -> None:
    for fq in (pf.default_fake_quant(), pf.FusedMovingAvgObsFakeQuantize()):
        fq.target_name = "output of node 'conv2d'"
        assert fq.activation_post_process.target_name == "output of node 'conv2d'"
        with pytest.raises(ValueError, match="output of node 'conv2d'.*finite"):
            fq(torch.tensor([1.0, float("nan")]))


def test_has_statistics_and_attributes() -> None:
    fq = pf.default_per_channel_weight_fake_quant()
    assert not fq.has_statistics and fq.target_name == ""
    assert (fq.ch_axis, fq.is_per_channel, float(fq.eps)) == (0, True, torch.finfo(torch.float32).eps)
    fq(torch.randn(3, 4))
    assert fq.has_statistics and fq.scale.shape == (3,)
    fq = pf.FakeQuantize.with_args(observer=po.MovingAverageMinMaxObserver.with_args(eps=2**-12))(
        dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_symmetric, is_dynamic=False
    )
    assert (fq.quant_min, fq.quant_max, fq.qscheme, float(fq.eps)) == (-128, 127, torch.per_tensor_symmetric, 2**-12)


def test_state_dict_round_trip_into_a_fresh_module() -> None:
    fq = pf.default_per_channel_weight_fake_quant()
    w = torch.randn(6, 3)
    fq(w)
    fresh = pf.default_per_channel_weight_fake_quant()
    fresh.load_state_dict(fq.state_dict())
    fresh.disable_observer()
    assert torch.equal(fresh(w), fq(w)) and fresh.has_statistics
    buffer = io.BytesIO()
    torch.save(fq, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False).scale, fq.scale)
