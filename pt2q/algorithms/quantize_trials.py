"""The rounds ``pt2q.quantize`` makes: one prepare + calibration + convert of the float graph per call
(:class:`Trials`), each measured against the accuracy :class:`AccuracyTarget`."""

from __future__ import annotations

import copy
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn
from torch.fx import GraphModule
from tqdm import tqdm

from pt2q.algorithms.bias_correction import correct_bias
from pt2q.algorithms.keep_float import KeepFloat
from pt2q.algorithms.smoothing import smooth_quant as apply_smooth_quant
from pt2q.core.ops import SHARE_QPARAMS_OPS, is_op
from pt2q.debug.layer_errors import ErrorStats
from pt2q.debug.quantization_report import report
from pt2q.debug.report_table import ReportRow
from pt2q.passes.convert import convert_pt2e
from pt2q.passes.prepare import prepare_pt2e
from pt2q.quantizer import Quantizer

__all__ = ["Metric", "AccuracyTarget", "Trials", "output_sqnr"]

Metric = Callable[[torch.nn.Module], float]


def output_sqnr(reference: nn.Module, model: nn.Module, batches: Sequence[Sequence[Any]]) -> float:
    """SQNR (dB) of ``model``'s outputs against ``reference``'s over ``batches``."""
    stats = ErrorStats()
    with torch.no_grad():
        for batch in batches:
            stats.add_outputs(reference(*batch), model(*batch))
    return stats.sqnr


@dataclass(frozen=True)
class AccuracyTarget:
    """The accuracy a quantized model must reach: a ``max_drop`` of the user ``metric`` below the float
    model's (``float_metric``), a ``min_sqnr`` of the output in dB, both, or neither (no target)."""

    metric: Optional[Metric]
    max_drop: Optional[float]
    min_sqnr: Optional[float]
    float_metric: Optional[float]

    @property
    def targeted(self) -> bool:
        return self.max_drop is not None or self.min_sqnr is not None

    def met(self, score: float, sqnr: float) -> bool:
        """Whether a model scoring ``score`` (the metric, or the SQNR without one) with output ``sqnr`` meets it."""
        drop_ok = self.max_drop is None or (
            self.float_metric is not None and self.float_metric - score <= self.max_drop
        )
        return drop_ok and (self.min_sqnr is None or sqnr >= self.min_sqnr)

    def describe(self, value: float) -> str:
        """A score as text: the metric's value, or dB."""
        return f"{value:.4g}" if self.metric is not None else f"{value:.1f} dB"


@dataclass
class Trials:
    """Quantizes copies of ``float_gm`` (one round per :meth:`attempt`) and measures them."""

    float_gm: GraphModule
    quantizer: Quantizer
    batches: list[tuple]  # calibration
    evaluation: list[tuple]  # what the output SQNR is measured on
    target: AccuracyTarget
    needs_sqnr: bool  # measure the output SQNR even under a user metric (a min_sqnr, or the ladder's model)
    smooth_quant: Optional[float] = None
    bias_correction: bool = False
    report_batches: int = 2
    progress: bool = True

    def attempt(self, layers: dict[str, str], with_quantizer: Optional[Quantizer] = None) -> GraphModule:
        """A converted copy of the float graph, ``layers`` kept float (or quantized by ``with_quantizer``)."""
        with warnings.catch_warnings():  # torch's own pytree deprecation notice when copying a GraphModule
            warnings.simplefilter("ignore", FutureWarning)
            gm = copy.deepcopy(self.float_gm)
        if self.smooth_quant is not None:
            apply_smooth_quant(gm, self.batches, alpha=self.smooth_quant)
        chosen = with_quantizer or (KeepFloat(self.quantizer, layers) if layers else self.quantizer)
        prepared = prepare_pt2e(gm, chosen)
        with torch.no_grad():
            for batch in tqdm(
                self.batches,
                desc="pt2q: calibrating",
                unit="batch",
                leave=False,
                disable=not self.progress,
                file=sys.stderr,
            ):
                prepared(*batch)
        converted = convert_pt2e(prepared)
        if self.bias_correction:
            correct_bias(converted, self.float_gm, self.batches)
        return converted

    def measure(self, gm: GraphModule) -> tuple[float, float]:
        """(score: the user metric or the SQNR, SQNR or nan when not needed)."""
        needed = self.target.metric is None or self.needs_sqnr
        sqnr = output_sqnr(self.float_gm, gm, self.evaluation) if needed else math.nan
        return (self.target.metric(gm) if self.target.metric is not None else sqnr), sqnr

    def candidates(self, gm: GraphModule, sensitivity: bool = True) -> list[ReportRow]:
        """Quantized rows (with a sensitivity, worst first); a view or dropout only shares its producer's
        qparams: moving it alone changes nothing."""
        rows = report(gm, self.float_gm, self.batches[: self.report_batches], sensitivity=sensitivity).rows
        if sensitivity:
            rows = sorted((r for r in rows if r.sensitivity_sqnr is not None), key=lambda r: r.sensitivity_sqnr or 0.0)
        by_name = {n.name: n for n in self.float_gm.graph.nodes}
        return [r for r in rows if r.quantized and not is_op(by_name.get(r.name), SHARE_QPARAMS_OPS)]
