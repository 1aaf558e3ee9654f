"""The README's main job runs end to end: int8 programs on real runtimes keep fp32's accuracy."""

from __future__ import annotations

import re

import torch

from pt2q.cli import demo


def test_demo_quantizes_lowers_and_prints_the_table(tmp_path, capsys) -> None:
    demo.main(["--out", str(tmp_path), "--epochs", "4", "--calibration-batches", "8"])
    out = capsys.readouterr().out
    rows = {
        (m.group(1).strip(), m.group(2).strip()): m.groups()[2:]
        for m in re.finditer(
            r"^\| (fp32|int8 \w+)\s*\| ([^|]+)\|\s*([\d.]+) \| (\S+)\s*\|\s*([\d,]+) \|\s*([\d.]+) \|\s*([\d.]+) \|\s*([\d.inf]+) \|",
            out,
            re.M,
        )
    }
    assert set(rows) == {
        ("fp32", "PyTorch eager"),
        ("fp32", "ExecuTorch .pte"),
        ("int8 XNNPACK", "ExecuTorch .pte"),
        ("int8 x86", "Inductor + oneDNN"),
    }, out
    fp32_acc = float(rows["fp32", "PyTorch eager"][0])
    assert fp32_acc > 90
    for key in (("int8 XNNPACK", "ExecuTorch .pte"), ("int8 x86", "Inductor + oneDNN")):
        acc, name, size, ratio, ms, db = rows[key]
        assert float(acc) >= fp32_acc - 1.0, (key, acc)
        assert float(db) > 30, (key, db)
        assert (tmp_path / name).stat().st_size == int(size.replace(",", ""))
    assert float(rows["int8 XNNPACK", "ExecuTorch .pte"][3]) < 0.35  # int8 .pte vs fp32 .pte
    loaded = torch.export.load(tmp_path / "demo_int8_xnnpack.pt2")
    assert any("quantize_per_tensor" in str(n.target) for n in loaded.graph.nodes)
