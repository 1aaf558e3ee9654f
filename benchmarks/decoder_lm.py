"""A small Llama-style decoder on ExecuTorch: fp32 vs 8da8w vs 8da4w (round-to-nearest and GPTQ).

The model (``tutorials/tiny_llama.py``: RMSNorm, rotary embeddings, SwiGLU, grouped-query
attention, static KV cache) is trained here on the Python standard library's own ``.py``
files (byte tokens), exported once with a dynamic sequence length, quantized with
``XNNPACKQuantizer`` and the low-bit configs, lowered with ``pt2q.lowering.to_executorch``
and run through ``pt2q.runtime``: every number below comes from the ``.pte`` programs.

* perplexity: next-byte perplexity on held-out standard-library files (files the model
  never trained on), each window one prefill call of the ``.pte``;
* size: bytes of the ``.pte``;
* prefill: tokens/s of one call on a prompt of ``prefill`` tokens; decode: tokens/s of
  one-token calls (greedy, each feeding back the last token) after that prompt. One
  thread; the programs take turns, in a fresh random order each round (medians).

The trained weights are cached (``$XDG_CACHE_HOME/pt2q``, ``~/.cache/pt2q`` by default,
keyed by the model and training settings; delete the file to retrain).

    python -m benchmarks.decoder_lm [--small]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

import pt2q
import pt2q.runtime as runtime
from benchmarks.common import Section
from pt2q.lowering import to_executorch
from pt2q.quantizers import (
    XNNPACKQuantizer,
    get_8da4w_quantization_config,
    get_8da8w_quantization_config,
)
from tests.helpers import torch_threads
from tutorials.tiny_llama import (
    LlamaConfig,
    TinyLlama,
    perplexity,
    stdlib_text,
    train,
    windows,
)

__all__ = ["LMSettings", "FULL", "SMALL", "VARIANTS", "measure", "markdown_table", "suite", "main"]

VARIANTS = ("fp32", "8da8w", "8da4w RTN", "8da4w GPTQ")


@dataclass(frozen=True)
class LMSettings:
    config: LlamaConfig
    train_steps: int
    batch: int
    seq_len: int
    lr: float
    eval_len: int  # tokens per held-out window (one prefill call)
    eval_windows: int
    calib_windows: int  # GPTQ calibration windows of eval_len tokens
    group_size: int  # 8da4w weight group
    prefill: int  # prompt length timed
    decode: int  # decode steps timed per round
    rounds: int
    cache: bool  # keep the trained weights between runs
    bf16: bool = True  # bfloat16 autocast in training's forward passes
    max_train_bytes: Optional[int] = None


FULL = LMSettings(
    LlamaConfig(dim=512, n_layers=4, n_heads=8, n_kv_heads=2, hidden_dim=1536, max_seq_len=512),
    train_steps=400,
    batch=8,
    seq_len=256,
    lr=3e-3,
    eval_len=256,
    eval_windows=48,
    calib_windows=32,
    group_size=32,
    prefill=128,
    decode=32,
    rounds=5,
    cache=True,
)
SMALL = LMSettings(
    LlamaConfig(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=384, max_seq_len=128),
    train_steps=120,
    batch=16,
    seq_len=64,
    lr=1e-2,
    eval_len=64,
    eval_windows=16,
    calib_windows=8,
    group_size=32,
    prefill=32,
    decode=8,
    rounds=2,
    cache=False,
    bf16=False,
    max_train_bytes=2_000_000,
)


def _cache_file(s: LMSettings) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pt2q" / "decoder_lm"
    key = repr(
        (
            dataclasses.asdict(s.config),
            s.train_steps,
            s.batch,
            s.seq_len,
            s.lr,
            s.bf16,
            s.max_train_bytes,
            torch.__version__,
            platform.python_version(),
        )
    )
    return root / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def _save_atomically(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def trained_model(
    s: LMSettings, train_tokens: torch.Tensor, progress: bool = False
) -> tuple[TinyLlama, dict[str, Any]]:
    """The decoder trained on ``train_tokens`` (or loaded from the cache), and how it was trained."""
    torch.manual_seed(0)
    model = TinyLlama(s.config)
    path = _cache_file(s)
    if s.cache and path.is_file():
        saved = torch.load(path, weights_only=True)  # tensors, numbers and strings only: nothing runs
        model.load_state_dict(saved["state_dict"], strict=False)
        return model.eval(), {**saved["info"], "cached": str(path)}
    start = time.perf_counter()
    with torch_threads(os.cpu_count() or 1):
        losses = train(model, train_tokens, s.train_steps, s.batch, s.seq_len, lr=s.lr, bf16=s.bf16, progress=progress)
    info = {
        "seconds": time.perf_counter() - start,
        "final_loss": statistics.mean(losses[-20:]),
        "tokens": s.train_steps * s.batch * s.seq_len,
    }
    if s.cache:
        _save_atomically({"state_dict": model.state_dict(), "info": info}, path)
    return model.eval(), {**info, "cached": ""}


def _export(module: torch.nn.Module, s: LMSettings) -> torch.export.ExportedProgram:
    """``forward(tokens[1, T], input_pos[T])`` with T dynamic, from one token to a full window."""
    t = torch.export.Dim("T", min=1, max=max(s.eval_len, s.prefill))
    example = (torch.zeros(1, s.prefill, dtype=torch.long), torch.arange(s.prefill))
    with torch.no_grad():
        return torch.export.export(module, example, dynamic_shapes=({1: t}, {0: t}))


def quantize(
    program: torch.export.ExportedProgram,
    variant: str,
    s: LMSettings,
    calibration: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.export.ExportedProgram, float]:
    """The quantized program of ``variant`` and the seconds prepare + calibration/GPTQ + convert took."""
    config = get_8da8w_quantization_config() if variant == "8da8w" else get_8da4w_quantization_config(s.group_size)
    start = time.perf_counter()
    prepared = pt2q.prepare_pt2e(program.module(), XNNPACKQuantizer().set_global(config))
    with torch.no_grad():
        if variant.endswith("GPTQ"):
            pt2q.gptq_quantize(prepared, calibration)
        else:
            prepared(*calibration[0])  # weights only: activations are quantized at run time
        converted = pt2q.convert_pt2e(prepared)
    seconds = time.perf_counter() - start
    return _export(converted, s), seconds


def _lower(program: torch.export.ExportedProgram) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return to_executorch(program, strict=True)


def _decode_step_times(prog: runtime.Program, prompt: torch.Tensor, steps: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of the prefill call, then of each greedy one-token call after it.

    CPU time is the calling thread's: with a thread pool of one, XNNPACK and the portable
    kernels run on it, so it is the program's own work, whatever else the machine runs.
    """

    def timed(*args: torch.Tensor) -> tuple[torch.Tensor, tuple[float, float]]:
        c0, t0 = time.thread_time(), time.perf_counter()
        out = prog(*args)
        return out, (time.perf_counter() - t0, time.thread_time() - c0)

    logits, first = timed(prompt, torch.arange(prompt.shape[1]))
    times = [first]
    for i in range(steps):
        logits, step = timed(logits[:, -1:].argmax(-1), torch.tensor([prompt.shape[1] + i]))
        times.append(step)
    return times


def measure(s: LMSettings, log=lambda msg: None) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Per variant: perplexity, .pte bytes, prefill and decode tokens/s (plus how the model was made)."""
    train_tokens = stdlib_text(held_out=False, max_bytes=s.max_train_bytes)
    held_out = stdlib_text(held_out=True)
    log(f"training ({s.train_steps} steps) or loading the decoder")
    model, info = trained_model(s, train_tokens, progress=True)
    program = _export(model, s)
    calibration = [
        (w[None, :-1], torch.arange(s.eval_len)) for w in windows(train_tokens, s.eval_len, s.calib_windows, seed=1)
    ]
    buffers: dict[str, bytes] = {}
    reports = {}
    for variant in VARIANTS:
        log(f"quantizing and lowering {variant}")
        if variant == "fp32":
            quantized, info["quantize_s fp32"] = program, 0.0
        else:
            quantized, info[f"quantize_s {variant}"] = quantize(program, variant, s, calibration)
        lowered = _lower(quantized)
        buffers[variant], reports[variant] = lowered.buffer, lowered.report
    info["reports"] = reports
    runtime.set_num_threads(1)  # before loading: programs hold on to the thread pool
    programs = {v: runtime.load(b) for v, b in buffers.items()}
    rows: dict[str, dict[str, float]] = {v: {"pte_bytes": float(len(b))} for v, b in buffers.items()}
    for variant, prog in programs.items():
        log(f"perplexity of {variant}")
        rows[variant]["ppl"] = perplexity(prog, held_out, s.eval_len, s.eval_windows)
    prompt = held_out[None, : s.prefill].long()
    prefill: dict[str, list[tuple[float, float]]] = {v: [] for v in programs}
    decode: dict[str, list[tuple[float, float]]] = {v: [] for v in programs}
    order = list(programs)
    rng = random.Random(0)
    for round_ in range(s.rounds + 1):  # round 0 warms up
        rng.shuffle(order)
        for variant in order:
            first, *steps = _decode_step_times(programs[variant], prompt, s.decode)
            if round_:
                prefill[variant].append(first)
                decode[variant].extend(steps)
    for variant in programs:
        for clock, suffix in ((0, ""), (1, "_cpu")):
            rows[variant][f"prefill{suffix}_tok_s"] = s.prefill / statistics.median(t[clock] for t in prefill[variant])
            rows[variant][f"decode{suffix}_tok_s"] = 1.0 / statistics.median(t[clock] for t in decode[variant])
    return rows, info


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    """One row per variant; speeds from thread CPU time (ratios to fp32 too), wall-clock speeds last."""
    base = rows["fp32"]
    lines = [
        "| variant | held-out ppl | ppl / fp32 | .pte MiB | .pte / fp32 | prefill tok/s | prefill / fp32 "
        "| decode tok/s | decode / fp32 | prefill tok/s (wall) | decode tok/s (wall) |",
        "|---|" + "---:|" * 10,
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['ppl']:.3f} | {r['ppl'] / base['ppl']:.3f} | {r['pte_bytes'] / 2**20:.2f} "
            f"| {r['pte_bytes'] / base['pte_bytes']:.3f} | {r['prefill_cpu_tok_s']:.0f} "
            f"| {r['prefill_cpu_tok_s'] / base['prefill_cpu_tok_s']:.2f} | {r['decode_cpu_tok_s']:.0f} "
            f"| {r['decode_cpu_tok_s'] / base['decode_cpu_tok_s']:.2f} | {r['prefill_tok_s']:.0f} "
            f"| {r['decode_tok_s']:.0f} |"
        )
    return "\n".join(lines)


def method(s: LMSettings, info: dict[str, Any]) -> str:
    c = s.config
    params = sum(p.numel() for p in TinyLlama(c).parameters())
    trained = (
        f"loaded from {info['cached']} (trained by an earlier run of the same settings)"
        if info["cached"]
        else f"trained in this run ({info['seconds'] / 60:.1f} min)"
    )
    delegated = info["reports"]["8da4w GPTQ"]
    linears = [r for r in delegated.rows if r.op == "aten.linear"]
    in_delegate = sum(r.runs_on == "XNNPACK" and r.precision == "int8/int4" for r in linears)
    return (
        f"TinyLlama: {c.n_layers} layers, dim {c.dim}, {c.n_heads} query / {c.n_kv_heads} key-value heads, SwiGLU "
        f"hidden {c.hidden_dim}, KV cache of {c.max_seq_len} positions, byte vocabulary; {params / 1e6:.1f}M "
        f"parameters. {s.train_steps} AdamW steps of {s.batch} x {s.seq_len} bytes ({info['tokens'] / 1e6:.2f}M "
        f"tokens{', bf16 autocast' if s.bf16 else ''}) on the standard library's .py files, final training loss "
        f"{info['final_loss']:.3f} nats/byte; "
        f"{trained}. Held-out perplexity per byte (uniform: 256) over {s.eval_windows} windows of {s.eval_len} "
        f"bytes of held-out files, each one prefill call of the .pte. 8da8w: int8 per-token dynamic activations, "
        f"int8 per-channel weights; 8da4w: int8 per-token activations, int4 symmetric weights in groups of "
        f"{s.group_size}, by round-to-nearest (RTN) or GPTQ (`pt2q.gptq_quantize`, sequential, "
        f"{s.calib_windows} training windows of {s.eval_len} bytes; {info['quantize_s 8da4w GPTQ']:.0f} s). "
        f"Quantized models keep embedding, norms and attention math in fp32; {in_delegate}/{len(linears)} linears of "
        f"the 8da4w .pte run in XNNPACK as int8 x int4. Timing: one thread, prefill of {s.prefill} tokens, then "
        f"{s.decode} greedy one-token calls; medians over {s.rounds} rounds in which the programs take turns in a "
        "random order. tok/s from the calling thread's CPU time (ExecuTorch's thread pool of one runs the "
        "kernels on it), robust to other processes preempting it on a shared machine; wall-clock tok/s in the "
        "last two columns."
    )


def suite(models: Any, variants: Any, settings: Any) -> list[Section]:
    """The ``decoder_lm`` section of ``benchmarks.run``."""
    s = SMALL if settings.small else FULL
    rows, info = measure(s, log=lambda msg: print(f"decoder_lm: {msg}", file=sys.stderr))
    return [Section("Decoder LM on ExecuTorch: 8da4w / 8da8w vs fp32", method(s, info), markdown_table(rows))]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a tiny decoder trained for a few seconds (a smoke test)")
    args = parser.parse_args(argv)
    s = SMALL if args.small else FULL
    rows, info = measure(s, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(method(s, info) + "\n\n" + markdown_table(rows))


if __name__ == "__main__":
    main()
