"""Quantizing for x86 servers: X86InductorQuantizer and oneDNN int8 kernels.

What this teaches:

1. quantize a small CNN (trained on scikit-learn's digits) with ``X86InductorQuantizer``
   and ``get_default_x86_inductor_quantization_config()``: uint8 activations, int8
   per-channel weights; on CPUs without VNNI the config picks 7-bit activations
   (``reduce_range``) so the u8 x s8 products do not saturate;
2. ``convert_pt2e`` gives a reference Q/DQ model (quantization simulated in float);
3. ``pt2q.lowering.lower_pt2e_quantized_to_x86(converted, example_inputs)`` rewrites it
   into calls to oneDNN's int8 ops (``onednn.qconv_pointwise`` / ``qlinear_pointwise`` on
   prepacked weights) in an FX graph that runs eagerly: a few seconds, no C++ build;
4. the other entry point, ``pt2q.lowering.compile_quantized_for_x86(converted, example_inputs)``,
   compiles the same model with ``torch.compile`` (Inductor, freezing on) into fused C++:
   the fastest option, but compiling takes a while (run with ``--compile`` to try it);
5. compare accuracy, SQNR against fp32 and latency.

Run: ``python tutorials/x86_inductor.py [--compile]``
"""

from __future__ import annotations

import copy
import sys

import torch
from digits import DigitsNet, accuracy, digits_data, train  # the tutorials' shared data, model and training loop

from pt2q import convert_pt2e, prepare_pt2e, sqnr
from pt2q.lowering import compile_quantized_for_x86, lower_pt2e_quantized_to_x86
from pt2q.quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config
from pt2q.runtime import timing


def median_ms(model, x: torch.Tensor, repeats: int) -> float:
    """Median latency (ms) of ``model`` on ``x``, without autograd, after one warm-up call."""
    with torch.no_grad():
        return timing.median_ms(model, (x,), runs=repeats, warmup=1)


def quantize(model: torch.nn.Module, x_train: torch.Tensor, batches: int) -> torch.fx.GraphModule:
    """1. Export (dynamic batch), annotate for x86, calibrate on ``batches`` batches of 32, convert."""
    batch = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}}
    exported = torch.export.export(copy.deepcopy(model), (x_train[:32],), dynamic_shapes=batch)
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported.module(), quantizer)
    for i in range(batches):
        prepared(x_train[i * 32 : (i + 1) * 32])
    return convert_pt2e(prepared)


def main(fast: bool = False, compile: bool = False) -> dict:
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = digits_data()
    model = train(DigitsNet(), x_train, y_train, epochs=4 if fast else 10)
    converted = quantize(model, x_train, 4 if fast else 16)

    # 3. Lower to oneDNN int8 ops (specialized to the test-set batch size).
    example_inputs = (x_test,)
    lowered = lower_pt2e_quantized_to_x86(converted, example_inputs)
    onednn_ops = sorted(
        {str(n.target) for n in lowered.graph.nodes if n.op == "call_function" and str(n.target).startswith("onednn.")}
    )

    with torch.no_grad():
        fp32_out, converted_out, lowered_out = model(x_test), converted(x_test), lowered(x_test)
    repeats = 5 if fast else 50
    results = {
        "fp32_accuracy": accuracy(model, x_test, y_test),
        "converted_accuracy": accuracy(converted, x_test, y_test),
        "lowered_accuracy": accuracy(lowered, x_test, y_test),
        "sqnr_converted_db": sqnr(fp32_out, converted_out),
        "sqnr_lowered_db": sqnr(fp32_out, lowered_out),
        "sqnr_lowered_vs_converted_db": sqnr(converted_out, lowered_out),
        "onednn_ops": onednn_ops,
        "fp32_ms": median_ms(model, x_test, repeats),
        "converted_ms": median_ms(converted, x_test, repeats),
        "lowered_ms": median_ms(lowered, x_test, repeats),
    }

    # 4. Optionally, the torch.compile path (slow to compile, fastest to run).
    if compile:
        compiled = compile_quantized_for_x86(converted, example_inputs)
        results["compiled_sqnr_db"] = sqnr(fp32_out, compiled(x_test))
        results["compiled_ms"] = median_ms(compiled, x_test, repeats)

    print_table(results, len(x_test), compile)
    return results


def print_table(results: dict, images: int, compile: bool) -> None:
    """5. Accuracy, SQNR against fp32 and latency of each model, as a Markdown table."""
    print(f"{images} test images, one batch; SQNR against the fp32 model's logits")
    print("| model                          | accuracy % | SQNR dB | ms/batch |")
    print("|--------------------------------|------------|---------|----------|")
    print(
        f"| fp32 eager                     | {results['fp32_accuracy']:>10.2f} |     inf | {results['fp32_ms']:>8.2f} |"
    )
    print(
        f"| int8 Q/DQ (convert_pt2e)       | {results['converted_accuracy']:>10.2f} | "
        f"{results['sqnr_converted_db']:>7.1f} | {results['converted_ms']:>8.2f} |"
    )
    print(
        f"| int8 oneDNN (lower_..._to_x86) | {results['lowered_accuracy']:>10.2f} | "
        f"{results['sqnr_lowered_db']:>7.1f} | {results['lowered_ms']:>8.2f} |"
    )
    if compile:
        print(
            f"| int8 torch.compile             | {'':>10} | {results['compiled_sqnr_db']:>7.1f} | "
            f"{results['compiled_ms']:>8.2f} |"
        )
    print("oneDNN ops in the lowered graph: " + ", ".join(results["onednn_ops"]))


if __name__ == "__main__":
    main(compile="--compile" in sys.argv[1:])
