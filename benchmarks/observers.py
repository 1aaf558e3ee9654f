"""Per-call observer cost, pt2q vs torchao, measured in one run.

For tensors of 1e3, 1e5 and 1e6 elements: the median time of one ``forward`` of an
already-initialized observer fed a fresh batch drawn from the same distribution
(activations, ``HistogramObserver`` as in the default config), and of a
``PerChannelMinMaxObserver`` fed the same weight every call (as a prepared model
does), plus ``HistogramObserver.calculate_qparams``. One thread, as in
``benchmarks/overhead.py``. Usage: ``python -m benchmarks.observers [--repeats N]``.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch

import pt2q.observer as pt2q_obs
from pt2q.runtime.timing import median_ms

SIZES = (1_000, 100_000, 1_000_000)
ACT = dict(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine, eps=2**-12)
WEIGHT = dict(
    dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric, ch_axis=0, eps=2**-12
)


def _median_us(fn: Callable[[], object], repeats: int) -> float:
    return median_ms(fn, (), repeats, warmup=0) * 1e3


def _histogram_call(mod, n: int, repeats: int) -> float:
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, generator=gen) for _ in range(repeats + 8)]
    for x in batches[:8]:  # the range settles after a few batches, as in calibration
        mod(x)
    it = iter(batches[8:])
    return _median_us(lambda: mod(next(it)), repeats)


def _weight_call(mod, n: int, repeats: int) -> float:
    w = torch.randn(max(n // 1024, 1), min(n, 1024))
    mod(w)
    return _median_us(lambda: mod(w), repeats)


def _calc_call(mod, n: int, repeats: int) -> float:
    _histogram_call(mod, n, 4)
    return _median_us(mod.calculate_qparams, max(repeats // 4, 5))


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=60)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import torchao.quantization.pt2e.observer as ao_obs

    cases = [
        ("HistogramObserver.forward", "HistogramObserver", ACT, _histogram_call),
        ("PerChannelMinMaxObserver.forward (weight)", "PerChannelMinMaxObserver", WEIGHT, _weight_call),
        ("HistogramObserver.calculate_qparams", "HistogramObserver", ACT, _calc_call),
    ]
    lines = ["| call | elements | pt2q µs | torchao µs | pt2q/torchao |", "|---|---|---|---|---|"]
    for label, cls, kwargs, run in cases:
        for n in SIZES:
            ours = run(getattr(pt2q_obs, cls)(**kwargs), n, args.repeats)
            theirs = run(getattr(ao_obs, cls)(**kwargs), n, args.repeats)
            lines.append(f"| {label} | {n:.0e} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f} |")
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
