"""The README's main job runs end to end and reports an int8 model that keeps fp32's accuracy."""
from __future__ import annotations

import re

import torch

from pt2q.cli import demo


def test_demo_quantizes_saves_and_prints_the_table(tmp_path, capsys) -> None:
    demo.main(["--out", str(tmp_path), "--epochs", "4", "--calibration-batches", "8"])
    out = capsys.readouterr().out
    rows = {m.group(1).strip(): m.groups() for m in re.finditer(r"^\| (fp32\s*|int8[^|]*)\|\s*([\d.]+) \|\s*([\d,]+) \|\s*([\d.]+) \|", out, re.M)}
    assert set(rows) == {"fp32", "int8 (XNNPACK Q/DQ)"}
    fp32_acc, int8_acc = float(rows["fp32"][1]), float(rows["int8 (XNNPACK Q/DQ)"][1])
    assert fp32_acc > 90 and int8_acc >= fp32_acc - 1.0
    assert float(rows["int8 (XNNPACK Q/DQ)"][3]) <= 0.3  # tensor bytes vs fp32
    loaded = torch.export.load(tmp_path / "demo_int8.pt2")
    assert any("quantize_per_tensor" in str(n.target) for n in loaded.graph.nodes)
