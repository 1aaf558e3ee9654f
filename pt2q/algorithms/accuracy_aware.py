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

import math
from collections.abc import Sequence
from typing import Any, Optional, Union

from torch import nn
from torch.export import ExportedProgram
from torch.fx import GraphModule

from pt2q.algorithms.fallback import Kept, explain_kept, sensitivity_fallback, summary
from pt2q.algorithms.ladder_search import Choice, LadderOutcome, Try, search
from pt2q.algorithms.precision_ladder import CostModel, Ladder, MixedPrecision, Rung
from pt2q.algorithms.quantize_result import FallbackStep, QuantizeResult
from pt2q.algorithms.quantize_trials import AccuracyTarget, Metric, Trials, output_sqnr
from pt2q.debug.inputs import as_batches, float_graph
from pt2q.debug.quantization_report import report
from pt2q.quantizer import Quantizer

__all__ = ["FallbackStep", "QuantizeResult", "quantize", "output_sqnr", "Try", "Choice"]


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
    batches = _calibration_batches(calibration_data, metric, max_drop)
    evaluation = as_batches(eval_data) if eval_data is not None else batches
    float_gm = float_graph(model, tuple(example_inputs), "pt2q.quantize: model")
    float_metric = metric(float_gm) if metric is not None and max_drop is not None else None
    target = AccuracyTarget(metric, max_drop, min_sqnr, float_metric)
    steps_ladder = _as_ladder(ladder, quantizer)
    needs_sqnr = min_sqnr is not None or steps_ladder is not None  # the ladder models SQNR
    settings = (smooth_quant, bias_correction, report_batches, progress)
    trials = Trials(float_gm, quantizer, batches, evaluation, target, needs_sqnr, *settings)
    current = trials.attempt({})
    best = Kept(current, *trials.measure(current))
    steps: list[FallbackStep] = []
    outcome: Optional[LadderOutcome] = None
    if steps_ladder is not None and target.targeted:
        outcome = _ladder_fallback(trials, steps_ladder, best, cost, max_passes)
        best = Kept(outcome.model, outcome.score, outcome.sqnr)
    elif target.targeted and not target.met(best.score, best.sqnr):
        steps = sensitivity_fallback(trials, best, max_passes)
    return _result(trials, best, steps, outcome, steps_ladder)


def _calibration_batches(calibration_data: Any, metric: Optional[Metric], max_drop: Optional[float]) -> list[tuple]:
    if max_drop is not None and metric is None:
        raise ValueError("pt2q.quantize: max_drop needs a metric (for the default output SQNR use min_sqnr)")
    batches = (
        [] if isinstance(calibration_data, (list, tuple)) and not calibration_data else as_batches(calibration_data)
    )
    if not batches:
        raise ValueError("pt2q.quantize: calibration_data is empty; pass a list of input tuples")
    return batches


def _ladder_fallback(
    trials: Trials, ladder: Ladder, plain: Kept, cost: Optional[CostModel], max_passes: int
) -> LadderOutcome:
    """The precision ladder's search, from the plain flow's round ``plain``."""
    target = trials.target

    def run_round(choice: dict[str, str]) -> tuple[GraphModule, float, float, bool]:
        gm = trials.attempt({}, MixedPrecision(ladder, choice))
        s, q = trials.measure(gm)
        return gm, s, q, target.met(s, q)

    def sensitivities(gm: GraphModule) -> dict[str, float]:
        return {r.name: r.sensitivity_sqnr for r in trials.candidates(gm) if r.sensitivity_sqnr is not None}

    plain_met = target.met(plain.score, plain.sqnr)
    # the plain flow met the target: only the layers' costs are needed (does a cheaper rung exist?)
    rows = trials.candidates(plain.model, sensitivity=not plain_met)
    return search(
        trials.float_gm,
        ladder,
        run_round,
        sensitivities,
        [r.name for r in rows],
        {r.name: r.sensitivity_sqnr for r in rows if r.sensitivity_sqnr is not None} or None,
        (plain.model, plain.score, plain.sqnr, plain_met),
        cost_model=cost,
        min_sqnr=target.min_sqnr,
        max_rounds=max_passes,
        progress=trials.progress,
    )


def _result(
    trials: Trials,
    best: Kept,
    steps: list[FallbackStep],
    outcome: Optional[LadderOutcome],
    ladder: Optional[Ladder],
) -> QuantizeResult:
    """The result: ``best`` with its report (the fallback's notes on it), and the ladder's record."""
    target = trials.target
    explain_kept(best.model, steps, target)
    final = report(best.model, trials.float_gm, trials.evaluation[: trials.report_batches], sensitivity=False)
    final.notes.extend(summary(steps, best.score, best.sqnr, target))
    met = target.met(best.score, best.sqnr)
    if outcome is None or ladder is None:
        return QuantizeResult(best.model, final, best.score, target.float_metric, met, steps)
    final.notes.append(_ladder_summary(outcome, ladder))
    return QuantizeResult(
        best.model,
        final,
        best.score,
        target.float_metric,
        met,
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
