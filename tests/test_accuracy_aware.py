"""pt2q.quantize (one call, accuracy-aware fallback), KeepFloat and bias correction on real exported graphs."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn

import pt2q
import pt2q.runtime as runtime
from pt2q.algorithms.accuracy_aware import output_sqnr
from pt2q.algorithms.ladder_search import RelativeCost, estimate_cost, solve, work
from pt2q.algorithms.precision_ladder import FP32, MixedPrecision, annotated_layers
from pt2q.lowering import lower_pt2e_quantized_to_x86, to_executorch
from pt2q.lowering.delegation_report import XNNPACK
from pt2q.lowering.latency_cost import PteLatencyCost, X86LatencyCost, cpu_features
from pt2q.quantizers import (
    X86InductorQuantizer,
    XNNPACKQuantizer,
    get_default_x86_inductor_quantization_config,
    get_symmetric_quantization_config,
)
from pt2q.quantizers.ladders import DYNAMIC, DYNAMIC_PER_TOKEN, precision_ladder
from pt2q.runtime import compare_outputs
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


# --- the precision ladder: pt2q.quantize(..., ladder=..., cost=...) ----------------------------------------


@pytest.fixture(scope="module")
def outlier_bert():
    model = TinyBert(outliers=True, layers=2).eval()
    calibration, evaluation = token_batches(3), token_batches(2, seed=9)
    ep = torch.export.export(model, calibration[0])
    plain = pt2q.quantize(ep, (), _xnnpack(), calibration, eval_data=evaluation, progress=False)
    return ep, calibration, evaluation, plain


def _rung_model(ep, ladder, rung: str, calibration):
    """Every layer the rung applies to on it (the rest on the base), converted."""
    float_gm = ep.module()
    layers = (
        annotated_layers(
            ladder.base.quantizer.transform_for_annotation(copy.deepcopy(float_gm)), ladder[rung].quantizer
        )
        if ladder[rung].quantizer
        else {n.name for n in float_gm.graph.nodes if n.target == torch.ops.aten.linear.default}
    )
    prepared = pt2q.prepare_pt2e(copy.deepcopy(float_gm), MixedPrecision(ladder, dict.fromkeys(layers, rung)))
    for b in calibration:
        prepared(*b)
    return pt2q.convert_pt2e(prepared), layers


def test_every_xnnpack_rung_lowers_into_the_delegate_and_computes_right(outlier_bert) -> None:
    """One program with all three rungs: the first block's attention linears dynamic per token, the second
    block's FFN linears fp32, the rest static int8; every linear runs in XNNPACK in its rung's precision."""
    ep, calibration, evaluation, _ = outlier_bert
    ladder = precision_ladder(_xnnpack())
    rungs = dict.fromkeys(["linear", "linear_1", "linear_2", "linear_3"], DYNAMIC_PER_TOKEN)
    rungs |= dict.fromkeys(["linear_10", "linear_11"], FP32)
    prepared = pt2q.prepare_pt2e(copy.deepcopy(ep.module()), MixedPrecision(ladder, rungs))
    for b in calibration:
        prepared(*b)
    converted = pt2q.convert_pt2e(prepared)
    lowered = to_executorch(converted, calibration[0], strict=True)  # strict: a quantized op left outside raises
    linears = {r.source: r for r in lowered.report.rows if r.op == "aten.linear"}
    assert len(linears) == 12 and all(r.runs_on == XNNPACK for r in linears.values())
    assert not lowered.report.fallbacks
    for name, row in linears.items():  # fp32 linears keep float weights (the report calls linear_11 int8: the
        rung = rungs.get(name, "static int8")  # residual add after it quantizes its output)
        assert row.weight_dtype == (torch.float32 if rung == FP32 else torch.int8), (name, rung)
        assert row.precision == "int8" or name in ("linear_10", "linear_11"), name
    assert linears["linear_10"].precision == "fp32"
    dynamic = [n for n in converted.graph.nodes if "choose_qparams" in str(n.target)]
    assert len(dynamic) == 2  # per-token qparams chosen at run time: one for q/k/v's shared input, one for attn_out
    program = runtime.load(lowered.buffer)
    for b in evaluation:  # the .pte computes what the Q/DQ graph computes
        with torch.no_grad():
            assert compare_outputs(program(*b), converted(*b)).sqnr_db > 45
    report = pt2q.report(converted, ep, None)
    assert report.row("linear_11").float_reason == "fp32 rung chosen by pt2q.quantize"


def test_the_ladder_meets_a_target_cheaper_than_the_fp32_fallback(outlier_bert) -> None:
    ep, calibration, evaluation, plain = outlier_bert
    target = plain.metric + 8
    ladder = precision_ladder(_xnnpack())
    result = pt2q.quantize(
        ep, (), ladder.base.quantizer, calibration, min_sqnr=target, eval_data=evaluation, ladder=ladder, progress=False
    )
    assert result.target_met and result.metric >= target
    assert result.metric == pytest.approx(output_sqnr(ep.module(), result.model, evaluation))
    # round 0 is the plain flow, round 1 the dynamic rung everywhere it applies; bounded by max_passes
    assert [t.round for t in result.tries] == list(range(result.rounds)) and 3 <= result.rounds <= 12
    assert result.tries[0].label == "all static int8" and result.tries[0].score == pytest.approx(plain.metric)
    assert result.tries[1].counts == {"static int8": 5, DYNAMIC_PER_TOKEN: 12}  # adds stay static there
    # every choice says what it costs and buys, and the returned model is what the choice says
    assert result.choices and all(c.sqnr > c.base_sqnr and c.rung == result.choice[c.layer] for c in result.choices)
    rows = {r.name: r for r in result.report.rows}
    for layer, rung in result.choice.items():
        how = rows[layer].how
        assert how.startswith("float: fp32 rung") if rung == FP32 else "i:int8 dynamic blocks (1, 1, " in how, how
    # the fp32-only fallback meets the same target at a cost no lower, on the same cost model
    fallback = pt2q.quantize(ep, (), _xnnpack(), calibration, min_sqnr=target, eval_data=evaluation, progress=False)
    assert fallback.target_met
    costs = RelativeCost().layer_costs(ep.module(), {layer: list(ladder) for layer in rows})
    assert result.cost <= estimate_cost(costs, dict.fromkeys(fallback.kept_float, FP32), "static int8") + 1e-9
    assert result.cost < result.float_cost
    table = result.trade_off_table()
    assert table.count("\n") == result.rounds + 2 and "<- returned" in table and "all fp32 (not run)" in table
    assert result.report.notes[-1].startswith(f"precision ladder (static int8 -> {DYNAMIC_PER_TOKEN} -> fp32)")
    # bounded: two rounds are two rounds, and the best of them is returned
    bounded = pt2q.quantize(
        ep, (), ladder.base.quantizer, calibration, min_sqnr=200, eval_data=evaluation, ladder=ladder, max_passes=2
    )
    assert bounded.rounds == 2 and not bounded.target_met and bounded.metric == max(t.score for t in bounded.tries)


def test_a_user_metric_on_x86_with_the_ladder(outlier_bert, tmp_path) -> None:
    ep, calibration, evaluation, _ = outlier_bert
    model = ep.module()

    def closeness(m) -> float:  # a user metric, higher is better: minus the worst absolute error
        with torch.no_grad():
            return -max(float((model(*b) - m(*b)).abs().max()) for b in evaluation)

    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    plain = pt2q.quantize(ep, (), quantizer, calibration, metric=closeness, progress=False)
    drop = -plain.metric / 3
    result = pt2q.quantize(
        ep,
        (),
        quantizer,
        calibration,
        metric=closeness,
        max_drop=drop,
        ladder=precision_ladder(quantizer),
        progress=False,
    )
    assert result.target_met and -result.metric <= drop and result.float_metric == 0.0
    assert result.tries[1].label == f"all {DYNAMIC}" or DYNAMIC in result.tries[1].label
    assert result.rounds <= 12 and result.cost < result.float_cost
    # every x86 rung lowers to oneDNN int8 kernels (FX lowering: the ops Inductor compiles)
    ladder = precision_ladder(quantizer)
    for rung in ("static int8", DYNAMIC):
        converted, layers = _rung_model(ep, ladder, rung, calibration)
        lowered = lower_pt2e_quantized_to_x86(converted, calibration[0])
        qlinears = [n for n in lowered.graph.nodes if str(n.target).startswith("onednn.qlinear")]
        assert len(qlinears) == 12, rung
        with torch.no_grad():
            assert compare_outputs(lowered(*evaluation[0]), converted(*evaluation[0])).sqnr_db > 30
    figure = result.plot_trade_off(tmp_path / "trade_off.png")
    assert (tmp_path / "trade_off.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(figure.axes[0].collections) == result.rounds


def test_plain_int8_enough_costs_one_round_and_changes_nothing() -> None:
    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 4)
    )
    batches = [(torch.randn(2, 3, 8, 8),) for _ in range(3)]
    plain = pt2q.quantize(cnn.eval(), batches[0], _xnnpack(), batches, progress=False)
    ladder = precision_ladder(_xnnpack())
    result = pt2q.quantize(
        cnn, batches[0], ladder.base.quantizer, batches, min_sqnr=plain.metric - 1, ladder=ladder, progress=False
    )
    assert result.rounds == 1 and result.choice == {} and result.target_met
    assert qdq_signature(result.model) == qdq_signature(plain.model)
    with torch.no_grad():
        assert all(torch.equal(result.model(*b), plain.model(*b)) for b in batches)
    with pytest.raises(ValueError, match="first rung must be the quantizer"):
        pt2q.quantize(cnn, batches[0], _xnnpack(), batches, min_sqnr=10, ladder=ladder, progress=False)


def test_measured_layer_costs_are_cached_per_cpu(outlier_bert, tmp_path) -> None:
    ep, *_ = outlier_bert
    ladder = precision_ladder(_xnnpack())
    cost = PteLatencyCost(runs=3, rounds=1, cache_path=tmp_path / "costs.json", progress=False)
    float_gm = ep.module()
    requests = {"linear": list(ladder), "linear_5": list(ladder), "add_3": list(ladder)}
    costs = cost.layer_costs(float_gm, requests)
    # linear and linear_5 have different shapes (32->32, 64->32): two layers x three rungs timed; the add is free
    assert cost.measured == 6 and costs["add_3"] == dict.fromkeys(costs["add_3"], 0.0)
    assert set(costs["linear"]) == {"static int8", DYNAMIC_PER_TOKEN, FP32}
    assert all(0 < ms < float("inf") for layer in ("linear", "linear_5") for ms in costs[layer].values())
    # linear_1 has linear's shape: served from the cache, as is everything from the file in a new model
    again = PteLatencyCost(cache_path=tmp_path / "costs.json", progress=False)
    assert again.layer_costs(float_gm, {"linear_1": list(ladder)})["linear_1"] == costs["linear"]
    assert again.measured == 0
    keys = json.loads((tmp_path / "costs.json").read_text())
    features = ",".join(k for k, v in sorted(cpu_features().items()) if v)
    assert len(keys) == 6 and all(k.startswith(f"PteLatencyCost|{features}|") for k in keys)


class Avx2LikeCost:
    """Per-MAC latencies shaped like MiniLM's XNNPACK .pte on an AVX2-only CPU (issue 22, one thread):
    static int8 131 ms, fp32 133 ms, dynamic int8 121 ms; other ops cost the same on every rung."""

    name, unit = "AVX2-only shape", "ms"
    RATES = {"static int8": 131.0, DYNAMIC_PER_TOKEN: 121.0, FP32: 133.0}

    def layer_costs(self, float_gm, requests):
        nodes = {n.name: n for n in float_gm.graph.nodes}
        linear = torch.ops.aten.linear.default
        return {
            layer: {
                r.name: (self.RATES[r.name] * work(nodes[layer]) / 1e6 if nodes[layer].target == linear else 0.0)
                for r in rungs
            }
            for layer, rungs in requests.items()
        }


def test_where_static_int8_is_no_faster_the_search_takes_the_cheaper_rung(outlier_bert) -> None:
    ep, calibration, evaluation, plain = outlier_bert
    ladder = precision_ladder(_xnnpack())
    # the plain flow meets this target, but dynamic int8 is cheaper here: one more round finds it
    easy = pt2q.quantize(
        ep,
        (),
        ladder.base.quantizer,
        calibration,
        min_sqnr=plain.metric - 3,
        eval_data=evaluation,
        ladder=ladder,
        cost=Avx2LikeCost(),
        progress=False,
    )
    assert easy.target_met and easy.rounds >= 2 and easy.tries[0].met
    assert easy.cost < easy.base_cost and DYNAMIC_PER_TOKEN in easy.choice.values()
    # a harder target: still cheaper than static everywhere, and the static rung is only kept where dynamic misses
    hard = pt2q.quantize(
        ep,
        (),
        ladder.base.quantizer,
        calibration,
        min_sqnr=plain.metric + 8,
        eval_data=evaluation,
        ladder=ladder,
        cost=Avx2LikeCost(),
        progress=False,
    )
    assert hard.target_met and hard.cost < hard.base_cost
    assert all(hard.choice.get(layer) for layer in ("linear", "linear_5"))  # every linear moved off static


def test_solve_takes_the_cheapest_rungs_and_keeps_free_layers_on_the_base() -> None:
    base, dyn = "static int8", DYNAMIC_PER_TOKEN
    options = {  # layer -> rung -> (share of output noise, cost)
        "linear": {base: (4e-3, 1.0), dyn: (1e-4, 1.05), FP32: (0.0, 3.0)},
        "linear_1": {base: (1e-4, 1.0), dyn: (5e-5, 0.9), FP32: (0.0, 3.0)},  # dynamic is cheaper here (AVX2)
        "add": {base: (2e-4, 0.0), FP32: (0.0, 0.0)},  # free to move: stays on the base unless needed
    }
    assert solve(options, 1e-3, base) == {"linear": dyn, "linear_1": dyn, "add": base}
    assert solve(options, 1.5e-4, base) == {"linear": dyn, "linear_1": dyn, "add": FP32}
    assert solve(options, 0.0, base) == {"linear": FP32, "linear_1": FP32, "add": FP32}
    assert solve(options, 1.0, base) == {"linear": base, "linear_1": dyn, "add": base}


def test_x86_layer_costs_are_compiled_latencies(outlier_bert) -> None:
    ep, *_ = outlier_bert
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    ladder = precision_ladder(quantizer)
    cost = X86LatencyCost(runs=3, rounds=1, progress=False)
    costs = cost.layer_costs(
        ep.module(), {"linear_4": [ladder["static int8"], ladder[DYNAMIC]], "layer_norm": list(ladder)}
    )
    assert cost.measured == 2 and set(costs["linear_4"]) == {"static int8", DYNAMIC}
    assert all(0 < ms < float("inf") for ms in costs["linear_4"].values())
    assert costs["layer_norm"] == dict.fromkeys(costs["layer_norm"], 0.0) and cost.name.startswith(
        "Inductor/oneDNN latency"
    )
