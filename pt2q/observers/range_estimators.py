"""Range estimators: observers that clip outliers instead of covering the whole min..max.

``PercentileObserver`` clips at a percentile of the observed values;
``MSEObserver`` picks the clipping range with the smallest expected quantization
error. Both fit any ``QuantizationSpec`` (``observer_or_fake_quant_ctr=
PercentileObserver.with_args(percentile=99.99)``), per tensor or, with a
per-channel qscheme, per channel along ``ch_axis``.

Both summarize everything observed, over any number of batches, in one
histogram per channel and sign whose bins are fixed in advance and spaced
logarithmically: a bin holds the magnitudes sharing a float32 exponent and the
top ``mantissa_bits`` mantissa bits, so its width is ``2**-mantissa_bits`` of
its values (0.8% by default) at every scale, and magnitudes below ``2**-32``
share one bin ``[0, 2**-32)``. Because the bins never move, batches add up
exactly (no re-binning), and the bulk of heavy-tailed data keeps its resolution
however large the outliers are. Only the bins between 0 and the largest value
seen are stored: ``2 * channels * bins`` float64 counts, about 2**mantissa_bits
bins per power of two spanned (~6000 for data up to 2**15).
Within a bin, values are taken as uniformly spread.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import Tensor

from pt2q.numerics.qschemes import PER_TENSOR_QSCHEMES, SYMMETRIC_QSCHEMES
from pt2q.observers.merge_across_ranks import MergeSteps, first_merge, merge_flags, remember_merge
from pt2q.observers.min_max import PerChannelMinMaxObserver

__all__ = ["PercentileObserver", "MSEObserver"]

_FLOOR_EXP = -32  # magnitudes below 2**_FLOOR_EXP share the first bin
_MANTISSA = 23  # float32 mantissa bits
_MAX_ELEMENTS = 1 << 18  # candidates x channels x levels scored at once


class _ClippingObserver(PerChannelMinMaxObserver):
    """Running per-channel min/max (from PerChannelMinMaxObserver) plus a log-spaced histogram.

    A per-tensor qscheme is observed as a single channel; ``ch_axis`` only
    matters for per-channel qschemes.
    """

    supported_qschemes = PER_TENSOR_QSCHEMES + (torch.per_channel_affine, torch.per_channel_symmetric)
    histogram: Tensor

    def __init__(self, ch_axis: int = 0, mantissa_bits: int = 7, **kwargs: Any) -> None:
        if not 0 <= mantissa_bits <= 10:
            raise ValueError(f"{type(self).__name__}: mantissa_bits must be in [0, 10], got {mantissa_bits}")
        super().__init__(ch_axis=ch_axis, **kwargs)
        self.per_tensor = self.qscheme in PER_TENSOR_QSCHEMES
        if self.per_tensor:
            self.ch_axis = 0  # the whole tensor is one channel
        self.mantissa_bits = mantissa_bits
        self._shift = _MANTISSA - mantissa_bits
        self._floor_bin = ((127 + _FLOOR_EXP) << _MANTISSA) >> self._shift
        # [sign (0: negative values, by magnitude; 1: the others), channel, bin]
        self.register_buffer("histogram", torch.zeros(2, 0, 0, dtype=torch.float64))

    def forward(self, x_orig: Tensor) -> Tensor:
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach()
        x = x.reshape(1, -1) if self.per_tensor else x
        super().forward(x)  # running min/max; rejects non-finite data and a changed channel count
        self._accumulate(x)
        return x_orig

    def _accumulate(self, x: Tensor) -> None:
        rows = x if self.ch_axis in (0, -x.dim()) else x.transpose(0, self.ch_axis)
        rows = rows.reshape(rows.shape[0], -1).float()
        channels = rows.shape[0]
        bins = (rows.abs().view(torch.int32) >> self._shift) - (self._floor_bin - 1)
        bins.clamp_(min=0)
        length = max(int(bins.max().item()) + 1, self.histogram.shape[2])
        if self.histogram.shape[1:] != (channels, length):
            grown = torch.zeros(2, channels, length, dtype=torch.float64)
            grown[:, : self.histogram.shape[1], : self.histogram.shape[2]] = self.histogram
            self.histogram.data = grown  # not resize_: a loaded checkpoint's storage cannot grow
        sign = (rows >= 0).long()
        flat = (sign * channels + torch.arange(channels).unsqueeze(1)) * length + bins
        self.histogram.view(-1).add_(torch.bincount(flat.reshape(-1), minlength=self.histogram.numel()))

    def _edges(self) -> Tensor:
        """Bin edges of the magnitude histogram: float64, ``bins + 1`` of them, the first 0."""
        index = torch.arange(1, self.histogram.shape[2] + 1, dtype=torch.int32) + (self._floor_bin - 1)
        upper = (index << self._shift).view(torch.float32).double().clamp(max=torch.finfo(torch.float32).max)
        return torch.cat([torch.zeros(1, dtype=torch.float64), upper])

    def _signed(self) -> tuple[Tensor, Tensor]:
        """(edges [2B + 1], counts [C, 2B]) of the values with their signs, in increasing order."""
        edges = self._edges()
        signed_edges = torch.cat([-edges.flip(0), edges[1:]])
        return signed_edges, torch.cat([self.histogram[0].flip(-1), self.histogram[1]], dim=-1)

    def _require_statistics(self) -> None:
        if not self.has_statistics:
            raise RuntimeError(
                f"{self._where()}: {type(self).__name__}.calculate_qparams called before the observer saw any data"
            )

    @abstractmethod
    def clipping_range(self) -> tuple[Tensor, Tensor]:
        """The (min, max) the qparams cover, per channel ([1] per tensor)."""

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        return self._calculate_qparams(*self.clipping_range())

    def reset_min_max_vals(self) -> None:
        """Forget everything observed."""
        super().reset_min_max_vals()
        self.histogram.data = self.histogram.new_empty(2, 0, 0)
        remember_merge(self, None)

    def merge_across_ranks(self) -> MergeSteps:
        """Exact: per-channel min and max over all ranks, and the sum of the ranks' histograms
        (their bins are fixed, so they only need padding to the longest). Once, after calibration."""
        length = torch.tensor([self.histogram.shape[2]])
        lo, hi, length, flags = yield [
            (self.min_val, "min"),
            (self.max_val, "max"),
            (length, "max"),
            merge_flags(self, self.histogram.sum().item()),
        ]
        if not first_merge(self, flags):
            return
        padded = torch.zeros(*self.histogram.shape[:2], int(length), dtype=self.histogram.dtype)
        padded[..., : self.histogram.shape[2]] = self.histogram
        (total,) = yield [(padded, "sum")]
        self.histogram.data = total.detach().to(self.histogram.dtype)
        self.min_val.copy_(lo)
        self.max_val.copy_(hi)
        remember_merge(self, self.histogram.sum().item())

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        saved = state_dict.get(prefix + "histogram")
        if saved is not None and saved.shape != self.histogram.shape:
            self.histogram.data = self.histogram.new_empty(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mantissa_bits={self.mantissa_bits}"


def histogram_quantile(edges: Tensor, counts: Tensor, q: float) -> Tensor:
    """The ``q``-quantile (0..1) of each row of ``counts`` over bins ``edges``, values uniform within a bin."""
    cum = counts.cumsum(-1)
    rank = q * cum[:, -1:]
    idx = torch.searchsorted(cum, rank).clamp_(max=counts.shape[-1] - 1)
    inside = counts.gather(-1, idx)
    before = cum.gather(-1, idx) - inside
    frac = torch.where(inside > 0, (rank - before) / inside, torch.zeros_like(rank)).clamp_(0, 1)
    return (edges[idx] + frac * (edges[idx + 1] - edges[idx])).squeeze(-1)


class PercentileObserver(_ClippingObserver):
    """Clips the range at a percentile of everything observed.

    Symmetric qschemes: ``[-t, t]`` with ``t`` the ``percentile`` of ``|x|``.
    Affine: ``[p_lo, p_hi]``, the ``100 - percentile`` and ``percentile``
    percentiles of ``x``. Percentiles are read off the histogram (see the module
    docstring), so they are exact to within one bin, and never beyond the
    observed min/max: ``percentile=100`` gives MinMaxObserver's qparams.
    """

    def __init__(self, percentile: float = 99.99, **kwargs: Any) -> None:
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"PercentileObserver: percentile must be in (50, 100], got {percentile}")
        super().__init__(**kwargs)
        self.percentile = percentile

    def clipping_range(self) -> tuple[Tensor, Tensor]:
        """The (min, max) the qparams cover, per channel ([1] per tensor)."""
        self._require_statistics()
        q = self.percentile / 100.0
        if self.qscheme in SYMMETRIC_QSCHEMES:
            top = torch.maximum(-self.min_val, self.max_val).double()
            t = torch.minimum(histogram_quantile(self._edges(), self.histogram.sum(0), q), top).float()
            return -t, t
        edges, counts = self._signed()
        lo = histogram_quantile(edges, counts, 1.0 - q).clamp(self.min_val.double(), self.max_val.double())
        hi = histogram_quantile(edges, counts, q).clamp(self.min_val.double(), self.max_val.double())
        return torch.minimum(lo, hi).float(), hi.float()

    def extra_repr(self) -> str:
        return f"percentile={self.percentile}, {super().extra_repr()}"


def expected_squared_error(
    edges: Tensor, counts: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int
) -> Tensor:
    """Expected ``sum((x - dequantize(quantize(x)))**2)`` over a histogram whose values are uniform within a bin.

    ``edges`` [B + 1] (increasing) and ``counts`` [C, B]; ``scale`` / ``zero_point``
    [G, C] are G candidate qparams per channel (integer zero points). Returns
    [G, C]. Exact for that density: quantization maps each value to its level
    ``k * scale`` (k in ``[quant_min - zp, quant_max - zp]``), so the error is
    summed per level over the values it receives (the extreme levels also take
    the clamped tails), from cumulative moments of the histogram. The cost is
    G * C * (quant_max - quant_min) binary searches, whatever the number of bins.
    """
    channels, bins = counts.shape
    edges, counts = edges.double(), counts.double()
    density = counts / (edges[1:] - edges[:-1])  # [C, B]
    # edges**(n+1) / (n+1): antiderivatives of u**n, and their cumulative integrals against the density
    antider = [edges ** (n + 1) / (n + 1) for n in range(3)]
    cumulative = [torch.nn.functional.pad((density * (a[1:] - a[:-1])).cumsum(-1), (1, 0)) for a in antider]
    channel = torch.arange(channels).view(1, channels, 1)

    def moments_below(x: Tensor) -> list[Tensor]:  # integral of u**n over the density up to x, n = 0, 1, 2
        x = x.clamp(edges[0].item(), edges[-1].item())
        j = (torch.searchsorted(edges, x, right=True) - 1).clamp_(0, bins - 1)
        d = density[channel, j]
        return [cumulative[n][channel, j] + d * (x ** (n + 1) / (n + 1) - antider[n][j]) for n in range(3)]

    s = scale.double().unsqueeze(-1)  # [G, C, 1]
    levels = (torch.arange(quant_min, quant_max + 1, dtype=torch.float64) - zero_point.double().unsqueeze(-1)) * s
    cuts = (levels[..., 1:] + levels[..., :-1]) / 2  # where rounding switches level
    inf = torch.full_like(levels[..., :1], torch.inf)
    upper, lower = moments_below(torch.cat([cuts, inf], -1)), moments_below(torch.cat([-inf, cuts], -1))
    m0, m1, m2 = (hi - lo for hi, lo in zip(upper, lower))
    return (m2 - 2 * levels * m1 + levels**2 * m0).sum(-1)


class MSEObserver(_ClippingObserver):
    """Clips the range where the expected quantization MSE of everything observed is smallest.

    Candidates shrink the observed range by factors ``k / grid`` (k = 1..grid).
    Symmetric qschemes try all ``[-a t, a t]`` with ``t = max|x|``. Affine ones
    shrink the two ends independently, ``[a_lo min, a_hi max]``: first on a
    coarse ``sqrt(grid)`` x ``sqrt(grid)`` grid, then at step ``1 / grid`` within one
    coarse step of the best pair. Each candidate gets the qparams the observer
    would return (dtype, quant range, eps) and is scored by
    :func:`expected_squared_error` on the histogram (see the module docstring);
    the lowest wins (ties: the first, widest candidate). Each channel is
    searched on its own. Dtypes of at most 16 bits.
    """

    def __init__(self, grid: int = 100, **kwargs: Any) -> None:
        if grid < 1:
            raise ValueError(f"MSEObserver: grid must be >= 1, got {grid}")
        super().__init__(**kwargs)
        if self.quant_max - self.quant_min >= 1 << 16:
            raise ValueError(f"MSEObserver supports dtypes of at most 16 bits; got {self.dtype}")
        self.grid = grid

    def _best(self, edges: Tensor, counts: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """The candidate (lo, hi) [G, C] pair with the least expected error, per channel: [C] each."""
        scale, zero_point = self._calculate_qparams(lo, hi)
        step = max(1, _MAX_ELEMENTS // (lo.shape[1] * (self.quant_max - self.quant_min + 1)))
        errors = torch.cat(
            [
                expected_squared_error(
                    edges, counts, scale[i : i + step], zero_point[i : i + step], self.quant_min, self.quant_max
                )
                for i in range(0, scale.shape[0], step)
            ]
        )
        best = errors.argmin(0, keepdim=True)  # the first of equal minima
        return lo.gather(0, best).squeeze(0), hi.gather(0, best).squeeze(0)

    def clipping_range(self) -> tuple[Tensor, Tensor]:
        """The (min, max) the qparams cover, per channel ([1] per tensor)."""
        self._require_statistics()
        edges, counts = self._signed()
        if self.qscheme in SYMMETRIC_QSCHEMES:
            t = torch.maximum(-self.min_val, self.max_val)
            shrink = torch.arange(self.grid, 0, -1).unsqueeze(1) / self.grid  # [grid, 1], widest first
            return self._best(edges, counts, -shrink * t, shrink * t)
        coarse = max(1, round(self.grid**0.5))
        a = torch.arange(coarse, 0, -1) / coarse
        a_lo, a_hi = a.repeat_interleave(coarse).unsqueeze(1), a.repeat(coarse).unsqueeze(1)  # [coarse**2, 1]
        lo, hi = self._best(edges, counts, a_lo * self.min_val, a_hi * self.max_val)
        # the chosen shrink factors per channel, then every factor within one coarse step, at step 1 / grid
        near = torch.arange(-self.grid // coarse, self.grid // coarse + 1) / self.grid
        pick_lo, pick_hi = (lo / self.min_val).nan_to_num(1.0), (hi / self.max_val).nan_to_num(1.0)
        f_lo = (pick_lo + near.repeat_interleave(near.numel()).unsqueeze(1)).clamp(1 / self.grid, 1)
        f_hi = (pick_hi + near.repeat(near.numel()).unsqueeze(1)).clamp(1 / self.grid, 1)
        return self._best(edges, counts, f_lo * self.min_val, f_hi * self.max_val)

    def extra_repr(self) -> str:
        return f"grid={self.grid}, {super().extra_repr()}"
