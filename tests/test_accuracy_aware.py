"""pt2q.quantize (one call, accuracy-aware fallback), KeepFloat and bias correction on real exported graphs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import pt2q
from pt2q.accuracy_aware import output_sqnr
from pt2q.quantizers import (
    X86InductorQuantizer,
    XNNPACKQuantizer,
    get_default_x86_inductor_quantization_config,
    get_symmetric_quantization_config,
)
from tests.helpers import qdq_signature
from tests.transformer_zoo import TinyBert, token_batches

qd = torch.ops.quantized_decomposed


def _xnnpack() -> XNNPACKQuantizer:
    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))


@pytest.fixture(scope="module")
def bert():
    model = TinyBert(outliers=True, layers=1).eval()
    calibration, evaluation = token_batches(2), token_batches(2, seed=9)
    ep = torch.export.export(model, calibration[0])
    plain = pt2q.quantize(model, calibration[0], _xnnpack(), calibration, eval_data=evaluation, progress=False)
    return model, ep, calibration, evaluation, plain


def test_without_a_target_it_is_the_plain_flow(bert) -> None:
    model, ep, calibration, evaluation, result = bert
    manual = pt2q.prepare_pt2e(copy.deepcopy(ep.module()), _xnnpack())
    for b in calibration:
        manual(*b)
    manual = pt2q.convert_pt2e(manual)
    assert qdq_signature(result.model) == qdq_signature(manual)
    with torch.no_grad():
        assert all(torch.equal(result.model(*b), manual(*b)) for b in evaluation)
    quantized, report = result  # unpacks as (model, report)
    assert quantized is result.model and report.float_rows and result.steps == [] and not result.kept_float
    assert report.notes == [f"pt2q.quantize: output SQNR {result.metric:.1f} dB"]
    assert result.metric == pytest.approx(output_sqnr(ep.module(), result.model, evaluation))


def test_min_sqnr_keeps_the_most_sensitive_nodes_float(bert) -> None:
    model, ep, calibration, evaluation, plain = bert
    target = plain.metric + 4
    result = pt2q.quantize(ep, (), _xnnpack(), calibration, min_sqnr=target, eval_data=evaluation, progress=False)
    assert result.target_met and result.metric >= target
    assert result.metric == pytest.approx(output_sqnr(ep.module(), result.model, evaluation))
    # candidates in the sensitivity order of the first report; each kept one improved the SQNR
    assert [s.sensitivity_sqnr for s in result.steps] == sorted(s.sensitivity_sqnr for s in result.steps)
    assert all(s.after > s.before for s in result.steps if s.kept) and result.kept_float
    assert result.steps[0].before == pytest.approx(plain.metric)
    for step in result.steps:
        for layer in step.layers:
            row = result.report.row(layer)
            assert row.quantized != step.kept
            if step.kept:
                assert row.float_reason == f"kept float by pt2q.quantize: {step.before:.1f} dB -> {step.after:.1f} dB"
    assert result.report.notes[0].endswith("; target met")
    assert result.report.notes[1].startswith(f"accuracy fallback: {len(result.steps)} tries in sensitivity order")
    # the fallback is bounded: one pass tries one candidate
    bounded = pt2q.quantize(ep, (), _xnnpack(), calibration, min_sqnr=200, max_passes=1, progress=False)
    assert len(bounded.steps) == 1 and not bounded.target_met and bounded.report.notes[0].endswith("NOT met")


def test_a_user_metric_with_max_drop(bert) -> None:
    model, ep, calibration, evaluation, _ = bert
    calls = []

    def cosine(m) -> float:
        calls.append(m)
        with torch.no_grad():
            return float(
                torch.cat([torch.cosine_similarity(model(*b), m(*b), dim=-1).flatten() for b in evaluation]).mean()
            )

    result = pt2q.quantize(ep, (), _xnnpack(), calibration, metric=cosine, max_drop=1e-4, max_passes=3, progress=False)
    assert result.float_metric == pytest.approx(1.0)
    assert result.metric == pytest.approx(cosine(result.model))
    assert len(calls) == 2 + 1 + len(result.steps)  # float model, first try, each candidate, and the check above
    with pytest.raises(ValueError, match="max_drop needs a metric"):
        pt2q.quantize(ep, (), _xnnpack(), calibration, max_drop=0.01)
    with pytest.raises(ValueError, match="calibration_data is empty"):
        pt2q.quantize(ep, (), _xnnpack(), [])


def test_keep_float_strips_a_layer_and_what_shares_with_it(bert) -> None:
    _, ep, calibration, _, _ = bert
    for quantizer in (_xnnpack(), X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())):
        prepared = pt2q.prepare_pt2e(copy.deepcopy(ep.module()), pt2q.KeepFloat(quantizer, {"linear": "by hand"}))
        for b in calibration:
            prepared(*b)
        converted = pt2q.convert_pt2e(prepared)
        linear = next(n for n in converted.graph.nodes if n.name == "linear")
        assert all(
            a.op != "call_function"
            or a.target not in (qd.dequantize_per_tensor.default, qd.dequantize_per_channel.default)
            for a in linear.all_input_nodes
        )
        r = pt2q.report(converted, ep, None)
        assert r.row("linear").float_reason == "by hand" and r.row("linear_1").quantized
    # XNNPACK quantizes linear's output and lets view/transpose share it; kept float, they go with it
    view = next(n for n in converted.graph.nodes if n.name == "view")
    assert view.args[0].name == "linear"


def test_bias_correction_removes_the_mean_shift() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 64, bias=False), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    batches = [(torch.randn(64, 16),) for _ in range(3)]
    converted = pt2q.quantize(net, batches[0], _xnnpack(), batches, progress=False).model
    corrected = copy.deepcopy(converted)
    done = pt2q.correct_bias(corrected, torch.export.export(net, batches[0]).module(), batches)  # exported apart
    assert [c.layer for c in done] == ["linear", "linear_1", "linear_2"] and all(c.max_abs > 0 for c in done)

    def mean_shift(m) -> float:
        with torch.no_grad():
            return float(torch.cat([net(*b) - m(*b) for b in batches]).mean(0).abs().mean())

    assert mean_shift(corrected) < 0.3 * mean_shift(converted)
    # the first linear had no bias: it gets one
    first = next(n for n in corrected.graph.nodes if n.target == torch.ops.aten.linear.default)
    assert first.args[2].target.startswith("_bias_correction_")
