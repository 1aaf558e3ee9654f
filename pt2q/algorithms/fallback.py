"""The accuracy fallback of ``pt2q.quantize`` without a ladder: keep layers float, in the order the
report's sensitivity column ranks them, while the target is missed; a layer that helps brings its
siblings (the same op at the same place of the other repeated blocks) as the next try."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field

from torch.fx import GraphModule
from tqdm import tqdm

from pt2q.algorithms.keep_float import layer_name
from pt2q.algorithms.quantize_result import FallbackStep
from pt2q.algorithms.quantize_trials import AccuracyTarget, Trials
from pt2q.core.notes import FLOAT_REASON_KEY, set_note
from pt2q.debug.report_table import ReportRow

__all__ = ["Kept", "sensitivity_fallback", "explain_kept", "summary"]


@dataclass
class Kept:
    """The best model so far: its score and output SQNR, and the layers it keeps float (name -> reason)."""

    model: GraphModule
    score: float
    sqnr: float
    layers: dict[str, str] = field(default_factory=dict)


def _siblings(row: ReportRow, of: ReportRow) -> bool:
    """The same op in the same place of another repeated block (``layer.3.output.dense`` for
    ``layer.0.output.dense``): in a transformer, siblings are about as sensitive."""
    shape = re.sub(r"\d+", "#", of.module_path)
    return bool(of.module_path) and row.op == of.op and row is not of and re.sub(r"\d+", "#", row.module_path) == shape


def _try_row(
    trials: Trials,
    row: ReportRow,
    queue: list[ReportRow],
    best: Kept,
    steps: list[FallbackStep],
    tried: set[str],
    max_passes: int,
) -> None:
    """Try ``row`` float, then (if that helped) its siblings in ``queue`` together; keep what improves."""
    sensitivity = row.sensitivity_sqnr
    assert sensitivity is not None  # the queue holds only rows with a sensitivity
    for group in ([row], [r for r in queue if _siblings(r, row)]):
        if not group or len(steps) >= max_passes or trials.target.met(best.score, best.sqnr):
            break
        tried.update(r.name for r in group)
        trial = {**best.layers, **{r.name: "kept float by pt2q.quantize" for r in group}}
        candidate = trials.attempt(trial)
        new_score, new_sqnr = trials.measure(candidate)
        kept = new_score > best.score
        names = tuple(r.name for r in group)
        steps.append(FallbackStep(names, row.module_path, sensitivity, best.score, new_score, kept))
        if not kept:
            break  # the siblings of a node that did not help are not tried together
        best.layers, best.model, best.score, best.sqnr = trial, candidate, new_score, new_sqnr


def sensitivity_fallback(trials: Trials, best: Kept, max_passes: int) -> list[FallbackStep]:
    """Keep layers float, worst sensitivity first, until ``trials.target`` is met or ``max_passes``
    tries are made; ``best`` ends as the best model. Returns every try."""
    queue = trials.candidates(best.model)
    tried: set[str] = set()
    steps: list[FallbackStep] = []
    bar = tqdm(
        total=max_passes,
        desc="pt2q: accuracy fallback",
        unit="try",
        leave=False,
        disable=not trials.progress,
        file=sys.stderr,
    )
    while queue and len(steps) < max_passes and not trials.target.met(best.score, best.sqnr):
        row = queue.pop(0)
        before = len(steps)
        _try_row(trials, row, queue, best, steps, tried, max_passes)
        bar.update(len(steps) - before)
        queue = [r for r in queue if r.name not in tried]
    bar.close()
    return steps


def explain_kept(gm: GraphModule, steps: list[FallbackStep], target: AccuracyTarget) -> None:
    """Say on each kept-float node what keeping it float bought (shown by the report)."""
    bought = {
        layer: f"kept float by pt2q.quantize: {target.describe(s.before)} -> {target.describe(s.after)}"
        for s in steps
        if s.kept
        for layer in s.layers
    }
    for node in gm.graph.nodes:
        if node.op == "call_function" and layer_name(node) in bought:
            set_note(node, FLOAT_REASON_KEY, bought[layer_name(node)])


def summary(steps: list[FallbackStep], score: float, sqnr: float, target: AccuracyTarget) -> list[str]:
    """The report's notes: the score against the target, and what the fallback kept float."""
    what = "metric" if target.metric is not None else "output SQNR"
    min_sqnr, float_metric = target.min_sqnr, target.float_metric
    met = target.met(score, sqnr)
    lines = [
        f"pt2q.quantize: {what} {target.describe(score)}"
        + (f" (float {float_metric:.4g}, allowed drop {target.max_drop:g})" if float_metric is not None else "")
        + (
            f", output SQNR {sqnr:.1f} dB (target >= {min_sqnr:g})"
            if target.metric is not None and min_sqnr is not None
            else (f" (target >= {min_sqnr:g} dB)" if min_sqnr is not None else "")
        )
        + ("" if not target.targeted else ("; target met" if met else "; target NOT met"))
    ]
    if steps:
        kept = [s for s in steps if s.kept]
        lines.append(
            f"accuracy fallback: {len(steps)} tries in sensitivity order, {sum(len(s.layers) for s in kept)} "
            "layer(s) kept float: "
            + (", ".join(f"{'+'.join(s.layers)} ({s.gain:+.3g})" for s in kept) or "none helped")
        )
    return lines
