"""benchmarks/decoder_lm.py without its long parts: the trained-weights cache and the table's ratios.
(The whole pipeline runs in the llm_8da4w tutorial test, and in `python -m benchmarks.decoder_lm`.)"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmarks import decoder_lm
from tutorials.tiny_llama import LlamaConfig


def test_trained_weights_are_cached_and_reloaded_without_pickle(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    s = dataclasses.replace(
        decoder_lm.SMALL,
        train_steps=2,
        batch=2,
        seq_len=16,
        cache=True,
        config=LlamaConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=64, max_seq_len=32),
    )
    tokens = torch.randint(0, 256, (4096,), dtype=torch.uint8)
    first, info = decoder_lm.trained_model(s, tokens)
    assert info["cached"] == "" and info["tokens"] == 2 * 2 * 16
    path = decoder_lm._cache_file(s)
    assert path.parent.parent.parent == tmp_path and path.is_file()
    assert not list(path.parent.glob("*.tmp"))  # written through a temporary file, then renamed
    second, info = decoder_lm.trained_model(s, tokens)
    assert info["cached"] == str(path)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert decoder_lm._cache_file(dataclasses.replace(s, train_steps=3)) != path  # other settings, other file


def test_table_ratios_divide_numbers_of_the_same_rows() -> None:
    rows = {
        "fp32": {
            "ppl": 4.0,
            "pte_bytes": 2**20 * 40,
            "prefill_tok_s": 100.0,
            "decode_tok_s": 50.0,
            "prefill_cpu_tok_s": 110.0,
            "decode_cpu_tok_s": 55.0,
        },
        "8da4w GPTQ": {
            "ppl": 4.1,
            "pte_bytes": 2**20 * 6,
            "prefill_tok_s": 150.0,
            "decode_tok_s": 200.0,
            "prefill_cpu_tok_s": 160.0,
            "decode_cpu_tok_s": 220.0,
        },
    }
    lines = decoder_lm.markdown_table(rows).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = dict(zip(header, (c.strip() for c in lines[3].strip("|").split("|"))))
    assert cells["variant"] == "8da4w GPTQ"
    assert float(cells["ppl / fp32"]) == pytest.approx(4.1 / 4.0, abs=1e-3)
    assert float(cells[".pte / fp32"]) == pytest.approx(6 / 40, abs=1e-3)
    assert float(cells["decode / fp32"]) == pytest.approx(220 / 55, abs=1e-2)
    assert float(cells["decode tok/s (wall)"]) == 200
