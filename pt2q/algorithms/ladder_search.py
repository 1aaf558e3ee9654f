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

import torch
from torch.fx import GraphModule, Node
from tqdm import tqdm

from pt2q.algorithms.keep_float import layer_name
from pt2q.algorithms.precision_ladder import CostModel, Ladder, Rung, annotated_layers, rung_counts

__all__ = ["Try", "Choice", "LadderOutcome", "search", "work", "solve", "estimate_cost"]

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


def _shape(node: Any) -> Optional[torch.Size]:
    val = node.meta.get("val") if isinstance(node, Node) else None
    return val.shape if isinstance(val, torch.Tensor) else None


def work(node: Node) -> float:
    """Multiply-accumulates of a linear/conv/matmul node, else its output's element count (>= 1)."""
    out = _shape(node)
    if out is None:
        return 1.0
    name = getattr(node.target, "__name__", str(node.target))
    weight = _shape(node.args[1]) if len(node.args) > 1 else None
    if name.startswith(("linear", "matmul", "bmm", "mm", "addmm")) and weight is not None:
        return float(out.numel() * (weight[-2] if not name.startswith("linear") else weight[-1]))
    if name.startswith(("conv", "convolution")) and weight is not None:
        return float(out.numel() * weight[1:].numel())
    return float(max(out.numel(), 1))


class RelativeCost:
    """The cost model without measurements: rung ``relative_cost`` x the layer's :func:`work`."""

    name = "relative cost x MACs (not measured)"
    unit = "MMAC-eq"

    def layer_costs(self, float_gm: GraphModule, requests: Mapping[str, Sequence[Rung]]) -> dict[str, dict[str, float]]:
        nodes = {layer_name(n): n for n in float_gm.graph.nodes if n.op == "call_function"}
        return {
            layer: {r.name: r.relative_cost * work(nodes[layer]) / 1e6 for r in rungs}
            for layer, rungs in requests.items()
            if layer in nodes
        }


def _noise(sqnr: Optional[float]) -> float:
    if sqnr is None or math.isinf(sqnr) and sqnr > 0:
        return 0.0
    return 10.0 ** (-sqnr / 10.0)


def _db(noise: float) -> float:
    return math.inf if noise <= 0 else -10.0 * math.log10(noise)


Options = dict[str, dict[str, tuple[float, float]]]  # layer -> rung -> (noise, cost)


def solve(options: Options, budget: float, prefer: str = "") -> dict[str, str]:
    """The cheapest rung per layer whose summed noise stays within ``budget`` (greedy).

    Every layer starts on its cheapest rung (``prefer``, the base, on a tie); while over budget,
    the move that removes the most noise per unit of added cost is taken; then layers go back to
    cheaper rungs, or to ``prefer`` at the same cost, while the budget holds."""

    def start(rungs: dict[str, tuple[float, float]]) -> str:
        return min(rungs, key=lambda r: (rungs[r][1], r != prefer, rungs[r][0]))

    pick = {layer: start(rungs) for layer, rungs in options.items()}
    total = sum(options[layer][r][0] for layer, r in pick.items())
    while total > budget:
        best: Optional[tuple[float, float, str, str]] = None
        for layer, rungs in options.items():
            noise, cost = rungs[pick[layer]]
            for r, (n, c) in rungs.items():
                if n >= noise:
                    continue
                gain, extra = noise - n, c - cost
                ratio = math.inf if extra <= 0 else gain / extra
                if best is None or (ratio, gain) > best[:2]:
                    best = (ratio, gain, layer, r)
        if best is None:
            break  # nothing left to improve: the budget cannot be met
        _, gain, layer, r = best
        pick[layer], total = r, total - gain
    for layer in sorted(options, key=lambda x: (-options[x][pick[x]][1], options[x][pick[x]][0])):
        noise, cost = options[layer][pick[layer]]
        for r, (n, c) in sorted(options[layer].items(), key=lambda kv: (kv[1][1], kv[0] != prefer)):
            cheaper = c < cost or (c == cost and r == prefer and pick[layer] != prefer)
            if cheaper and total - noise + n <= budget:  # give back what the budget does not need
                pick[layer], total = r, total - noise + n
                break
    return pick


def estimate_cost(costs: Mapping[str, Mapping[str, float]], choice: Mapping[str, str], base: str) -> float:
    """The summed cost of ``choice`` (layers not in it on ``base``) over the priced layers."""
    return sum(c.get(choice.get(layer, base), c.get(base, 0.0)) for layer, c in costs.items())


def _label(counts: Mapping[str, int], ladder: Ladder) -> str:
    used = [r.name for r in ladder.rungs if counts.get(r.name)]
    if len(used) == 1:
        return f"all {used[0]}"
    return ", ".join(f"{counts[r]} {r}" for r in used)


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
    applies = {r.name: annotated_layers(float_gm, r.quantizer) for r in ladder.rungs[1:] if r.quantizer}
    requests = {
        layer: [r for r in ladder.rungs if r.name == base or r.is_float or layer in applies.get(r.name, ())]
        for layer in candidates
    }
    model = cost_model or RelativeCost()
    costs = model.layer_costs(float_gm, requests)
    unit = getattr(model, "unit", "ms")
    sens: dict[str, dict[str, float]] = {layer: {base: s} for layer, s in (base_sensitivity or {}).items()}

    gm0, score0, sqnr0, met0 = base_round
    rounds: list[tuple[dict[str, str], GraphModule, float, float, bool]] = [({}, gm0, score0, sqnr0, met0)]
    tries = [_try(0, {}, candidates, ladder, costs, score0, sqnr0, met0, None)]
    bar = tqdm(
        total=max_rounds,
        desc="pt2q: precision ladder",
        unit="round",
        leave=False,
        disable=not progress,
        file=sys.stderr,
    )
    bar.update()

    def run(choice: dict[str, str], predicted: Optional[float]) -> None:
        gm, score, sqnr, ok = run_round(choice)
        rounds.append((choice, gm, score, sqnr, ok))
        tries.append(_try(len(tries), choice, candidates, ladder, costs, score, sqnr, ok, predicted))
        bar.update()

    # when the base already meets the target, only a rung that is cheaper here is worth a round (e.g.
    # dynamic int8 on CPUs whose static int8 is no faster than fp32; fp32 for small layers on x86)
    worth = [r for r in ladder.rungs[1:] if not r.is_float and (not met0 or _saves(r, costs, base, applies))]
    float_cheaper = met0 and _saves(ladder.float_rung, costs, base, {ladder.float_rung.name: set(costs)})
    mixed = worth or not met0 or float_cheaper
    if mixed and base_sensitivity is None:
        for layer, s in sensitivities(gm0).items():
            sens.setdefault(layer, {})[base] = s
    for rung in worth:
        if len(rounds) >= max_rounds:
            break
        uniform = {layer: rung.name for layer in candidates if layer in applies[rung.name]}
        if not uniform:
            continue
        run(uniform, None)
        for layer, s in sensitivities(rounds[-1][1]).items():
            if layer in uniform:
                sens.setdefault(layer, {})[rung.name] = s
    if mixed:
        _mixed(rounds, run, sens, costs, ladder, candidates, min_sqnr, max_rounds)
    bar.close()

    met_rounds = [r for r in rounds if r[4]]
    if met_rounds:
        best = min(met_rounds, key=lambda r: (estimate_cost(costs, r[0], base), -r[2]))
    else:
        best = max(rounds, key=lambda r: r[2])
    choice, gm, score, sqnr, ok = best
    return LadderOutcome(
        model=gm,
        choice=dict(choice),
        score=score,
        sqnr=sqnr,
        met=ok,
        tries=tries,
        choices=[
            Choice(
                layer,
                rung,
                costs.get(layer, {}).get(rung, math.nan),
                costs.get(layer, {}).get(base, math.nan),
                sens.get(layer, {}).get(base, math.nan),
                math.inf if ladder[rung].is_float else sens.get(layer, {}).get(rung, math.nan),
            )
            for layer, rung in choice.items()
        ],
        cost=estimate_cost(costs, choice, base),
        base_cost=estimate_cost(costs, {}, base),
        float_cost=estimate_cost(costs, dict.fromkeys(costs, ladder.float_rung.name), base),
        cost_unit=unit,
    )


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
        options[layer] = {r: (_noise(s), layer_costs[r]) for r, s in known.items()}
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
        run(choice, _db(k * predicted_noise(choice)))


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
