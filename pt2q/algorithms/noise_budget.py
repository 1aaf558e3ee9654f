"""The additive noise model of the precision ladder: each layer's share of output noise from its
sensitivity SQNR, and the cheapest rung per layer whose summed noise fits a budget."""

from __future__ import annotations

import math
from typing import Optional

__all__ = ["Options", "noise_of", "sqnr_of_noise", "solve"]


def noise_of(sqnr: Optional[float]) -> float:
    """A layer's share of output noise from its sensitivity SQNR (dB): ``10^(-sqnr/10)``, 0 when exact."""
    if sqnr is None or math.isinf(sqnr) and sqnr > 0:
        return 0.0
    return 10.0 ** (-sqnr / 10.0)


def sqnr_of_noise(noise: float) -> float:
    """The output SQNR (dB) a summed noise share predicts (inf for none)."""
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
