"""Quantization overhead, pt2q vs torchao, measured in one run.

* prepare+convert: wall time of ``prepare_pt2e`` + ``convert_pt2e`` (export excluded);
* calibration: one forward pass of the prepared (observed) model divided by one plain fp32
  forward of the exported model, and the overhead above 1.

Both flows use the same model and the XNNPACK per-channel config. Medians over repeats.
Usage: ``python benchmarks/overhead.py [--quick]``.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import pt2q
from benchmarks.models import benchmark_models
from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config


def _flows():
    from executorch.backends.xnnpack.quantizer import xnnpack_quantizer as et
    from torchao.quantization.pt2e import quantize_pt2e as ao

    return {
        "pt2q": (pt2q.prepare_pt2e, pt2q.convert_pt2e,
                 lambda: XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))),
        "torchao": (ao.prepare_pt2e, ao.convert_pt2e,
                    lambda: et.XNNPACKQuantizer().set_global(et.get_symmetric_quantization_config(is_per_channel=True))),
    }


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(model, example, repeats: int) -> dict[str, dict[str, float]]:
    exported = torch.export.export(model, example)
    fp32 = exported.module()
    with torch.no_grad():
        fp32(*example)
        t_fp32 = _median_time(lambda: fp32(*example), repeats * 3)
    results = {}
    for name, (prepare, convert, make_quantizer) in _flows().items():
        prep_conv, calib = [], []
        for _ in range(repeats):
            gm = copy.deepcopy(exported).module()
            t0 = time.perf_counter()
            prepared = prepare(gm, make_quantizer())
            t_prepare = time.perf_counter() - t0
            with torch.no_grad():
                prepared(*example)  # first batch initializes observers
                calib.append(_median_time(lambda: prepared(*example), 3))
            t0 = time.perf_counter()
            convert(prepared)
            prep_conv.append(t_prepare + time.perf_counter() - t0)
        t_calib = statistics.median(calib)
        results[name] = {"prepare_convert_s": statistics.median(prep_conv), "calib_ratio": t_calib / t_fp32,
                         "calib_overhead": t_calib / t_fp32 - 1}
    return results


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small inputs, one repeat (for tests)")
    parser.add_argument("--models", default="resnet18,bert_encoder_12l")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    models = benchmark_models(small=args.quick)
    repeats = 1 if args.quick else 3
    lines = [
        "| model | pt2q prepare+convert s | torchao prepare+convert s | ratio pt2q/torchao "
        "| pt2q calib/fp32 | torchao calib/fp32 | overhead ratio pt2q/torchao |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in args.models.split(","):
        model, example = models[name]
        r = measure(model, example, repeats)
        ours, theirs = r["pt2q"], r["torchao"]
        lines.append(
            f"| {name} | {ours['prepare_convert_s']:.3f} | {theirs['prepare_convert_s']:.3f} "
            f"| {ours['prepare_convert_s'] / theirs['prepare_convert_s']:.2f} "
            f"| {ours['calib_ratio']:.2f} | {theirs['calib_ratio']:.2f} "
            f"| {ours['calib_overhead'] / max(theirs['calib_overhead'], 1e-9):.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
