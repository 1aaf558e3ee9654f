"""Debugging an accuracy drop with the numeric debugger.

A model that quantizes badly, and how ``pt2q.report`` finds out why:

1. train a small CNN on scikit-learn's digits, then plant an accuracy problem in it: the
   ``embed`` layer gets one extra output channel holding a large constant (about 200x its
   other values) that the next layer ignores. The float model is unchanged, bit for bit;
   real networks grow such outlier channels on their own (e.g. the "massive activations"
   of large transformers), here we add one by hand so the culprit is known;
2. quantize with ``XNNPACKQuantizer`` and a min/max activation observer: ``embed``'s output
   is quantized per tensor, its range is spent on the outlier and the useful channels
   collapse onto a few int8 levels; measure the accuracy drop;
3. ``pt2q.report``: per layer, the *cumulative* SQNR (where the error shows) is lowest
   downstream, while the *sensitivity* SQNR (the output's SQNR with only that layer
   quantized) points at ``embed``; save the bar chart;
4. per-node cumulative SQNR with the torchao-compatible low-level API
   (``prepare_for_propagation_comparison`` / ``extract_results_from_loggers`` / ``compare_results``);
5. fix it two ways and measure both: (a) keep ``embed`` in float with
   ``set_module_name("embed", None)`` (and ``fc1``, which quantizes the same tensor at its
   input), (b) quantize everything but clip activation ranges with ``PercentileObserver``;
   re-run the report to see the SQNR come back.

Run: ``python tutorials/debug_accuracy.py`` (writes ``debug_accuracy_out/sqnr.png``)
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from digits import accuracy, digits_data, train  # the tutorials' shared data, model and training loop

import pt2q
from pt2q.observer import MinMaxObserver, MSEObserver, PercentileObserver, PerChannelMinMaxObserver
from pt2q.quantizer import QuantizationConfig, QuantizationSpec
from pt2q.quantizers import XNNPACKQuantizer


# 1. Data, model, and the planted outlier channel ----------------------------------
class DigitsNet(nn.Module):
    """conv-ReLU x2, max-pool, a linear embedding (no activation), a linear-ReLU, a classifier."""

    def __init__(self, width: int = 128) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.embed = nn.Linear(32 * 4 * 4, width)
        self.fc1, self.fc2 = nn.Linear(width, 64), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        z = self.embed(torch.flatten(y, 1))
        return self.fc2(F.relu(self.fc1(z)))


def add_outlier_channel(model: DigitsNet, x: torch.Tensor, factor: float = 200.0) -> DigitsNet:
    """A copy of ``model`` whose ``embed`` has one more output channel, a constant ``factor``
    times the largest |value| of the others on ``x``, with a zero weight column in ``fc1``
    (so ``fc1`` ignores it): the same function, a much wider activation range."""
    model = copy.deepcopy(model)
    old_embed, old_fc1 = model.embed, model.fc1
    with torch.no_grad():
        features = torch.flatten(F.max_pool2d(F.relu(model.conv2(F.relu(model.conv1(x)))), 2), 1)
        outlier = factor * float(old_embed(features).abs().max())
        embed = nn.Linear(old_embed.in_features, old_embed.out_features + 1)
        embed.weight.copy_(torch.cat([old_embed.weight, torch.zeros(1, old_embed.in_features)]))
        embed.bias.copy_(torch.cat([old_embed.bias, torch.tensor([outlier])]))
        fc1 = nn.Linear(old_fc1.in_features + 1, old_fc1.out_features)
        fc1.weight.copy_(torch.cat([old_fc1.weight, torch.zeros(old_fc1.out_features, 1)], dim=1))
        fc1.bias.copy_(old_fc1.bias)
    model.embed, model.fc1 = embed, fc1
    return model.eval()


# 2. Quantization --------------------------------------------------------------------
def int8_config(activation_observer) -> QuantizationConfig:
    """XNNPACK's int8 scheme (per-tensor affine activations, per-channel symmetric weights,
    float bias) with a chosen activation observer. ``get_symmetric_quantization_config``
    uses a HistogramObserver; a plain min/max one shows the problem most clearly."""
    act = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-128,
        quant_max=127,
        qscheme=torch.per_tensor_affine,
        observer_or_fake_quant_ctr=activation_observer,
    )
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-127,
        quant_max=127,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
        observer_or_fake_quant_ctr=PerChannelMinMaxObserver,
    )
    return QuantizationConfig(act, act, weight, None)


def quantize(
    exported: torch.export.ExportedProgram,
    batches,
    activation_observer=MinMaxObserver,
    keep_float: tuple[str, ...] = (),
) -> torch.fx.GraphModule:
    quantizer = XNNPACKQuantizer().set_global(int8_config(activation_observer))
    for path in keep_float:
        quantizer.set_module_name(path, None)
    prepared = pt2q.prepare_pt2e(exported.module(), quantizer)
    for batch in batches:
        prepared(*batch)
    return pt2q.convert_pt2e(prepared)


def main(fast: bool = False, out_dir: Optional[str | Path] = None) -> dict:
    # A model this small gains nothing from a second thread, and loses much on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return debug(fast, out_dir)
    finally:
        torch.set_num_threads(threads)


def locate(report: pt2q.QuantizationReport) -> tuple[Any, Any]:
    """3. Where the error shows (lowest cumulative SQNR) and where it is made (lowest sensitivity SQNR)."""
    print(report)
    lowest = min(report.quantized_rows, key=lambda row: row.cumulative_sqnr)
    culprit = report.worst(1)[0]  # lowest sensitivity SQNR
    print(
        f"lowest cumulative SQNR: {lowest.name} ({lowest.module_path or '-'}) {lowest.cumulative_sqnr:.1f} dB: "
        "where the error shows"
    )
    print(
        f"lowest sensitivity SQNR: {culprit.name} ({culprit.module_path}) {culprit.sensitivity_sqnr:.1f} dB: "
        "where it is made"
    )
    # embed's own SQNRs look fine: the outlier channel, quantized well, dominates its signal.
    return lowest, culprit


def plot(report: pt2q.QuantizationReport, fast: bool, out_dir: Optional[str | Path]) -> Path:
    """The report's bar chart, as a PNG in ``out_dir`` (default: a temporary folder with ``fast``)."""
    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix="debug_accuracy_") if fast else "debug_accuracy_out"
    png = Path(out_dir) / "sqnr.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    report.plot(png)
    print(f"bar chart: {png}")
    return png


def per_node_sqnr(exported: torch.export.ExportedProgram, quantized: torch.fx.GraphModule, inputs) -> dict:
    """4. Cumulative SQNR per node with torchao's low-level API: loggers after every node of
    both graphs, the same inputs through each, compared node by node (matched by debug
    handle). torchao takes the quantized value as the signal, hence other numbers."""
    ref = pt2q.prepare_for_propagation_comparison(exported.module())
    act = pt2q.prepare_for_propagation_comparison(quantized)
    with torch.no_grad():
        for (x,) in inputs:
            ref(x)
            act(x)
    comparison = pt2q.compare_results(pt2q.extract_results_from_loggers(ref), pt2q.extract_results_from_loggers(act))
    print("per-node SQNR (torchao's definition, the quantized value as the signal):")
    for summary in comparison.values():
        print(f"  {summary.ref_node_name:10} {summary.actual_module_stack or '-':6} {summary.sqnr:6.1f} dB")
    return {s.ref_node_name: s.sqnr for s in comparison.values()}


def keep_float_fix(exported, calibration, inputs, test, culprit) -> dict:
    """5a. Keep the culprit in float. Alone, that changes nothing here: the next layer
    quantizes its input (the same tensor, outlier included) itself, as every
    quantized op does. The new report says so: the layer with the lowest
    sensitivity now is fc1, and its row shows the giant input scale.
    Keeping fc1 float too fixes the model, at the cost of two float layers."""
    keep_float = (culprit.module_path,)
    fix_a1 = quantize(exported, calibration, keep_float=keep_float)
    fix_a1_acc = accuracy(fix_a1, *test)
    consumer = pt2q.report(fix_a1, exported, inputs).worst(1)[0]
    print(
        f"keep {culprit.module_path} float: {fix_a1_acc:.2f}%; now the lowest sensitivity SQNR is at "
        f"{consumer.name} ({consumer.module_path}) {consumer.sensitivity_sqnr:.1f} dB: {consumer.how}"
    )
    keep_float += (consumer.module_path,)
    fix_a = quantize(exported, calibration, keep_float=keep_float)
    fix_a_acc = accuracy(fix_a, *test)
    report_a = pt2q.report(fix_a, exported, inputs)
    print(f"keep {' and '.join(keep_float)} float: {fix_a_acc:.2f}%, output SQNR {report_a.output_sqnr:.1f} dB")
    return {
        "keep_culprit_float_accuracy": fix_a1_acc,
        "keep_float_accuracy": fix_a_acc,
        "keep_float_modules": list(keep_float),
        "keep_float_output_sqnr_db": report_a.output_sqnr,
    }


def clipping_fix(exported, calibration, inputs, test, lowest) -> dict:
    """5b. Quantize everything, but let the activation observer clip. The outlier is one
    channel of 129, 0.8% of embed's values: PercentileObserver(99) cuts it off (fc1
    ignores it anyway). MSEObserver does not: it weighs the outlier's clipping error
    like any other value's, and the outlier is too big to clip at that price."""
    fix_b = quantize(exported, calibration, PercentileObserver.with_args(percentile=99.0))
    fix_b_acc = accuracy(fix_b, *test)
    report_b = pt2q.report(fix_b, exported, inputs)
    mse_acc = accuracy(quantize(exported, calibration, MSEObserver), *test)
    recovered = report_b.row(lowest.name).cumulative_sqnr
    print(
        f"PercentileObserver(99) activations: {fix_b_acc:.2f}%, output SQNR {report_b.output_sqnr:.1f} dB; "
        f"cumulative SQNR at {lowest.name} {recovered:.1f} dB (was {lowest.cumulative_sqnr:.1f})"
    )
    print(f"MSEObserver activations: {mse_acc:.2f}%")
    return {
        "percentile_accuracy": fix_b_acc,
        "mse_observer_accuracy": mse_acc,
        "percentile_output_sqnr_db": report_b.output_sqnr,
        "percentile_lowest_cumulative_sqnr_db": recovered,
    }


def debug(fast: bool, out_dir: Optional[str | Path]) -> dict:
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = digits_data()
    clean = train(DigitsNet(), x_train, y_train, epochs=4 if fast else 10)
    model = add_outlier_channel(clean, x_train)
    fp32_acc = accuracy(model, x_test, y_test)
    print(
        f"fp32 accuracy: {fp32_acc:.2f}% (unchanged by the outlier channel: "
        f"{accuracy(clean, x_test, y_test):.2f}% before it)"
    )

    calibration = [(x_train[i * 32 : (i + 1) * 32],) for i in range(4 if fast else 16)]
    batch = {"x": {0: torch.export.Dim("batch", min=1, max=2048)}}
    exported = torch.export.export(model, calibration[0], dynamic_shapes=batch)
    quantized = quantize(exported, calibration)
    int8_acc = accuracy(quantized, x_test, y_test)
    print(f"int8 accuracy: {int8_acc:.2f}% (a {fp32_acc - int8_acc:.1f}-point drop)")

    # 3. Where is the accuracy lost? One row per layer of the float graph, SQNRs in dB
    #    against the float model (higher is better), measured on a few held-out batches.
    #    cumulative: the quantized model's value there, all earlier errors included;
    #    local: the layer's own error, fed the float model's inputs;
    #    sensitivity: the model output when only this layer is quantized.
    inputs = [(x_test[i * 64 : (i + 1) * 64],) for i in range(2 if fast else 5)]
    report = pt2q.report(quantized, exported, inputs)
    lowest, culprit = locate(report)
    png = plot(report, fast, out_dir)
    lowapi = per_node_sqnr(exported, quantized, inputs)
    fix_a = keep_float_fix(exported, calibration, inputs, (x_test, y_test), culprit)
    fix_b = clipping_fix(exported, calibration, inputs, (x_test, y_test), lowest)

    results = {
        "fp32_accuracy": fp32_acc,
        "int8_accuracy": int8_acc,
        **fix_a,
        **fix_b,
        "culprit": culprit.name,
        "culprit_module": culprit.module_path,
        "culprit_sensitivity_sqnr_db": culprit.sensitivity_sqnr,
        "lowest_cumulative": lowest.name,
        "lowest_cumulative_module": lowest.module_path,
        "lowest_cumulative_sqnr_db": lowest.cumulative_sqnr,
        "output_sqnr_db": report.output_sqnr,
        "lowapi_sqnr_db": lowapi,
        "png": str(png),
    }
    print(
        f"accuracy: fp32 {fp32_acc:.2f}%  int8 {int8_acc:.2f}%  keep {'+'.join(results['keep_float_modules'])} float "
        f"{results['keep_float_accuracy']:.2f}%  PercentileObserver(99) {results['percentile_accuracy']:.2f}%  "
        f"({len(x_test)} test images)"
    )
    return results


if __name__ == "__main__":
    main()
