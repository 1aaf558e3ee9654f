"""``pt2q.quantize``: export, prepare, calibrate, convert in one call, with accuracy-aware fallback.

    result = pt2q.quantize(model, example_inputs, quantizer, calibration_batches, min_sqnr=30)
    model_int8, report = result          # or result.model, result.report, result.steps
    print(report)                        # what was kept float, and what each choice bought

Without a target it quantizes once. With one (``min_sqnr`` on the default metric, the
output SQNR in dB against the float model; ``max_drop`` on a ``metric`` of your own,
higher is better) it measures the converted model and, while the target is missed, keeps
nodes float in the order the report's *sensitivity* column ranks them (the output SQNR
when only that node is quantized, worst first): each try costs one prepare + calibration
+ convert and is kept only if the metric improves. When a node helps, its siblings (the
same op at the same place of the other repeated blocks, e.g. every layer's FFN output
linear) are tried together next, as one try. At most ``max_passes`` tries are made, so
the cost is bounded.

With a ``ladder`` (a :class:`~pt2q.algorithms.precision_ladder.Ladder`, or extra rungs after the
quantizer's own recipe, e.g. ``pt2q.quantizers.ladders.xnnpack_rungs()``) the fallback is a
latency-aware search instead (:mod:`pt2q.algorithms.ladder_search`): each layer may move to another
recipe the backend runs fast (dynamic per-token int8, ...) or to fp32, and the search picks the
cheapest choice on ``cost`` (measured per-layer latency on the target, e.g.
``pt2q.lowering.latency_cost.PteLatencyCost``; without one, a MAC-based estimate) that meets
the target, in at most ``max_passes`` rounds. The result's :meth:`QuantizeResult.trade_off_table`
shows every round's cost and accuracy.
"""

from __future__ import annotations

import copy
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import nn
from torch.export import ExportedProgram
from torch.fx import GraphModule
from tqdm import tqdm

from pt2q.algorithms.bias_correction import correct_bias
from pt2q.algorithms.keep_float import KeepFloat, layer_name
from pt2q.algorithms.ladder_search import Choice, LadderOutcome, Try, search
from pt2q.algorithms.precision_ladder import FP32, CostModel, Ladder, MixedPrecision, Rung
from pt2q.algorithms.smoothing import smooth_quant as apply_smooth_quant
from pt2q.core.notes import FLOAT_REASON_KEY, set_note
from pt2q.core.ops import SHARE_QPARAMS_OPS, is_op
from pt2q.debug.layer_errors import ErrorStats
from pt2q.debug.quantization_report import QuantizationReport, ReportRow, as_batches, report
from pt2q.io.atomic_file import atomic_write
from pt2q.passes.convert import convert_pt2e
from pt2q.passes.prepare import prepare_pt2e
from pt2q.quantizer import Quantizer

__all__ = ["FallbackStep", "QuantizeResult", "quantize", "output_sqnr", "Try", "Choice"]

Metric = Callable[[torch.nn.Module], float]


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


def output_sqnr(reference: nn.Module, model: nn.Module, batches: Sequence[Sequence[Any]]) -> float:
    """SQNR (dB) of ``model``'s outputs against ``reference``'s over ``batches``."""
    stats = ErrorStats()
    with torch.no_grad():
        for batch in batches:
            stats.add_outputs(reference(*batch), model(*batch))
    return stats.sqnr


def _float_graph(model: Union[nn.Module, GraphModule, ExportedProgram], example_inputs: tuple) -> GraphModule:
    if isinstance(model, ExportedProgram):
        return model.module()
    if isinstance(model, GraphModule):
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"pt2q.quantize: model must be an nn.Module, GraphModule or ExportedProgram, got {type(model).__name__}"
        )
    eager = copy.deepcopy(model).eval()
    return torch.export.export(eager, tuple(example_inputs)).module()


def _describe(value: float, metric: Optional[Metric]) -> str:
    return f"{value:.4g}" if metric is not None else f"{value:.1f} dB"


def quantize(
    model: Union[nn.Module, GraphModule, ExportedProgram],
    example_inputs: Sequence[Any],
    quantizer: Quantizer,
    calibration_data: Any,
    *,
    metric: Optional[Metric] = None,
    max_drop: Optional[float] = None,
    min_sqnr: Optional[float] = None,
    eval_data: Any = None,
    max_passes: int = 12,
    smooth_quant: Optional[float] = None,
    bias_correction: bool = False,
    report_batches: int = 2,
    progress: bool = True,
    ladder: Union[Ladder, Sequence[Rung], None] = None,
    cost: Optional[CostModel] = None,
) -> QuantizeResult:
    """Quantize ``model`` with ``quantizer`` on ``calibration_data``; meet a target by keeping nodes float.

    * ``model``: an eager module (exported here, in eval mode, with ``example_inputs``), or
      an exported graph (``ep`` or ``ep.module()``, left untouched).
    * ``calibration_data``: a list of input tuples (one tuple or tensor: one batch).
    * ``metric(model) -> float``: your accuracy, higher is better; ``max_drop``: how far below
      ``metric(float model)`` it may fall. ``min_sqnr``: the least output SQNR in dB against
      the float model on ``eval_data`` (default: the calibration data). Either target, or
      both, turn the fallback on; with neither the model is quantized once.
    * ``max_passes``: most candidates the fallback tries (each one prepare/calibrate/convert).
    * ``smooth_quant=alpha`` runs :func:`pt2q.smooth_quant` on the float graph
      first; ``bias_correction=True`` runs :func:`pt2q.correct_bias` after
      each convert. ``report_batches``: batches the report's SQNR columns are measured on.
    * ``ladder``: other recipes per layer (see the module docs); its first rung must be
      ``quantizer`` (a sequence of rungs is appended after it). ``cost``: what each layer costs
      on each rung on the target runtime; ``max_passes`` then bounds the rounds.
    """
    if max_drop is not None and metric is None:
        raise ValueError("pt2q.quantize: max_drop needs a metric (for the default output SQNR use min_sqnr)")
    batches = (
        [] if isinstance(calibration_data, (list, tuple)) and not calibration_data else as_batches(calibration_data)
    )
    if not batches:
        raise ValueError("pt2q.quantize: calibration_data is empty; pass a list of input tuples")
    evaluation = as_batches(eval_data) if eval_data is not None else batches
    float_gm = _float_graph(model, tuple(example_inputs))
    float_metric = metric(float_gm) if metric is not None and max_drop is not None else None

    steps_ladder = _as_ladder(ladder, quantizer)

    def attempt(layers: dict[str, str], with_quantizer: Optional[Quantizer] = None) -> GraphModule:
        with warnings.catch_warnings():  # torch's own pytree deprecation notice when copying a GraphModule
            warnings.simplefilter("ignore", FutureWarning)
            gm = copy.deepcopy(float_gm)
        if smooth_quant is not None:
            apply_smooth_quant(gm, batches, alpha=smooth_quant)
        chosen = with_quantizer or (KeepFloat(quantizer, layers) if layers else quantizer)
        prepared = prepare_pt2e(gm, chosen)
        with torch.no_grad():
            for batch in tqdm(
                batches, desc="pt2q: calibrating", unit="batch", leave=False, disable=not progress, file=sys.stderr
            ):
                prepared(*batch)
        converted = convert_pt2e(prepared)
        if bias_correction:
            correct_bias(converted, float_gm, batches)
        return converted

    def measure(gm: GraphModule) -> tuple[float, float]:
        """(score: the user metric or the SQNR, SQNR or nan when not needed)."""
        needed = metric is None or min_sqnr is not None or steps_ladder is not None  # the ladder models SQNR
        sqnr = output_sqnr(float_gm, gm, evaluation) if needed else math.nan
        return (metric(gm) if metric is not None else sqnr), sqnr

    def met(score: float, sqnr: float) -> bool:
        drop_ok = max_drop is None or (float_metric is not None and float_metric - score <= max_drop)
        return drop_ok and (min_sqnr is None or sqnr >= min_sqnr)

    current = attempt({})
    score, sqnr = measure(current)
    steps: list[FallbackStep] = []
    layers: dict[str, str] = {}
    targeted = max_drop is not None or min_sqnr is not None
    outcome: Optional[LadderOutcome] = None
    by_name = {n.name: n for n in float_gm.graph.nodes}

    def candidates(gm: GraphModule, sensitivity: bool = True) -> list[ReportRow]:
        """Quantized rows (with a sensitivity, worst first); a view or dropout only shares its producer's
        qparams: moving it alone changes nothing."""
        rows = report(gm, float_gm, batches[:report_batches], sensitivity=sensitivity).rows
        if sensitivity:
            rows = sorted((r for r in rows if r.sensitivity_sqnr is not None), key=lambda r: r.sensitivity_sqnr or 0.0)
        return [r for r in rows if r.quantized and not is_op(by_name.get(r.name), SHARE_QPARAMS_OPS)]

    if steps_ladder is not None and targeted:

        def run_round(choice: dict[str, str]) -> tuple[GraphModule, float, float, bool]:
            gm = attempt({}, MixedPrecision(steps_ladder, choice))
            s, q = measure(gm)
            return gm, s, q, met(s, q)

        # the plain flow met the target: only the layers' costs are needed (does a cheaper rung exist?)
        rows = candidates(current, sensitivity=not met(score, sqnr))
        outcome = search(
            float_gm,
            steps_ladder,
            run_round,
            lambda gm: {r.name: r.sensitivity_sqnr for r in candidates(gm) if r.sensitivity_sqnr is not None},
            [r.name for r in rows],
            {r.name: r.sensitivity_sqnr for r in rows if r.sensitivity_sqnr is not None} or None,
            (current, score, sqnr, met(score, sqnr)),
            cost_model=cost,
            min_sqnr=min_sqnr,
            max_rounds=max_passes,
            progress=progress,
        )
        current, score, sqnr = outcome.model, outcome.score, outcome.sqnr
    elif targeted and not met(score, sqnr):
        queue = candidates(current)
        tried: set[str] = set()
        bar = tqdm(
            total=max_passes,
            desc="pt2q: accuracy fallback",
            unit="try",
            leave=False,
            disable=not progress,
            file=sys.stderr,
        )
        while queue and len(steps) < max_passes and not met(score, sqnr):
            row = queue.pop(0)
            sensitivity = row.sensitivity_sqnr
            assert sensitivity is not None  # the queue holds only rows with a sensitivity
            for group in ([row], [r for r in queue if _siblings(r, row)]):
                if not group or len(steps) >= max_passes or met(score, sqnr):
                    break
                tried.update(r.name for r in group)
                trial = {**layers, **{r.name: "kept float by pt2q.quantize" for r in group}}
                candidate = attempt(trial)
                new_score, new_sqnr = measure(candidate)
                kept = new_score > score
                steps.append(
                    FallbackStep(tuple(r.name for r in group), row.module_path, sensitivity, score, new_score, kept)
                )
                bar.update()
                if not kept:
                    break  # the siblings of a node that did not help are not tried together
                layers, current, score, sqnr = trial, candidate, new_score, new_sqnr
            queue = [r for r in queue if r.name not in tried]
        bar.close()

    _explain_kept(current, steps, metric)
    final = report(current, float_gm, evaluation[:report_batches], sensitivity=False)
    final.notes.extend(
        _summary(steps, score, sqnr, float_metric, metric, max_drop, min_sqnr, targeted, met(score, sqnr))
    )
    if outcome is None or steps_ladder is None:
        return QuantizeResult(current, final, score, float_metric, met(score, sqnr), steps)
    final.notes.append(_ladder_summary(outcome, steps_ladder))
    return QuantizeResult(
        current,
        final,
        score,
        float_metric,
        met(score, sqnr),
        steps,
        outcome.tries,
        outcome.choices,
        outcome.choice,
        outcome.cost,
        outcome.base_cost,
        outcome.float_cost,
        outcome.cost_unit,
    )


def _as_ladder(ladder: Union[Ladder, Sequence[Rung], None], quantizer: Quantizer) -> Optional[Ladder]:
    if ladder is None or isinstance(ladder, Ladder) and ladder.base.quantizer is quantizer:
        return ladder
    if isinstance(ladder, Ladder):
        raise ValueError(
            "pt2q.quantize: the ladder's first rung must be the quantizer passed to pt2q.quantize "
            "(or pass ladder=[extra rungs] to put them after it)"
        )
    return Ladder([Rung("as given", quantizer), *ladder])


def _ladder_summary(outcome: LadderOutcome, ladder: Ladder) -> str:
    counts: dict[str, int] = {}
    for rung in outcome.choice.values():
        counts[rung] = counts.get(rung, 0) + 1
    moved = ", ".join(f"{n} layer(s) on {r}" for r, n in counts.items()) or "none"
    ratio = outcome.cost / outcome.base_cost if outcome.base_cost else math.nan
    return (
        f"precision ladder ({' -> '.join(r.name for r in ladder.rungs)}): {len(outcome.tries)} rounds; moved off "
        f"{ladder.base.name}: {moved}; est. cost {outcome.cost:.3g} {outcome.cost_unit} ({ratio:.2f}x all "
        f"{ladder.base.name}, all fp32 {outcome.float_cost:.3g})"
    )


def _siblings(row: ReportRow, of: ReportRow) -> bool:
    """The same op in the same place of another repeated block (``layer.3.output.dense`` for
    ``layer.0.output.dense``): in a transformer, siblings are about as sensitive."""
    shape = re.sub(r"\d+", "#", of.module_path)
    return bool(of.module_path) and row.op == of.op and row is not of and re.sub(r"\d+", "#", row.module_path) == shape


def _explain_kept(gm: GraphModule, steps: list[FallbackStep], metric: Optional[Metric]) -> None:
    """Say on each kept-float node what keeping it float bought (shown by the report)."""
    bought = {
        layer: f"kept float by pt2q.quantize: {_describe(s.before, metric)} -> {_describe(s.after, metric)}"
        for s in steps
        if s.kept
        for layer in s.layers
    }
    for node in gm.graph.nodes:
        if node.op == "call_function" and layer_name(node) in bought:
            set_note(node, FLOAT_REASON_KEY, bought[layer_name(node)])


def _summary(
    steps: list[FallbackStep],
    score: float,
    sqnr: float,
    float_metric: Optional[float],
    metric: Optional[Metric],
    max_drop: Optional[float],
    min_sqnr: Optional[float],
    targeted: bool,
    met: bool,
) -> list[str]:
    what = "metric" if metric is not None else "output SQNR"
    lines = [
        f"pt2q.quantize: {what} {_describe(score, metric)}"
        + (f" (float {float_metric:.4g}, allowed drop {max_drop:g})" if float_metric is not None else "")
        + (
            f", output SQNR {sqnr:.1f} dB (target >= {min_sqnr:g})"
            if metric is not None and min_sqnr is not None
            else (f" (target >= {min_sqnr:g} dB)" if min_sqnr is not None else "")
        )
        + ("" if not targeted else ("; target met" if met else "; target NOT met"))
    ]
    if steps:
        kept = [s for s in steps if s.kept]
        lines.append(
            f"accuracy fallback: {len(steps)} tries in sensitivity order, {sum(len(s.layers) for s in kept)} "
            "layer(s) kept float: "
            + (", ".join(f"{'+'.join(s.layers)} ({s.gain:+.3g})" for s in kept) or "none helped")
        )
    return lines
