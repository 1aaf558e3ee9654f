"""Run each tutorial script's ``main(fast=True)`` and check the numbers it returns."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pt2q  # noqa: F401  (registers the quantized_decomposed ops a saved program holds)

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"


def load_tutorial(name: str):
    if str(TUTORIALS) not in sys.path:  # as when run as a script: the tutorials import their shared digits.py
        sys.path.insert(0, str(TUTORIALS))
    path = TUTORIALS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tutorials_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ptq_xnnpack():
    r = load_tutorial("ptq_xnnpack").main(fast=True)
    assert r["fp32_accuracy"] > 85
    assert r["int8_accuracy"] > r["fp32_accuracy"] - 3
    assert r["weight_size_ratio"] < 0.3
    assert r["int8_pt2_bytes"] < r["fp32_pt2_bytes"]
    assert r["reload_bit_exact"]
    assert r["pte_sqnr_db"] > 25


def test_qat_xnnpack():
    r = load_tutorial("qat_xnnpack").main(fast=True)
    assert r["fp32_accuracy"] > 85
    assert r["ptq_int8_accuracy"] > r["fp32_accuracy"] - 3
    assert r["qat_int8_accuracy"] > r["fp32_accuracy"] - 3


def test_custom_quantizer():
    r = load_tutorial("custom_quantizer").main(fast=True)
    assert r["sqnr_db"] > 20
    assert r["weight_size_ratio"] < 0.35
    assert r["quantized_weight_dtypes"] == ["torch.int8", "torch.uint8"]  # linear weights, embedding rows
    assert "quantized_decomposed.dequantize_per_channel.default" in r["quantize_ops"]


def test_x86_inductor():
    r = load_tutorial("x86_inductor").main(fast=True)
    assert r["fp32_accuracy"] > 85
    assert r["lowered_accuracy"] > r["fp32_accuracy"] - 3
    assert r["sqnr_converted_db"] > 20
    assert r["sqnr_lowered_db"] > 20
    assert r["sqnr_lowered_vs_converted_db"] > 30  # oneDNN kernels agree with the Q/DQ reference
    assert "onednn.qconv_pointwise.default" in r["onednn_ops"]
    assert "onednn.qlinear_pointwise.default" in r["onednn_ops"]


def test_debug_accuracy(tmp_path):
    r = load_tutorial("debug_accuracy").main(fast=True, out_dir=tmp_path)
    assert r["fp32_accuracy"] > 85
    assert r["int8_accuracy"] < r["fp32_accuracy"] - 4  # measured: a 7.2-point drop
    # sensitivity finds the layer with the planted outlier channel; the error shows downstream
    assert (r["culprit"], r["culprit_module"]) == ("linear", "embed")
    assert r["lowest_cumulative"] != r["culprit"] and r["lowest_cumulative_module"] in ("fc1", "fc2")
    assert r["culprit_sensitivity_sqnr_db"] < 15 and r["output_sqnr_db"] < 15
    assert r["lowapi_sqnr_db"]["linear"] > 25 > r["lowapi_sqnr_db"]["linear_2"]
    # keeping embed float is not enough (fc1 quantizes its input); embed + fc1, or clipping, is
    assert r["keep_float_modules"] == ["embed", "fc1"]
    assert r["keep_culprit_float_accuracy"] < r["fp32_accuracy"] - 4
    assert r["keep_float_accuracy"] > r["fp32_accuracy"] - 1.5  # measured: equal
    assert r["percentile_accuracy"] > r["fp32_accuracy"] - 2  # measured: 0.3 below
    assert r["keep_float_output_sqnr_db"] > 30 and r["percentile_output_sqnr_db"] > 18
    assert r["percentile_lowest_cumulative_sqnr_db"] > r["lowest_cumulative_sqnr_db"] + 10
    png = Path(r["png"])
    assert png.parent == tmp_path and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_transformer_int8():
    pytest.importorskip("transformers")
    r = load_tutorial("transformer_int8").main(fast=True)
    # the plain recipe quantizes the additive mask with a scale of ~1e36, and convert says so by node
    assert r["range_warnings"] and all("above 1000" in w for w in r["range_warnings"])
    assert r["range_warnings"][0].startswith("convert_pt2e: node 'mul' (read by add_2, add_5)")
    # the default quantizer keeps the mask and the two scores + mask adds float
    assert r["mask_rows"] == ["mul", "add_2", "add_5"]
    assert r["guarded_cosine"] > 0.999 and r["aware_cosine"] > 0.999  # a random tiny BERT: no outliers to lose
    assert r["aware_notes"][0].endswith("; target met")
    assert r["preset_cosine"] > 0.999 and r["pte"]["preset"]["pte_cosine"] > 0.999
    assert r["pte"]["preset"]["int8_weight_share"] == 1.0  # embedding rows uint8, linears int8


def test_distributed_calibration(tmp_path):
    """Launched as its docstring says: torchrun, 2 processes, gloo on CPU; killed if it hangs."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(TUTORIALS / "distributed_calibration.py"),
        "--fast",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers
        raise
    assert proc.returncode == 0, err[-4000:]
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["world_size"] == 2
    assert r["ptq_same_program"] and r["qat_same_program"]
    assert r["fp32_accuracy"] > 85
    assert r["ptq_int8_accuracy"] > r["fp32_accuracy"] - 3
    assert r["qat_int8_accuracy"] > r["fp32_accuracy"] - 3
    assert "programs identical on every rank: PTQ True, QAT True" in out and out.count("accuracy on") == 1
    assert err.count("100%") == 1  # one progress bar: rank 0's
    assert "Warning" not in out + err
    program = torch.export.load(tmp_path / "digits_qat_int8.pt2")
    assert program.module()(torch.rand(3, 1, 8, 8)).shape == (3, 10)


def test_llm_8da4w():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny decoder: a second intra-op thread only spins on a busy 2-core machine
    try:
        r = load_tutorial("llm_8da4w").main(fast=True)
    finally:
        torch.set_num_threads(threads)
    ppl = r["perplexity"]
    assert ppl["fp32"] < 256 / 10  # trained: far below a uniform guess over bytes
    assert ppl["8da4w GPTQ"] <= ppl["8da4w RTN"] * 1.01  # GPTQ no worse than round-to-nearest on held-out text
    assert ppl["8da4w GPTQ"] < ppl["fp32"] * 1.1
    assert max(r["gptq_vs_rtn_error"]) < 1  # and better on its own objective, layer by layer
    assert r["pte_perplexity"] == pytest.approx(ppl["8da4w GPTQ"], rel=0.02)  # the .pte computes the converted graph
    # every 4-bit linear runs inside the XNNPACK delegate, none in portable kernels
    assert r["linears"] == 7 + 1 and r["linears_in_xnnpack_int4"] == r["linears"] and r["fallbacks"] == 0
    assert r["linear_weight_bytes"] == r["fp32_linear_weight_bytes"] // 8  # packed int4 codes
    assert r["pte_vs_graph_sqnr_db"] > 25
    assert r["greedy_tokens_agree"] >= 0.75 and len(r["generated"]) > 0
