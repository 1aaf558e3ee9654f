"""``numeric_report``: :func:`pt2q.report` for a program lowered to ExecuTorch.

The debug handles survive lowering (every op inside an XNNPACK delegate keeps the
``from_node`` provenance of the float node it came from), so each row of the report
says where its node runs. What the runtime does not give is the value of each op
inside a delegate: a delegate is one call that returns only its outputs. So the
per-node SQNRs are measured on the Q/DQ program that was lowered (the reference the
lowering tests hold XNNPACK to), and the model's output is measured on the ``.pte``
itself, through the ExecuTorch runtime.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch.export import ExportedProgram

from pt2q.debug.layer_errors import ErrorStats
from pt2q.debug.quantization_report import QuantizationReport, as_batches, report
from pt2q.lowering.executorch import LoweredProgram
from pt2q.runtime import load

__all__ = ["LoweredReport", "numeric_report"]


class LoweredReport(QuantizationReport):
    """A :class:`QuantizationReport` with the ``.pte``'s own output SQNR (``runtime_output_sqnr``)."""

    def __init__(self, base: QuantizationReport, rows: list, runtime_output_sqnr: Any, notes: list[str]) -> None:
        super().__init__(rows, base.output_sqnr, base.batches, notes)
        self.runtime_output_sqnr = runtime_output_sqnr


def numeric_report(
    lowered: LoweredProgram, float_model: Any, inputs: Any, *, sensitivity: bool = True
) -> LoweredReport:
    """Per-node report of ``lowered`` (from ``to_executorch``) against ``float_model``.

    Rows are those of ``pt2q.report(lowered.exported_program, float_model, inputs)`` with
    ``runs_on`` filled in from the delegation report; the first note gives the output
    SQNR of the ``.pte`` run by the ExecuTorch runtime next to the Q/DQ program's.
    """
    base = report(lowered.exported_program, float_model, inputs, sensitivity=sensitivity)
    placement: dict[str, str] = {}
    for row in lowered.report.rows:
        if not row.is_qdq:
            placement.setdefault(row.source, row.runs_on)
    rows = [dataclasses.replace(r, runs_on=placement.get(r.name)) for r in base.rows]

    notes: list[str] = []
    runtime_sqnr = None
    if base.batches:
        run_float = float_model.module() if isinstance(float_model, ExportedProgram) else float_model
        if not isinstance(run_float, torch.fx.GraphModule):
            run_float = copy.deepcopy(run_float).eval()  # the caller's module keeps its mode
        program, stats = load(lowered.buffer), ErrorStats()
        with torch.no_grad():
            for batch in as_batches(inputs):
                stats.add_outputs(run_float(*batch), program(*batch))
        runtime_sqnr = stats.sqnr
        notes.append(
            f"output SQNR of the .pte on the ExecuTorch runtime: {runtime_sqnr:.1f} dB "
            f"(the Q/DQ program it was lowered from: {base.output_sqnr:.1f} dB)"
        )
        notes.append(
            "per-node SQNRs are measured on the Q/DQ program: the XNNPACK delegate returns "
            "only its outputs, not the values of the ops inside it"
        )
    return LoweredReport(base, rows, runtime_sqnr, notes)
