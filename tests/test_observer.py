"""Observers and qparams arithmetic: bit-for-bit equality with torchao, edge cases, errors, state."""

from __future__ import annotations

import copy
import io
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pt2q.observer as po
from pt2q.numerics.dtypes import quant_range
from pt2q.numerics.histograms import accumulate_histc_, search_histogram_range
from pt2q.numerics.metrics import sqnr
from pt2q.numerics.qparams import choose_qparams, dequantize, fake_quantize, quantize

ao = pytest.importorskip("torchao.quantization.pt2e.observer")
qd = torch.ops.quantized_decomposed
FAST = settings(max_examples=25, deadline=None)
pytestmark = pytest.mark.filterwarnings("ignore:Please use quant_min and quant_max")  # torchao on reduce_range

PER_TENSOR_CONFIGS = [
    dict(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine, eps=2**-12),
    dict(dtype=torch.int8, qscheme=torch.per_tensor_symmetric),
    dict(dtype=torch.qint8, quant_min=-127, quant_max=127, qscheme=torch.per_tensor_symmetric),
    dict(dtype=torch.quint8, qscheme=torch.per_tensor_symmetric),  # default range: zero point 128
    dict(dtype=torch.uint8, quant_min=0, quant_max=200, qscheme=torch.per_tensor_symmetric),  # midpoint 100
    dict(dtype=torch.quint8, reduce_range=True),
    dict(dtype=torch.qint8, quant_min=-64, quant_max=63, reduce_range=True),
    dict(dtype=torch.int16, qscheme=torch.per_tensor_symmetric),
    dict(dtype=torch.int32, qscheme=torch.per_tensor_affine),
]
PER_CHANNEL_CONFIGS = [
    dict(dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0),
    dict(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric, ch_axis=1, eps=2**-12),
    dict(dtype=torch.quint8, qscheme=torch.per_channel_affine, ch_axis=-1),
    dict(dtype=torch.quint8, qscheme=torch.per_channel_affine_float_qparams, ch_axis=0),
    dict(dtype=torch.uint8, quant_min=0, quant_max=255, qscheme=torch.per_channel_affine, ch_axis=2, reduce_range=True),
]


def same(ours: tuple[torch.Tensor, ...], theirs: tuple[torch.Tensor, ...]) -> bool:
    """Equal values, shapes and dtypes."""
    return all(a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) for a, b in zip(ours, theirs))


def feed(name: str, kwargs: dict, batches: list[torch.Tensor]) -> tuple[torch.nn.Module, torch.nn.Module]:
    ours, theirs = getattr(po, name)(**kwargs), getattr(ao, name)(**kwargs)
    for x in batches:
        ours(x)
        theirs(x)
    return ours, theirs


def assert_same_state(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    mine, ref = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == ref.keys()
    for key in ref:
        assert torch.equal(mine[key], ref[key]), key
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert same(ours.calculate_qparams(), theirs.calculate_qparams())


shapes = st.lists(st.integers(1, 9), min_size=1, max_size=4)
magnitudes = st.sampled_from([1e-6, 1e-2, 1.0, 30.0, 1e4])


def make_batches(seed: int, shape: list[int], n: int, scale: float, vary_shape: bool) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        s = [max(1, d + i % 3) for d in shape] if vary_shape else shape
        kind = (seed + i) % 4
        x = torch.randn(s, generator=gen) * scale * (1 + i)
        out.append(x if kind else torch.relu(x) + scale)  # some batches are all positive
    return out


@pytest.mark.parametrize("name", ["MinMaxObserver", "MovingAverageMinMaxObserver"])
@pytest.mark.parametrize("kwargs", PER_TENSOR_CONFIGS, ids=str)
@given(seed=st.integers(0, 2**16), shape=shapes, scale=magnitudes, n=st.integers(1, 4))
@settings(max_examples=8, deadline=None)
def test_per_tensor_minmax_match_torchao(name, kwargs, seed, shape, scale, n) -> None:
    kwargs = dict(kwargs, averaging_constant=0.3) if name.startswith("Moving") else kwargs
    ours, theirs = feed(name, kwargs, make_batches(seed, shape, n, scale, vary_shape=True))
    assert_same_state(ours, theirs)
    assert (ours.quant_min, ours.quant_max) == (theirs.quant_min, theirs.quant_max)


@pytest.mark.parametrize("name", ["PerChannelMinMaxObserver", "MovingAveragePerChannelMinMaxObserver"])
@pytest.mark.parametrize("kwargs", PER_CHANNEL_CONFIGS, ids=str)
@given(seed=st.integers(0, 2**16), shape=st.lists(st.integers(1, 9), min_size=3, max_size=4), n=st.integers(1, 3))
@settings(max_examples=8, deadline=None)
def test_per_channel_match_torchao(name, kwargs, seed, shape, n) -> None:
    kwargs = dict(kwargs, averaging_constant=0.5) if name.startswith("Moving") else kwargs
    ours, theirs = feed(name, kwargs, make_batches(seed, shape, n, 1.0, vary_shape=False))
    assert_same_state(ours, theirs)


HIST_CONFIGS = [
    dict(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine, eps=2**-12),
    dict(dtype=torch.quint8, qscheme=torch.per_tensor_symmetric),
    dict(dtype=torch.qint8, reduce_range=True, bins=1000),
]


@pytest.mark.parametrize("kwargs", HIST_CONFIGS, ids=str)
@given(
    seed=st.integers(0, 2**16),
    sizes=st.lists(st.sampled_from([1, 3, 500, 2047, 3000, 9000]), min_size=1, max_size=6),
    scales=st.lists(st.sampled_from([0.0, 1e-3, 0.5, 1.0, 2.0, 40.0]), min_size=6, max_size=6),
    shifts=st.lists(st.sampled_from([0.0, -1.0, 3.0]), min_size=6, max_size=6),
)
@settings(max_examples=6, deadline=None)
def test_histogram_matches_torchao_as_ranges_grow_and_shrink(kwargs, seed, sizes, scales, shifts) -> None:
    gen = torch.Generator().manual_seed(seed)
    ours, theirs = po.HistogramObserver(**kwargs), ao.HistogramObserver(**kwargs)
    for n, scale, shift in zip(sizes, scales, shifts):
        x = torch.randn(n, generator=gen) * scale + shift  # scale 0: a constant batch
        ours(x)
        theirs(x)
        assert torch.equal(ours.histogram, theirs.histogram)
        assert torch.equal(ours.min_val, theirs.min_val) and torch.equal(ours.max_val, theirs.max_val)
    assert_same_state(ours, theirs)


def test_histogram_matches_torchao_on_non_float32_and_strided_input() -> None:
    x = torch.randn(64, 80).t()
    for batch in (x, x.to(torch.bfloat16), x * 3):
        ours, theirs = feed("HistogramObserver", HIST_CONFIGS[0], [batch, batch[:5] * 2])
        assert_same_state(ours, theirs)


@given(
    seed=st.integers(0, 2**16),
    bins=st.sampled_from([2048, 1000, 256, 7]),
    lo=st.floats(-1e6, 1e6, width=32),
    log_span=st.floats(-30, 20),
    n=st.sampled_from([1, 100, 5000]),
)
@FAST
def test_accumulate_histc_is_torch_histc_even_on_bin_edges(seed, bins, lo, log_span, n) -> None:
    hi = torch.tensor(lo + 10.0**log_span).item()
    if not hi > lo:
        return
    gen = torch.Generator().manual_seed(seed)
    edges = torch.linspace(lo, hi, bins + 1)
    x = edges[torch.randint(0, bins + 1, (n,), generator=gen)]
    toward = torch.where(torch.rand(n, generator=gen) < 0.5, -math.inf, math.inf)
    x = torch.where(torch.rand(n, generator=gen) < 0.5, x, torch.nextafter(x, toward)).clamp(lo, hi)
    hist = torch.rand(bins, generator=gen) * 7  # accumulates onto a non-integer histogram
    expected = hist + torch.histc(x, bins, lo, hi)
    assert torch.equal(accumulate_histc_(hist, x, lo, hi), expected)


def random_histogram(seed: int, bins: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    kind = seed % 5
    if kind == 0:  # bell with long tails
        return torch.histc(torch.randn(20000, generator=gen) ** 3, bins)
    if kind == 1:  # sparse spikes
        h = torch.zeros(bins)
        h[torch.randint(0, bins, (12,), generator=gen)] = torch.randint(1, 500, (12,), generator=gen).float()
        return h
    if kind == 2:  # fractional mass, as after re-binning
        return torch.rand(bins, generator=gen) ** 8 * 40
    if kind == 3:  # skewed (post-ReLU) with an outlier bin
        h = torch.histc(torch.relu(torch.randn(5000, generator=gen)), bins)
        h[-1] += 1
        return h
    return torch.histc(torch.rand(3000, generator=gen), bins)


@pytest.mark.parametrize("seed", range(10))
def test_l2_range_search_matches_torchao(seed: int) -> None:
    bins = 2048 if seed % 2 else 512
    hist = random_histogram(seed, bins)
    lo, hi = torch.tensor(-1.5 - seed), torch.tensor(2.0 + seed * 0.5)
    theirs = ao.HistogramObserver(bins=bins, dtype=torch.int8)
    theirs.histogram.copy_(hist)
    theirs.min_val.copy_(lo)
    theirs.max_val.copy_(hi)
    ours = search_histogram_range(hist, lo, hi, 256)
    expected = theirs._non_linear_param_search()
    assert torch.equal(ours[0], expected[0]) and torch.equal(ours[1], expected[1])


@pytest.mark.parametrize(
    "data",
    [
        torch.zeros(10),
        torch.full((3, 4), 2.5),
        torch.full((5,), -1e-30),
        torch.tensor([7.0]),
        torch.tensor([-1e30, 1e30]),
        torch.tensor([1e-30, 2e-30]),
        torch.tensor([0.0, 1e-20]),
    ],
    ids=["zeros", "constant", "tiny-constant", "single", "huge", "tiny", "near-zero"],
)
@pytest.mark.parametrize(
    "name,kwargs",
    [("MinMaxObserver", c) for c in PER_TENSOR_CONFIGS[:6]]
    + [("HistogramObserver", HIST_CONFIGS[0])]
    + [("PerChannelMinMaxObserver", c) for c in PER_CHANNEL_CONFIGS[:3]],
)
def test_zero_is_exact_and_scale_positive_on_degenerate_data(data, name, kwargs) -> None:
    if name.startswith("PerChannel"):
        data = data.reshape(1, 1, -1).expand(2, 2, -1)
    ours, theirs = feed(name, kwargs, [data])
    scale, zero_point = ours.calculate_qparams()
    assert same((scale, zero_point), theirs.calculate_qparams())
    assert bool((scale > 0).all()) and bool(torch.isfinite(scale).all())
    assert bool(((zero_point >= ours.quant_min) & (zero_point <= ours.quant_max)).all())  # 0.0 maps to zero_point


def test_choose_qparams_is_a_pure_function_of_the_range() -> None:
    lo, hi = torch.tensor([-1.0, 0.5, 0.0]), torch.tensor([2.0, 3.0, 0.0])
    scale, zp = choose_qparams(lo, hi, -128, 127, False, 2**-12, torch.int8)
    assert torch.equal(scale, torch.tensor([3.0, 3.0, 0.0]) / 255 + torch.tensor([0, 0, 2**-12]))
    assert zp.dtype == torch.int32 and zp.tolist() == [-43, -128, -128]
    scale, zp = choose_qparams(torch.tensor(-4.0), torch.tensor(1.0), 0, 255, True, 1e-5, torch.uint8)
    assert scale.shape == (1,) and zp.tolist() == [127] and math.isclose(scale.item(), 8 / 255, rel_tol=1e-6)


@pytest.mark.parametrize(
    "dtype,expected",
    [
        (torch.qint8, (-128, 127)),
        (torch.quint8, (0, 255)),
        (torch.int16, (-(2**15), 2**15 - 1)),
        (torch.int32, (-(2**31), 2**31 - 1)),
    ],
)
def test_quant_range_defaults_and_q_dtypes(dtype, expected) -> None:
    assert quant_range(dtype) == expected
    assert po.MinMaxObserver(dtype=dtype, quant_min=None, quant_max=None).quant_max == expected[1]


def test_quantize_dequantize_match_quantized_decomposed() -> None:
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers quantized_decomposed)

    x = torch.randn(4, 6, 5) * 3
    q = quantize(x, 0.02, 3, -128, 127, torch.qint8)
    assert torch.equal(q, qd.quantize_per_tensor(x, 0.02, 3, -128, 127, torch.int8))
    assert torch.equal(dequantize(q, 0.02, 3), qd.dequantize_per_tensor(q, 0.02, 3, -128, 127, torch.int8))
    scales, zps = torch.rand(6) / 10 + 0.01, torch.randint(-5, 5, (6,))
    q = quantize(x, scales, zps, -128, 127, torch.int8, axis=1)
    assert torch.equal(q, qd.quantize_per_channel(x, scales, zps, 1, -128, 127, torch.int8))
    expected = qd.dequantize_per_channel(q, scales, zps, 1, -128, 127, torch.int8)
    assert torch.equal(dequantize(q, scales, zps, axis=1), expected)
    fq = fake_quantize(x, scales, zps, -128, 127, axis=1)
    assert torch.equal(fq, torch.fake_quantize_per_channel_affine(x, scales, zps.int(), 1, -128, 127))
    expected = torch.fake_quantize_per_tensor_affine(x, 0.02, 3, -128, 127)
    assert torch.equal(fake_quantize(x, 0.02, 3, -128, 127), expected)


def test_sqnr() -> None:
    x = torch.ones(100)
    assert sqnr(x, x) == math.inf
    assert math.isclose(sqnr(x, x * 1.1), 20.0, rel_tol=1e-6)  # noise is 10% of the signal


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("MinMaxObserver", {}),
        ("MovingAverageMinMaxObserver", {}),
        ("HistogramObserver", {}),
        ("PerChannelMinMaxObserver", {"ch_axis": 1}),
    ],
)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_data_is_an_error_naming_the_target(name, kwargs, bad) -> None:
    obs = getattr(po, name)(**kwargs)
    obs.target_name = "output of node 'conv2d'"
    x = torch.randn(3, 4)
    x[1, 2] = bad
    with pytest.raises(ValueError, match=r"output of node 'conv2d'.*must be finite"):
        obs(x)
    assert not obs.has_statistics


def test_ch_axis_out_of_range_names_it() -> None:
    obs = po.PerChannelMinMaxObserver(ch_axis=3)
    obs.target_name = "weight of node 'linear'"
    with pytest.raises(ValueError, match=r"weight of node 'linear'.*ch_axis=3"):
        obs(torch.randn(4, 5))
    obs = po.PerChannelMinMaxObserver(ch_axis=0)
    obs(torch.randn(4, 5))
    with pytest.raises(ValueError, match="channels"):
        obs(torch.randn(3, 5))


@pytest.mark.parametrize(
    "name,qscheme",
    [
        ("MinMaxObserver", torch.per_channel_symmetric),
        ("HistogramObserver", torch.per_channel_affine),
        ("PerChannelMinMaxObserver", torch.per_tensor_affine),
        ("FixedQParamsObserver", torch.per_channel_affine),
    ],
)
def test_unsupported_qscheme_fails_at_construction(name, qscheme) -> None:
    kwargs = {"scale": 0.1, "zero_point": 0} if name.startswith("Fixed") else {}
    with pytest.raises(ValueError, match="qscheme"):
        getattr(po, name)(qscheme=qscheme, **kwargs)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="dtype"):
        po.MinMaxObserver(dtype=torch.float32)
    with pytest.raises(ValueError, match="include 0"):
        po.MinMaxObserver(dtype=torch.int8, quant_min=1, quant_max=127)
    with pytest.raises(ValueError, match="does not fit"):
        po.MinMaxObserver(dtype=torch.int8, quant_min=-300, quant_max=127)
    with pytest.raises(ValueError, match="dynamic"):
        po.HistogramObserver(is_dynamic=True)
    with pytest.raises(TypeError, match="ch_axis"):
        po.MinMaxObserver(ch_axis=0)


def test_with_args_merges_and_chains() -> None:
    ctr = po.HistogramObserver.with_args(eps=2**-12).with_args(bins=64)
    obs = ctr(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine, is_dynamic=False)
    assert (obs.bins, obs.eps.item(), obs.dtype, obs.quant_min) == (64, 2**-12, torch.int8, -128)
    assert ctr(bins=32).bins == 32  # the later call wins
    assert ctr.with_args(bins=16)().bins == 16
    obs = po.PerChannelMinMaxObserver.with_args(eps=2**-12)(
        dtype=torch.int8, quant_min=None, quant_max=None, qscheme=None, is_dynamic=False, ch_axis=1
    )
    assert (obs.qscheme, obs.quant_min, obs.quant_max, obs.ch_axis) == (torch.per_channel_affine, -128, 127, 1)


def test_has_statistics_and_uncalibrated_qparams() -> None:
    for obs in (
        po.MinMaxObserver(),
        po.HistogramObserver(),
        po.PerChannelMinMaxObserver(),
        po.MovingAverageMinMaxObserver(),
    ):
        assert not obs.has_statistics and obs.target_name == ""
        obs(torch.empty(0))
        assert not obs.has_statistics
        with pytest.warns(UserWarning):
            assert same(obs.calculate_qparams(), (torch.tensor([1.0]), torch.tensor([0])))
        obs(torch.randn(2, 3))
        assert obs.has_statistics
        if hasattr(obs, "reset_min_max_vals"):
            obs.reset_min_max_vals()
            assert not obs.has_statistics
    fixed = po.FixedQParamsObserver(scale=1 / 256, zero_point=0, dtype=torch.quint8)
    assert fixed.has_statistics and (fixed.quant_min, fixed.quant_max) == (0, 255)
    assert same(fixed.calculate_qparams(), (torch.tensor([1 / 256]), torch.tensor([0], dtype=torch.int)))
    for obs in (po.PlaceholderObserver(), po.NoopObserver(), po.default_dynamic_quant_observer()):
        assert obs.has_statistics and torch.equal(obs(torch.ones(2)), torch.ones(2))
        with pytest.raises(RuntimeError):
            obs.calculate_qparams()


def test_defaults_match_torchao() -> None:
    x = torch.randn(6, 10) * 2
    for name in (
        "default_observer",
        "default_weight_observer",
        "default_per_channel_weight_observer",
        "default_histogram_observer",
        "default_float_qparams_observer",
    ):
        ours, theirs = getattr(po, name)(), getattr(ao, name)()
        ours(x), theirs(x)
        assert_same_state(ours, theirs)
    dyn, ref = po.default_dynamic_quant_observer(), ao.default_dynamic_quant_observer()
    assert (dyn.dtype, dyn.quant_min, dyn.quant_max, dyn.is_dynamic) == (ref.dtype, ref.quant_min, ref.quant_max, True)
    assert po.default_placeholder_observer().dtype == ao.default_placeholder_observer().dtype


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("MinMaxObserver", PER_TENSOR_CONFIGS[0]),
        ("PerChannelMinMaxObserver", PER_CHANNEL_CONFIGS[0]),
        ("HistogramObserver", HIST_CONFIGS[0]),
    ],
)
def test_a_buffer_refilled_behind_torchs_back_is_observed_every_call(name, kwargs) -> None:
    """A calibration loop that refills one numpy-backed tensor (its version counter never moves)
    is observed on every call, exactly as if each batch were a fresh tensor."""
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((8, 4)).astype(np.float32) * (i + 1) for i in range(3)]
    buffer = np.empty((8, 4), dtype=np.float32)
    shared = torch.from_numpy(buffer)
    refilled = getattr(po, name)(**kwargs)
    for batch in batches:
        buffer[...] = batch
        refilled(shared)
    assert_same_state(refilled, feed(name, kwargs, [torch.from_numpy(b) for b in batches])[1])  # torchao, fresh tensors


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("HistogramObserver", HIST_CONFIGS[0]),
        ("PerChannelMinMaxObserver", PER_CHANNEL_CONFIGS[1]),
        ("MinMaxObserver", PER_TENSOR_CONFIGS[0]),
    ],
)
def test_state_dict_save_load_and_copies(name, kwargs) -> None:
    obs = getattr(po, name)(**kwargs)
    x = torch.randn(3, 5, 2)
    obs(x)
    obs(x * 2)
    fresh = getattr(po, name)(**kwargs)
    fresh.load_state_dict(obs.state_dict())
    buffer = io.BytesIO()
    torch.save(obs, buffer)
    buffer.seek(0)
    for other in (fresh, copy.deepcopy(obs), torch.load(buffer, weights_only=False)):
        assert same(other.calculate_qparams(), obs.calculate_qparams())
        assert other.state_dict().keys() == obs.state_dict().keys()
