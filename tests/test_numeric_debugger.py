"""Numeric debugger: debug handles through prepare/convert/save/load/lowering, and torchao parity."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
from expecttest import assert_expected_inline
from torch.utils import _pytree as pytree

import pt2q
from pt2q.debug.numeric_debugger import CUSTOM_KEY, NUMERIC_DEBUG_HANDLE_KEY, OutputLogger, anchor_nodes, debug_info
from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config
from tests.zoo import calibration_batches, make

torchao_nd = pytest.importorskip("torchao.quantization.pt2e._numeric_debugger")
et_xnnpack = pytest.importorskip("executorch.backends.xnnpack.quantizer.xnnpack_quantizer")


def _quantize(prepare, convert, quantizer, ep, batches):
    m = prepare(ep.module(), quantizer)
    for b in batches:
        m(*b)
    return convert(m)


def _pt2q(ep, batches, **config):
    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(**config))
    return _quantize(pt2q.prepare_pt2e, pt2q.convert_pt2e, q, ep, batches)


def _logged(prepare_cmp, extract, model, batches):
    logged = prepare_cmp(model)
    for b in batches:
        logged(*b)
    return extract(logged)


def _float_handles(gm):
    return {h for n in gm.graph.nodes if n.op == "call_function" and (h := debug_info(n)) is not None}


def _numbers(summary) -> dict[str, tuple[float, float]]:
    """(SQNR, MSE) per node and tensor (nodes with several outputs give several entries)."""
    out = {}
    for s in summary.values():
        assert len(s.results) >= 1
        r = s.results[0]
        for i, (sqnr, mse) in enumerate(zip(pytree.tree_leaves(r.sqnr), pytree.tree_leaves(r.mse_loss))):
            out[f"{s.ref_node_name}[{i}]"] = (float(sqnr), float(mse))
    return out


@pytest.mark.parametrize("name", ["conv_bn_relu_stack", "residual", "attention", "mlp"])
def test_handles_survive_prepare_and_convert(name: str) -> None:
    model, example = make(name)
    ep = torch.export.export(model, example)
    handles = _float_handles(ep.module())
    prepared = pt2q.prepare_pt2e(ep.module(), XNNPACKQuantizer().set_global(get_symmetric_quantization_config()))
    prepared(*example)
    batch_norms = {h for h in handles if "batch_norm" in h.name}  # folded into their convs by prepare
    assert handles - batch_norms <= _float_handles(prepared)
    converted = pt2q.convert_pt2e(prepared)
    assert handles - batch_norms <= _float_handles(converted)
    # every node pt2q inserted carries the handle of the layer it belongs to
    inserted = [n for n in converted.graph.nodes if n.op == "call_function" and "quantize" in n.name]
    assert inserted and all(debug_info(n) in handles for n in inserted)


@pytest.mark.parametrize("name", ["conv_bn_relu_stack", "residual", "concat", "attention", "functional"])
def test_compare_results_matches_torchao(name: str) -> None:
    """Same model, same config through torchao's flow and debugger and through pt2q's:
    the per-node SQNR and MSE agree to float tolerance, node for node."""
    model, example = make(name)
    batches = calibration_batches(example)
    ep = torch.export.export(model, example)
    ours = _pt2q(ep, batches, is_per_channel=True)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    theirs = _quantize(
        prepare_pt2e,
        convert_pt2e,
        et_xnnpack.XNNPACKQuantizer().set_global(et_xnnpack.get_symmetric_quantization_config(is_per_channel=True)),
        ep,
        batches,
    )
    x = [calibration_batches(example, n=1, seed=5)[0]]

    ref_ours = _logged(pt2q.prepare_for_propagation_comparison, pt2q.extract_results_from_loggers, ep.module(), x)
    ref_theirs = _logged(
        torchao_nd.prepare_for_propagation_comparison, torchao_nd.extract_results_from_loggers, ep.module(), x
    )
    ours_cmp = _numbers(
        pt2q.compare_results(
            ref_ours, _logged(pt2q.prepare_for_propagation_comparison, pt2q.extract_results_from_loggers, ours, x)
        )
    )
    theirs_cmp = _numbers(
        torchao_nd.compare_results(
            ref_theirs,
            _logged(torchao_nd.prepare_for_propagation_comparison, torchao_nd.extract_results_from_loggers, theirs, x),
        )
    )
    assert len(ours_cmp) >= 3
    assert ours_cmp.keys() == theirs_cmp.keys()
    for node, (sqnr, mse) in ours_cmp.items():
        t_sqnr, t_mse = theirs_cmp[node]
        assert (math.isinf(sqnr) and math.isinf(t_sqnr)) or sqnr == pytest.approx(t_sqnr, rel=1e-5, abs=1e-4), node
        assert mse == pytest.approx(t_mse, rel=1e-5, abs=1e-12), node
    assert any(mse > 0 for _, mse in ours_cmp.values()), "quantization changed nothing: the test would be vacuous"


def test_comparison_survives_save_and_load() -> None:
    model, example = make("conv_bn_relu_stack")
    batches = calibration_batches(example)
    ep = torch.export.export(model, example)
    quantized = _pt2q(ep, batches)
    buf = io.BytesIO()
    torch.export.save(torch.export.export(quantized, example), buf)
    buf.seek(0)
    loaded = torch.export.load(buf).module()
    assert _float_handles(quantized) == _float_handles(loaded)

    x = batches[:2]
    ref = _logged(pt2q.prepare_for_propagation_comparison, pt2q.extract_results_from_loggers, ep.module(), x)
    before = pt2q.compare_results(
        ref, _logged(pt2q.prepare_for_propagation_comparison, pt2q.extract_results_from_loggers, quantized, x)
    )
    after = pt2q.compare_results(
        ref, _logged(pt2q.prepare_for_propagation_comparison, pt2q.extract_results_from_loggers, loaded, x)
    )
    assert before.keys() == after.keys() and len(before) >= 5
    for handle in before:
        for a, b in zip(before[handle].results, after[handle].results):
            torch.testing.assert_close(a.actual, b.actual, rtol=0, atol=0)


def test_handles_survive_executorch_lowering() -> None:
    """Every layer of the converted graph is found again in the lowered program: inside the
    XNNPACK delegates' subgraphs or among the ops left to portable kernels."""
    from pt2q.lowering import to_executorch

    model, example = make("conv_bn_relu_stack")
    batches = calibration_batches(example)
    ep = torch.export.export(model, example)
    quantized = _pt2q(ep, batches, is_per_channel=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lowered = to_executorch(quantized, example)
    assert {row.source for row in lowered.report.rows} >= {
        h.name for h in anchor_nodes(quantized) if "conv" in h.name or "linear" in h.name
    }
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(torch.export.export(quantized, example), partitioner=[XnnpackPartitioner()])
    gm = edge.exported_program().graph_module
    found = _float_handles(gm)
    for node in gm.graph.nodes:
        if node.target is torch.ops.higher_order.executorch_call_delegate:
            found |= _float_handles(getattr(gm, node.args[0].target).original_module.graph_module)
    expected = {h for h in _float_handles(quantized)}
    assert expected <= found, sorted(h.name for h in expected - found)


def test_logger_placement_and_model_untouched() -> None:
    model, example = make("mlp")
    ep = torch.export.export(model, example)
    quantized = _pt2q(ep, calibration_batches(example))
    before = quantized.code
    logged = pt2q.prepare_for_propagation_comparison(quantized)
    assert quantized.code == before
    loggers = [m for m in logged.modules() if isinstance(m, OutputLogger)]
    # one logger per layer, after the layer's dequantized output
    assert sorted(m.node_name for m in loggers) == sorted(n.name for n in anchor_nodes(quantized).values())
    assert_expected_inline(
        "\n".join(f"{m.debug_info.name} <- {m.node_name}" for m in loggers),
        """\
linear <- linear
relu <- dequantize_per_tensor_default_4
linear_1 <- linear_1
relu_1 <- dequantize_per_tensor_default_5
linear_2 <- dequantize_per_tensor_default_6""",
    )
    torch.testing.assert_close(logged(*example), quantized(*example), rtol=0, atol=0)
    assert all(len(m.stats) == 1 for m in loggers)


def test_comparison_result_fields_and_errors() -> None:
    ref, actual = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 2.5, 3.0, 4.0])
    r = pt2q.debug.numeric_debugger.QuantizationComparisonResult(actual=actual, ref=ref)
    assert float(r.mse_loss) == pytest.approx(0.0625)
    assert float(r.max_abs_error) == pytest.approx(0.5)
    assert float(r.sqnr) == pytest.approx(20 * math.log10(actual.norm() / 0.5))
    assert r.shapes == ((4,), (4,))
    with pytest.raises(ValueError, match=r"shapes \(4,\) \(ref\) and \(2,\) \(actual\)"):
        pt2q.debug.numeric_debugger.QuantizationComparisonResult(actual=torch.zeros(2), ref=ref)
    handle = pt2q.NodeSourceDebugInfo("linear", 1)
    with pytest.raises(ValueError, match="ref node 'linear' and actual node 'linear_q'"):
        pt2q.compare_results({handle: ("linear", None, [ref])}, {handle: ("linear_q", None, [torch.zeros(2)])})


def test_generate_numeric_debug_handle_numbers_nodes_once() -> None:
    model, example = make("mlp")
    ep = torch.export.export(model, example)
    first = next(n for n in ep.graph.nodes if n.op == "call_function")
    first.meta[CUSTOM_KEY] = {NUMERIC_DEBUG_HANDLE_KEY: 7}
    pt2q.generate_numeric_debug_handle(ep)
    ids = [n.meta[CUSTOM_KEY][NUMERIC_DEBUG_HANDLE_KEY] for n in ep.graph.nodes if n.op != "placeholder"]
    assert len(ids) == len(set(ids)) and 7 in ids
    assert first.meta[CUSTOM_KEY][NUMERIC_DEBUG_HANDLE_KEY] == 7
    with pytest.raises(TypeError, match="ExportedProgram"):
        pt2q.generate_numeric_debug_handle(ep.module())
