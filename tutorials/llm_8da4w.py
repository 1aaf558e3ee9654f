"""A decoder language model with 4-bit weights on ExecuTorch (8da4w: int8 dynamic activations, int4 weights).

What this teaches, step by step:

1. train a small Llama-style decoder (``tiny_llama.py``: RMSNorm, rotary embeddings, SwiGLU,
   grouped-query attention, static KV cache) on the Python standard library's source text;
2. export it once with a dynamic sequence length: the same program does prefill (many
   tokens) and decode (one token), writing keys and values into its KV cache;
3. annotate with ``XNNPACKQuantizer`` + ``get_8da4w_quantization_config(group_size)``: every
   linear gets int8 activations quantized per token at run time and symmetric int4
   weights with one scale per group of input channels;
4. choose the 4-bit weights with GPTQ on calibration text (``pt2q.gptq_quantize``) instead of
   rounding each weight to nearest, and compare held-out perplexity: fp32, RTN, GPTQ;
5. ``convert_pt2e``: torchao's ``choose_qparams_affine / quantize_affine / dequantize_affine``
   ops, the weights stored as int8 codes in [-8, 7];
6. lower to an ExecuTorch ``.pte`` (``pt2q.lowering.to_executorch``): the delegation report
   shows every linear inside XNNPACK as int8 x int4;
7. run prefill and token-by-token generation through ``pt2q.runtime``.

Run: ``python tutorials/llm_8da4w.py`` (a few minutes; ``fast=True`` is the tested tiny version)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

# the tutorials' shared decoder, text and training loop
from tiny_llama import LlamaConfig, TinyLlama, perplexity, stdlib_text, train, windows

from pt2q import convert_pt2e, gptq_quantize, prepare_pt2e, runtime
from pt2q.lowering import to_executorch
from pt2q.quantizers import XNNPACKQuantizer, get_8da4w_quantization_config


def generate(run, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding: one prefill call on ``prompt``, then one call per new token (KV cache in the program)."""
    logits = run(prompt[None], torch.arange(len(prompt)))
    tokens = [logits[0, -1].argmax()]
    for i in range(steps - 1):
        logits = run(tokens[-1].reshape(1, 1), torch.tensor([len(prompt) + i]))
        tokens.append(logits[0, -1].argmax())
    return torch.stack(tokens)


def trained_model(fast: bool) -> tuple[TinyLlama, torch.Tensor, torch.Tensor, int, int]:
    """1. Text and model. Byte tokens: a vocabulary of 256, so a model that knows nothing has perplexity 256.
    Returns the trained model in eval mode, the training and held-out text, the 8da4w group size and the
    window (longest sequence) of the export."""
    if fast:
        cfg = LlamaConfig(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=192, max_seq_len=96)
        steps, batch, seq_len, lr, group_size, window = 100, 16, 64, 1e-2, 32, 64
        train_text = stdlib_text(held_out=False, max_bytes=1_000_000)
        held_out = stdlib_text(held_out=True, max_bytes=200_000)
    else:
        cfg = LlamaConfig(dim=256, n_layers=4, n_heads=8, n_kv_heads=2, hidden_dim=768, max_seq_len=256)
        steps, batch, seq_len, lr, group_size, window = 400, 16, 128, 3e-3, 32, 128
        train_text, held_out = stdlib_text(held_out=False), stdlib_text(held_out=True)
    model = TinyLlama(cfg)
    train(model, train_text, steps=steps, batch=batch, seq_len=seq_len, lr=lr, bf16=not fast)
    return model.eval(), train_text, held_out, group_size, window


def quantize_rtn_and_gptq(exported: torch.export.ExportedProgram, group_size: int, calibration: list) -> tuple:
    """3.-5. Quantize twice from the same export: round-to-nearest, and GPTQ on the calibration windows.
    Returns (RTN model, GPTQ model, GPTQ's per-layer errors)."""
    quantizer = XNNPACKQuantizer().set_global(get_8da4w_quantization_config(group_size=group_size))
    with torch.no_grad():
        rtn = prepare_pt2e(exported.module(), quantizer)
        rtn(*calibration[0])  # weight observers need one call; activations are quantized at run time
        rtn = convert_pt2e(rtn)
        prepared = prepare_pt2e(exported.module(), quantizer)
        gptq_errors = gptq_quantize(prepared, calibration)
        quantized = convert_pt2e(prepared)
    return rtn, quantized, gptq_errors


def run_pte(lowered, quantized: torch.nn.Module, held_out, window: int, count: int) -> dict:
    """7. Run it: perplexity of the .pte itself, and greedy generation token by token."""
    with tempfile.TemporaryDirectory() as tmp:
        path = lowered.save(Path(tmp) / "tiny_llama_8da4w.pte")
        program = runtime.load(path)
        pte_ppl = perplexity(program, held_out, window, count)
        prompt = held_out[:32].long()
        generated = generate(program, prompt, 24)
        with torch.no_grad():
            reference = generate(quantized, prompt, 24)
        logits_pte = program(prompt[None], torch.arange(len(prompt)))
        with torch.no_grad():
            logits_graph = quantized(prompt[None], torch.arange(len(prompt)))
        agreement = runtime.compare_outputs(logits_pte, logits_graph)
    return {
        "pte_perplexity": pte_ppl,
        "agreement": agreement,
        "greedy_tokens_agree": float((generated == reference).float().mean()),
        "prompt": bytes(prompt.tolist()).decode("utf-8", "replace"),
        "generated": bytes(generated.tolist()).decode("utf-8", "replace"),
    }


def main(fast: bool = False) -> dict:
    torch.manual_seed(0)
    model, train_text, held_out, group_size, window = trained_model(fast)

    # 2. Export: tokens[1, T] and their positions[T], with T from 1 (decode) to a full window (prefill).
    seq = torch.export.Dim("seq", min=1, max=window)
    example = (torch.zeros(1, window, dtype=torch.long), torch.arange(window))
    with torch.no_grad():
        exported = torch.export.export(model, example, dynamic_shapes=({1: seq}, {0: seq}))

    calibration = [(w[None, :-1], torch.arange(window)) for w in windows(train_text, window, 16, seed=1)]
    rtn, quantized, gptq_errors = quantize_rtn_and_gptq(exported, group_size, calibration)
    count = 8 if fast else 32
    ppl = {
        name: perplexity(run, held_out, window, count)
        for name, run in (("fp32", model), ("8da4w RTN", rtn), ("8da4w GPTQ", quantized))
    }

    # 6. Lower to ExecuTorch and look where each op runs.
    with torch.no_grad():
        quantized_ep = torch.export.export(quantized, example, dynamic_shapes=({1: seq}, {0: seq}))
    lowered = to_executorch(quantized_ep)
    print(lowered.report)
    linears = [r for r in lowered.report.rows if r.op == "aten.linear"]
    fp32_linear_bytes = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, torch.nn.Linear))

    pte = run_pte(lowered, quantized, held_out, window, count)
    agreement = pte.pop("agreement")
    results = {
        "perplexity": ppl,
        "pte_perplexity": pte["pte_perplexity"],
        "gptq_vs_rtn_error": [r.gptq_error / r.rtn_error for r in gptq_errors],
        "linears": len(linears),
        "linears_in_xnnpack_int4": sum(r.runs_on == "XNNPACK" and r.precision == "int8/int4" for r in linears),
        "fallbacks": len(lowered.report.fallbacks),
        "pte_bytes": lowered.size,
        "linear_weight_bytes": sum(r.weight_bytes for r in linears),
        "fp32_linear_weight_bytes": fp32_linear_bytes,
        "pte_vs_graph_sqnr_db": agreement.sqnr_db,
        **{k: pte[k] for k in ("greedy_tokens_agree", "prompt", "generated")},
    }
    print_summary(results, group_size, agreement)
    return results


def print_summary(results: dict, group_size: int, agreement: runtime.Comparison) -> None:
    """Perplexities, the .pte's size and delegation, its agreement with the graph, and a generated sample."""
    print(
        "held-out perplexity per byte (uniform: 256): "
        + ", ".join(f"{k} {v:.3f}" for k, v in results["perplexity"].items())
        + f", 8da4w GPTQ .pte {results['pte_perplexity']:.3f}"
    )
    ratio = results["linear_weight_bytes"] / results["fp32_linear_weight_bytes"]
    print(
        f".pte: {results['pte_bytes']:,} B; linear weights {results['linear_weight_bytes']:,} B, {ratio:.3f} of fp32 "
        f"(int4 codes + a scale per {group_size} weights); "
        f"{results['linears_in_xnnpack_int4']}/{results['linears']} linears in XNNPACK as int8 x int4"
    )
    print(f".pte logits vs converted graph: {agreement}")
    print(f"prompt {results['prompt']!r} -> {results['generated']!r}")


if __name__ == "__main__":
    main()
