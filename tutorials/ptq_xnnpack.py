"""Post-training static quantization (PTQ) for ExecuTorch's XNNPACK backend.

What this teaches, step by step (the PT2E PTQ tutorial's flow, on torch 2.13):

1. train a small CNN on scikit-learn's handwritten digits (bundled, no download);
2. capture it with ``torch.export.export(model.eval(), ...).module()``;
3. annotate it with ``XNNPACKQuantizer`` (int8, per-channel weights) and insert
   observers with ``prepare_pt2e``;
4. calibrate: run a few batches of training data through the prepared model;
5. ``convert_pt2e``: int8 weights and quantize/dequantize ops;
6. compare fp32 and int8 accuracy and saved size;
7. save and reload the quantized ``ExportedProgram`` (``torch.export.save/load``);
8. lower it to an ExecuTorch ``.pte`` (``pt2q.lowering.to_executorch``) and run it
   with ``pt2q.runtime.load``.

Run: ``python tutorials/ptq_xnnpack.py``
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from digits import DigitsNet, accuracy, digits_data, train  # the tutorials' shared data, model and training loop

from pt2q import convert_pt2e, prepare_pt2e, runtime
from pt2q.lowering import LoweredProgram, to_executorch
from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config


# 1. Data and model -----------------------------------------------------------------
def tensor_bytes(program: torch.export.ExportedProgram) -> int:
    """Bytes of the weights a program carries (parameters, buffers and constants)."""
    tensors = list(program.state_dict.values()) + list(program.constants.values())
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def lower_and_run(
    quantized: torch.fx.GraphModule, example_inputs: tuple, pte: Path
) -> tuple[LoweredProgram, runtime.Comparison]:
    """8. Lower to ExecuTorch (XNNPACK delegate) with a fixed batch of 32, save the .pte, load and run it."""
    lowered = to_executorch(torch.export.export(quantized, example_inputs))
    print(lowered.report)
    lowered.save(pte)
    program = runtime.load(pte)
    return lowered, runtime.compare(program, quantized, *example_inputs)


def main(fast: bool = False) -> dict:
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = digits_data()
    model = train(DigitsNet(), x_train, y_train, epochs=4 if fast else 10)

    # 2. Capture the model. A dynamic batch dimension lets the same program calibrate
    #    on batches of 32 and evaluate the whole test set at once.
    example_inputs = (x_test[:32],)
    batch = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}}
    exported = torch.export.export(model.eval(), example_inputs, dynamic_shapes=batch)

    # 3. Annotate and insert observers.
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(exported.module(), quantizer)

    # 4. Calibrate.
    for i in range(4 if fast else 16):
        prepared(x_train[i * 32 : (i + 1) * 32])

    # 5. Convert.
    quantized = convert_pt2e(prepared)

    # 6. Accuracy and size.
    fp32_acc = accuracy(model, x_test, y_test)
    int8_acc = accuracy(quantized, x_test, y_test)
    quantized_ep = torch.export.export(quantized, example_inputs, dynamic_shapes=batch)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.export.save(exported, tmp / "digits_fp32.pt2")
        torch.export.save(quantized_ep, tmp / "digits_int8.pt2")
        fp32_bytes = (tmp / "digits_fp32.pt2").stat().st_size
        int8_bytes = (tmp / "digits_int8.pt2").stat().st_size

        # 7. Reload the saved program: same outputs, bit for bit.
        reloaded = torch.export.load(tmp / "digits_int8.pt2").module()
        with torch.no_grad():
            reload_exact = torch.equal(reloaded(x_test), quantized(x_test))

        lowered, pte_vs_pt2 = lower_and_run(quantized, example_inputs, tmp / "digits_int8.pte")

    fp32_weights, int8_weights = tensor_bytes(exported), tensor_bytes(quantized_ep)
    results = {
        "fp32_accuracy": fp32_acc,
        "int8_accuracy": int8_acc,
        "fp32_pt2_bytes": fp32_bytes,
        "int8_pt2_bytes": int8_bytes,
        "pt2_size_ratio": int8_bytes / fp32_bytes,
        "fp32_weight_bytes": fp32_weights,
        "int8_weight_bytes": int8_weights,
        "weight_size_ratio": int8_weights / fp32_weights,
        "reload_bit_exact": reload_exact,
        "pte_bytes": lowered.size,
        "pte_sqnr_db": pte_vs_pt2.sqnr_db,
        "pte_max_abs_diff": pte_vs_pt2.max_abs_diff,
    }
    print_summary(results, len(x_test), pte_vs_pt2)
    return results


def print_summary(r: dict, test_images: int, pte_vs_pt2: runtime.Comparison) -> None:
    """Accuracy, weight and file sizes, the reload check and the .pte's agreement, one line each."""
    print(f"accuracy: fp32 {r['fp32_accuracy']:.2f}%  int8 {r['int8_accuracy']:.2f}%  ({test_images} test images)")
    print(
        f"weights: fp32 {r['fp32_weight_bytes']:,} B  int8 {r['int8_weight_bytes']:,} B  "
        f"(ratio {r['weight_size_ratio']:.2f})"
    )
    print(
        f".pt2 file: fp32 {r['fp32_pt2_bytes']:,} B  int8 {r['int8_pt2_bytes']:,} B  (ratio {r['pt2_size_ratio']:.2f}; "
        "a small model's file is mostly the serialized graph)"
    )
    print(f"reloaded .pt2 bit-exact: {r['reload_bit_exact']}")
    print(f".pte ({r['pte_bytes']:,} B) vs converted model: {pte_vs_pt2}")


if __name__ == "__main__":
    main()
