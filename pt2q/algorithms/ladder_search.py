"""The latency-aware search of ``pt2q.quantize(..., ladder=...)``: least cost for an accuracy target.

Every try is one prepare + calibration + convert ("round") and is measured on the target
metric. The rounds, at most ``max_rounds``:

1. the base rung everywhere (the plain flow): when it meets the target and no other rung (fp32
   included: small layers may run faster float) is cheaper on this machine by more than 3% of the
   summed cost, that is the answer;
2. each other quantizing rung on every layer it applies to (the rest on the base; when the
   base met the target, only the cheaper rungs): measures
   the metric of that uniform choice, and, from the report's *sensitivity* column, the output
   SQNR with only one layer on that rung, for every layer;
3. mixed choices: with ``n(layer, rung) = 10^(-sensitivity/10)`` (its share of output noise,
   fp32 adds none), the output SQNR of a choice is predicted as ``-10 log10(k * sum n)`` (``k``
   corrects the additive model by the last measured round) and the cheapest choice predicted
   to reach an SQNR goal ``T`` is solved greedily (most noise removed per unit of cost first,
   then anything that can go back to a cheaper rung). The choice is measured; ``T`` is the
   target's SQNR (``min_sqnr``) or, for a user metric, bisected between the SQNRs of the
   rounds that missed and met it.

Costs come from a :class:`~pt2q.algorithms.precision_ladder.CostModel` (measured latency per layer and
rung, e.g. ``pt2q.lowering.latency_cost.PteLatencyCost``) or, without one, from each rung's
``relative_cost`` times the layer's multiply-accumulates.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from torch.fx import GraphModule
from tqdm import tqdm

from pt2q.algorithms.layer_cost import RelativeCost, estimate_cost, work
from pt2q.algorithms.noise_budget import Options, noise_of, solve, sqnr_of_noise
from pt2q.algorithms.precision_ladder import CostModel, Ladder, Rung, annotated_layers, rung_counts

__all__ = ["Try", "Choice", "LadderOutcome", "search", "work", "solve", "estimate_cost", "RelativeCost"]

# A round: (choice of non-base rungs per layer) -> (converted model, score, sqnr, met)
RunRound = Callable[[dict[str, str]], tuple[GraphModule, float, float, bool]]


@dataclass(frozen=True)
class Try:
    """One round of the search: its choice (layers per rung), what it cost and what it measured."""

    round: int
    label: str
    counts: dict[str, int]
    cost: float
    score: float
    sqnr: float
    met: bool
    predicted_sqnr: Optional[float] = None


@dataclass(frozen=True)
class Choice:
    """A layer moved off the base rung: what that costs (``cost - base_cost``) and buys
    (output SQNR with only this layer quantized: ``base_sqnr`` on the base rung, ``sqnr`` on its own)."""

    layer: str
    rung: str
    cost: float
    base_cost: float
    base_sqnr: float
    sqnr: float

    @property
    def extra_cost(self) -> float:
        return self.cost - self.base_cost


@dataclass
class LadderOutcome:
    model: GraphModule
    choice: dict[str, str]
    score: float
    sqnr: float
    met: bool
    tries: list[Try] = field(default_factory=list)
    choices: list[Choice] = field(default_factory=list)
    cost: float = math.nan
    base_cost: float = math.nan
    float_cost: float = math.nan
    cost_unit: str = ""


def _label(counts: Mapping[str, int], ladder: Ladder) -> str:
    used = [r.name for r in ladder.rungs if counts.get(r.name)]
    if len(used) == 1:
        return f"all {used[0]}"
    return ", ".join(f"{counts[r]} {r}" for r in used)


Costs = Mapping[str, Mapping[str, float]]  # layer -> rung -> cost


@dataclass
class _Rounds:
    """The rounds made so far (choice, model, score, sqnr, met), their :class:`Try` records; how to make one more."""

    ladder: Ladder
    run_round: RunRound
    candidates: Sequence[str]
    costs: Costs
    bar: Any
    rounds: list[tuple[dict[str, str], GraphModule, float, float, bool]] = field(default_factory=list)
    tries: list[Try] = field(default_factory=list)

    def add(
        self, choice: dict[str, str], made: tuple[GraphModule, float, float, bool], predicted: Optional[float]
    ) -> None:
        """Record a round already made: ``made`` is (model, score, sqnr, met)."""
        gm, score, sqnr, ok = made
        self.rounds.append((choice, gm, score, sqnr, ok))
        self.tries.append(
            _try(len(self.tries), choice, self.candidates, self.ladder, self.costs, score, sqnr, ok, predicted)
        )
        self.bar.update()

    def run(self, choice: dict[str, str], predicted: Optional[float]) -> None:
        """Make (and record) the round of ``choice``."""
        self.add(choice, self.run_round(choice), predicted)


def _layer_costs(
    float_gm: GraphModule, ladder: Ladder, candidates: Sequence[str], cost_model: Optional[CostModel]
) -> tuple[Costs, dict[str, set], str]:
    """(cost per layer and rung, the layers each other rung applies to, the cost unit)."""
    base = ladder.base.name
    applies = {r.name: annotated_layers(float_gm, r.quantizer) for r in ladder.rungs[1:] if r.quantizer}
    requests = {
        layer: [r for r in ladder.rungs if r.name == base or r.is_float or layer in applies.get(r.name, ())]
        for layer in candidates
    }
    model = cost_model or RelativeCost()
    return model.layer_costs(float_gm, requests), applies, getattr(model, "unit", "ms")


def _uniform_rounds(
    state: _Rounds,
    worth: Sequence[Rung],
    applies: Mapping[str, set],
    sens: dict[str, dict[str, float]],
    sensitivities: Callable[[GraphModule], dict[str, float]],
    max_rounds: int,
) -> None:
    """One round per rung in ``worth``, on every layer it applies to: each layer's sensitivity on that rung."""
    for rung in worth:
        if len(state.rounds) >= max_rounds:
            break
        uniform = {layer: rung.name for layer in state.candidates if layer in applies[rung.name]}
        if not uniform:
            continue
        state.run(uniform, None)
        for layer, s in sensitivities(state.rounds[-1][1]).items():
            if layer in uniform:
                sens.setdefault(layer, {})[rung.name] = s


def _outcome(state: _Rounds, sens: Mapping[str, Mapping[str, float]], unit: str) -> LadderOutcome:
    """The cheapest round that met the target (the most accurate one if none did)."""
    ladder, costs, base = state.ladder, state.costs, state.ladder.base.name
    met_rounds = [r for r in state.rounds if r[4]]
    if met_rounds:
        best = min(met_rounds, key=lambda r: (estimate_cost(costs, r[0], base), -r[2]))
    else:
        best = max(state.rounds, key=lambda r: r[2])
    choice, gm, score, sqnr, ok = best
    choices = [
        Choice(
            layer,
            rung,
            costs.get(layer, {}).get(rung, math.nan),
            costs.get(layer, {}).get(base, math.nan),
            sens.get(layer, {}).get(base, math.nan),
            math.inf if ladder[rung].is_float else sens.get(layer, {}).get(rung, math.nan),
        )
        for layer, rung in choice.items()
    ]
    return LadderOutcome(
        model=gm,
        choice=dict(choice),
        score=score,
        sqnr=sqnr,
        met=ok,
        tries=state.tries,
        choices=choices,
        cost=estimate_cost(costs, choice, base),
        base_cost=estimate_cost(costs, {}, base),
        float_cost=estimate_cost(costs, dict.fromkeys(costs, ladder.float_rung.name), base),
        cost_unit=unit,
    )


def search(
    float_gm: GraphModule,
    ladder: Ladder,
    run_round: RunRound,
    sensitivities: Callable[[GraphModule], dict[str, float]],
    candidates: Sequence[str],
    base_sensitivity: Optional[Mapping[str, float]],
    base_round: tuple[GraphModule, float, float, bool],
    cost_model: Optional[CostModel] = None,
    min_sqnr: Optional[float] = None,
    max_rounds: int = 8,
    progress: bool = True,
) -> LadderOutcome:
    """Search ``ladder`` for the cheapest choice over ``candidates`` (report row names, with their
    ``base_sensitivity`` measured on ``base_round``, the plain flow's already-run round; ``None``:
    measured with ``sensitivities`` when a round beyond it is made)."""
    base = ladder.base.name
    costs, applies, unit = _layer_costs(float_gm, ladder, candidates, cost_model)
    sens: dict[str, dict[str, float]] = {layer: {base: s} for layer, s in (base_sensitivity or {}).items()}
    bar = tqdm(
        total=max_rounds,
        desc="pt2q: precision ladder",
        unit="round",
        leave=False,
        disable=not progress,
        file=sys.stderr,
    )
    state = _Rounds(ladder, run_round, candidates, costs, bar)
    state.add({}, base_round, None)
    met0 = base_round[3]
    # when the base already meets the target, only a rung that is cheaper here is worth a round (e.g.
    # dynamic int8 on CPUs whose static int8 is no faster than fp32; fp32 for small layers on x86)
    worth = [r for r in ladder.rungs[1:] if not r.is_float and (not met0 or _saves(r, costs, base, applies))]
    float_cheaper = met0 and _saves(ladder.float_rung, costs, base, {ladder.float_rung.name: set(costs)})
    mixed = worth or not met0 or float_cheaper
    if mixed and base_sensitivity is None:
        for layer, s in sensitivities(base_round[0]).items():
            sens.setdefault(layer, {})[base] = s
    _uniform_rounds(state, worth, applies, sens, sensitivities, max_rounds)
    if mixed:
        _mixed(state.rounds, state.run, sens, costs, ladder, candidates, min_sqnr, max_rounds)
    bar.close()
    return _outcome(state, sens, unit)


def _saves(rung: Rung, costs: Mapping[str, Mapping[str, float]], base: str, applies: Mapping[str, set]) -> bool:
    """Whether ``rung`` everywhere it applies would cut the summed cost by more than 3%."""
    total = sum(c.get(base, 0.0) for c in costs.values())
    saving = sum(
        c[base] - c[rung.name]
        for layer, c in costs.items()
        if layer in applies.get(rung.name, ()) and base in c and rung.name in c
    )
    return total > 0 and saving > 0.03 * total


def _try(
    index: int,
    choice: Mapping[str, str],
    candidates: Sequence[str],
    ladder: Ladder,
    costs: Mapping[str, Mapping[str, float]],
    score: float,
    sqnr: float,
    met: bool,
    predicted: Optional[float],
) -> Try:
    counts = rung_counts(choice, candidates, ladder.base.name)
    return Try(
        index,
        _label(counts, ladder),
        counts,
        estimate_cost(costs, choice, ladder.base.name),
        score,
        sqnr,
        met,
        predicted,
    )


def _mixed(
    rounds: list,
    run: Callable[[dict[str, str], Optional[float]], None],
    sens: Mapping[str, Mapping[str, float]],
    costs: Mapping[str, Mapping[str, float]],
    ladder: Ladder,
    candidates: Sequence[str],
    min_sqnr: Optional[float],
    max_rounds: int,
) -> None:
    """Mixed rounds: solve for an SQNR goal, measure, correct the noise model, move the goal."""
    base, fp32 = ladder.base.name, ladder.float_rung.name
    options: Options = {}
    for layer in candidates:
        layer_costs = costs.get(layer, {})
        known = {r: s for r, s in sens.get(layer, {}).items() if r in layer_costs}
        options[layer] = {r: (noise_of(s), layer_costs[r]) for r, s in known.items()}
        if fp32 in layer_costs:
            options[layer][fp32] = (0.0, layer_costs[fp32])
        if not options[layer]:
            del options[layer]

    def predicted_noise(choice: Mapping[str, str]) -> float:
        return sum(opts.get(choice.get(layer, base), opts.get(base, (0.0, 0.0)))[0] for layer, opts in options.items())

    tried = [dict(r[0]) for r in rounds]
    bump = 0.0  # raised while the solver repeats a choice already measured
    while len(rounds) < max_rounds and bump <= 30.0:
        # the additive model's correction, from the measured round it predicts worst
        ks = [10 ** (-r[3] / 10) / p for r in rounds if (p := predicted_noise(r[0])) > 0 and math.isfinite(r[3])]
        k = max(ks[-2:]) if ks else 1.0
        goal = _goal(rounds, min_sqnr)
        if goal is None:
            return
        choice = {layer: r for layer, r in solve(options, 10 ** (-(goal + bump) / 10) / k, base).items() if r != base}
        if choice in tried:
            if any(r[4] for r in rounds):
                return
            bump += 1.0
            continue
        tried.append(choice)
        run(choice, sqnr_of_noise(k * predicted_noise(choice)))


def _goal(rounds: list, min_sqnr: Optional[float]) -> Optional[float]:
    """The output SQNR to aim at: the target's, or between the best round that missed and the worst that met."""
    missed = [r[3] for r in rounds if not r[4] and math.isfinite(r[3])]
    passed = [r[3] for r in rounds if r[4]]
    lo = max(missed) if missed else None
    if passed:
        hi = min(passed)
        if min_sqnr is not None and (lo is None or lo < min_sqnr):
            return None if hi <= min_sqnr + 0.25 else min_sqnr + _margin(rounds)
        if lo is None:  # a user metric nothing has missed yet: no less accurate than what met it
            return hi
        if hi - lo < 0.5:
            return None  # nothing cheaper left to find between them
        return (lo + hi) / 2
    floor = min_sqnr if min_sqnr is not None else -math.inf
    return max(floor + _margin(rounds), (lo + 3.0) if lo is not None else floor)


def _margin(rounds: list) -> float:
    """Each mixed round that missed a pure-SQNR target raises the goal a little more."""
    return 0.5 * sum(1 for r in rounds if r[0] and not r[4])
