"""What ``pt2q.quantize`` returns: the converted model, its report, and the record of the fallback
(:class:`FallbackStep`) or of the precision ladder's rounds (with a trade-off table and chart)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from torch.fx import GraphModule

from pt2q.algorithms.ladder_search import Choice, Try
from pt2q.algorithms.precision_ladder import FP32
from pt2q.debug.report_table import QuantizationReport
from pt2q.io.atomic_file import atomic_write

__all__ = ["FallbackStep", "QuantizeResult"]


@dataclass(frozen=True)
class FallbackStep:
    """One try of the accuracy-aware fallback: the layers tried in float (one, or the siblings of one
    kept float before), the metric before and with them float, and whether they were kept float (they
    were, if the metric improved)."""

    layers: tuple[str, ...]
    module_path: str
    sensitivity_sqnr: float
    before: float
    after: float
    kept: bool

    @property
    def gain(self) -> float:
        return self.after - self.before


@dataclass
class QuantizeResult:
    """The converted model, its report, and the fallback's record; unpacks as ``(model, report)``.

    With a ladder: ``tries`` (every round: its choice, estimated cost, metric), ``choices``
    (each layer moved off the base rung: what it costs and buys), ``choice`` (layer -> rung) and
    the estimated costs of the returned model, of the base rung everywhere and of fp32 everywhere
    (in ``cost_unit``: ms when measured)."""

    model: GraphModule
    report: QuantizationReport
    metric: float  # of the returned model
    float_metric: Optional[float]  # of the float model (user metric only; the SQNR of float is inf)
    target_met: bool
    steps: list[FallbackStep] = field(default_factory=list)
    tries: list[Try] = field(default_factory=list)
    choices: list[Choice] = field(default_factory=list)
    choice: dict[str, str] = field(default_factory=dict)
    cost: float = math.nan
    base_cost: float = math.nan
    float_cost: float = math.nan
    cost_unit: str = ""

    @property
    def kept_float(self) -> list[str]:
        return [layer for s in self.steps if s.kept for layer in s.layers] + [
            layer for layer, rung in self.choice.items() if rung == FP32
        ]

    @property
    def rounds(self) -> int:
        """Prepare/calibrate/convert rounds the call made."""
        return len(self.tries) if self.tries else 1 + len(self.steps)

    def trade_off_table(self) -> str:
        """A Markdown table of the ladder's rounds: choice, estimated cost, accuracy, target."""
        if not self.tries:
            return "(no precision ladder: pass ladder= to pt2q.quantize)"
        lines = [
            f"| round | choice | est. cost ({self.cost_unit}) | vs all {self.tries[0].label[4:]} "
            "| output SQNR dB | predicted dB | metric | target |",
            "|---:|---|---:|---:|---:|---:|---:|---|",
        ]
        base = self.tries[0].cost or math.nan
        chosen = self._chosen_round()
        for t in self.tries:
            predicted = "" if t.predicted_sqnr is None else f"{t.predicted_sqnr:.1f}"
            mark = " <- returned" if t.round == chosen else ""
            lines.append(
                f"| {t.round} | {t.label} | {t.cost:.3g} | {t.cost / base:.2f}x | {t.sqnr:.1f} | {predicted} "
                f"| {t.score:.4g} | {'met' if t.met else 'missed'}{mark} |"
            )
        lines.append(f"| - | all fp32 (not run) | {self.float_cost:.3g} | {self.float_cost / base:.2f}x | inf | | | |")
        return "\n".join(lines)

    def _chosen_round(self) -> int:
        for t in self.tries:
            if t.cost == self.cost and t.score == self.metric:
                return t.round
        return -1

    def plot_trade_off(self, path: Union[str, os.PathLike[str], None] = None) -> Any:
        """Accuracy against estimated cost of every round (PNG written atomically at ``path``);
        returns the matplotlib ``Figure``."""
        if not self.tries:
            raise ValueError("no trade-off to plot: pt2q.quantize ran without a precision ladder")
        try:
            from matplotlib.figure import Figure
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("plot_trade_off needs matplotlib: pip install matplotlib") from e
        fig = Figure(figsize=(7.0, 4.5), layout="constrained")
        ax = fig.add_subplot()
        for t in self.tries:
            ax.scatter([t.cost], [t.score], color="tab:green" if t.met else "tab:red", zorder=3)
            ax.annotate(
                f"{t.round}: {t.label}", (t.cost, t.score), fontsize=7, xytext=(4, 4), textcoords="offset points"
            )
        ax.axvline(self.float_cost, color="gray", linestyle="--", label="all fp32")
        ax.set_xlabel(f"estimated cost ({self.cost_unit})")
        ax.set_ylabel("metric (output SQNR dB)" if self.float_metric is None else "metric")
        ax.set_title("pt2q.quantize: accuracy vs cost per round (green: target met)")
        ax.legend(fontsize=8)
        if path is not None:
            with atomic_write(path) as f:
                fig.savefig(f, dpi=120, format="png")
        return fig

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.report))
