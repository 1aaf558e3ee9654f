"""The table :func:`pt2q.report` returns: one :class:`ReportRow` per layer, each with the
:class:`TensorQuantization` of the tensors quantized for it; ``str()`` renders it, ``plot()`` charts it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

from pt2q.io.atomic_file import atomic_write

__all__ = ["TensorQuantization", "ReportRow", "QuantizationReport", "owns_quantization"]

_DTYPE_NAMES = {torch.int8: "int8", torch.uint8: "uint8", torch.int16: "int16", torch.int32: "int32"}


@dataclass(frozen=True)
class TensorQuantization:
    """How one tensor of a layer is quantized.

    ``role`` is ``"input"``, ``"weight"``, ``"bias"`` or ``"output"``; ``scale`` and
    ``zero_point`` are floats/ints per tensor, tensors per channel, None when dynamic
    (chosen at run time). ``source`` names the layer whose quantized output this input
    reuses, if any.
    """

    role: str
    dtype: torch.dtype
    per_channel_axis: Optional[int]
    dynamic: bool
    scale: Union[float, torch.Tensor, None]
    zero_point: Union[int, torch.Tensor, None]
    observer: Optional[str]
    source: Optional[str] = None
    block_size: Optional[tuple[int, ...]] = None  # affine quantization: the elements sharing one scale
    quant_range: Optional[tuple[int, int]] = None  # affine quantization: (quant_min, quant_max)

    def __str__(self) -> str:
        dtype = _DTYPE_NAMES.get(self.dtype, str(self.dtype))
        if self.quant_range is not None:
            bits = math.ceil(math.log2(self.quant_range[1] - self.quant_range[0] + 1))
            dtype = f"int{bits}" if bits < 8 else dtype
        if self.block_size is not None:
            qp = ("dynamic " if self.dynamic else "") + f"blocks {self.block_size}"
            if isinstance(self.scale, torch.Tensor):
                qp += f" s∈[{float(self.scale.min()):.3g},{float(self.scale.max()):.3g}]"
        elif self.dynamic:
            qp = "dynamic"
        elif self.per_channel_axis is not None:
            s = torch.as_tensor(self.scale)
            qp = f"per-channel(axis {self.per_channel_axis}) s∈[{float(s.min()):.3g},{float(s.max()):.3g}]"
        else:
            qp = f"s={self.scale:.3g} zp={self.zero_point}"
        extra = [x for x in (self.observer, f"from {self.source}" if self.source else None) if x]
        return f"{self.role[0] if self.role != 'bias' else 'b'}:{dtype} {qp}" + (
            f" ({', '.join(extra)})" if extra else ""
        )


@dataclass(frozen=True)
class ReportRow:
    """One node of the float graph: how it was quantized, or why not, and its errors."""

    name: str
    module_path: str
    op: str
    quantization: tuple[TensorQuantization, ...]
    float_reason: Optional[str]
    local_sqnr: Optional[float] = None
    cumulative_sqnr: Optional[float] = None
    sensitivity_sqnr: Optional[float] = None
    cumulative_mse: Optional[float] = None
    max_abs_error: Optional[float] = None
    runs_on: Optional[str] = None  # set by lowerings: where the node runs (e.g. "XNNPACK")
    pattern: Optional[str] = None  # the quantizer rule that claimed it (its nodes are this one row)

    @property
    def quantized(self) -> bool:
        """Whether the layer quantizes a tensor itself (not only reads a quantized input)."""
        return owns_quantization(self.quantization)

    @property
    def how(self) -> str:
        """The quantization in one line, or ``float: <reason>``."""
        return "; ".join(map(str, self.quantization)) if self.quantized else f"float: {self.float_reason}"


def owns_quantization(quantization: Sequence[TensorQuantization]) -> bool:
    """Whether a layer quantizes a tensor itself (not only reads an input quantized by its producer)."""
    return any(t.source is None for t in quantization)


def _fmt(x: Optional[float]) -> str:
    return "-" if x is None else ("inf" if math.isinf(x) and x > 0 else f"{x:.1f}")


class QuantizationReport:
    """The per-node table of :func:`report`; ``str()`` renders it, ``plot()`` charts it."""

    def __init__(
        self, rows: Sequence[ReportRow], output_sqnr: Optional[float], batches: int, notes: Sequence[str] = ()
    ) -> None:
        self.rows = list(rows)
        self.output_sqnr = output_sqnr
        self.batches = batches
        self.notes = list(notes)

    def row(self, name: str) -> ReportRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row named {name!r}; rows: {', '.join(r.name for r in self.rows)}")

    @property
    def quantized_rows(self) -> list[ReportRow]:
        return [r for r in self.rows if r.quantized]

    @property
    def float_rows(self) -> list[ReportRow]:
        return [r for r in self.rows if not r.quantized]

    def worst(self, n: int = 5, by: str = "sensitivity_sqnr") -> list[ReportRow]:
        """The ``n`` rows with the lowest SQNR in column ``by`` (rows without one are skipped)."""
        scored = [r for r in self.rows if getattr(r, by) is not None]
        return sorted(scored, key=lambda r: getattr(r, by))[:n]

    def __str__(self) -> str:
        placed = any(r.runs_on for r in self.rows)
        head = ("node", "module", "op", "pattern", *(("runs on",) if placed else ()), "local", "cumul.", "sens.")
        head = (*head, "quantization")
        body = [
            (
                r.name,
                r.module_path or "-",
                r.op,
                r.pattern or "-",
                *((r.runs_on or "-",) if placed else ()),
                _fmt(r.local_sqnr),
                _fmt(r.cumulative_sqnr),
                _fmt(r.sensitivity_sqnr),
                r.how,
            )
            for r in self.rows
        ]
        widths = [max(len(str(line[i])) for line in [head, *body]) for i in range(len(head) - 1)]
        lines = [
            "  ".join(str(c).ljust(w) for c, w in zip(line[:-1], widths)) + "  " + line[-1] for line in [head, *body]
        ]
        lines.insert(1, "-" * min(max(len(x) for x in lines), 120))
        n_q = len(self.quantized_rows)
        summary = f"{n_q} of {len(self.rows)} nodes quantized"
        if self.output_sqnr is not None:
            summary += f"; output SQNR {_fmt(self.output_sqnr)} dB over {self.batches} batch(es) (SQNR columns in dB)"
        return "\n".join([summary, *self.notes, *lines])

    def __repr__(self) -> str:
        return f"QuantizationReport({len(self.rows)} rows, output_sqnr={_fmt(self.output_sqnr)})"

    def plot(self, path: Union[str, Path, None] = None, ceiling: float = 80.0) -> Any:
        """Bar chart of local, cumulative and sensitivity SQNR per quantized node; saved as
        PNG at ``path`` if given. Returns the matplotlib ``Figure`` (its bars hold the data).

        Infinite SQNRs (bit-exact) are drawn at ``ceiling`` dB.
        """
        try:
            from matplotlib.figure import Figure
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("QuantizationReport.plot needs matplotlib: pip install matplotlib") from e
        rows = [r for r in self.quantized_rows if r.cumulative_sqnr is not None]
        if not rows:
            raise ValueError("nothing to plot: the report has no per-node SQNR (pass inputs to pt2q.report)")
        fig = Figure(figsize=(max(6.0, 0.45 * len(rows) + 2), 4.5), layout="constrained")
        ax = fig.add_subplot()
        width = 0.27
        series = (("local", "local_sqnr"), ("cumulative", "cumulative_sqnr"), ("sensitivity", "sensitivity_sqnr"))
        for i, (label, attr) in enumerate(series):
            heights = [min(getattr(r, attr), ceiling) if getattr(r, attr) is not None else 0.0 for r in rows]
            ax.bar([x + (i - 1) * width for x in range(len(rows))], heights, width, label=label)
        labels = [f"{r.name}\n{r.module_path}" if r.module_path else r.name for r in rows]
        ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("SQNR vs float (dB), higher is better")
        title = "per-layer SQNR"
        if self.output_sqnr is not None:
            title += f" (model output {_fmt(self.output_sqnr)} dB)"
        ax.set_title(title)
        fig.legend(loc="outside upper right", ncols=3, fontsize=8)
        if path is not None:  # written atomically: a failed save leaves an earlier chart intact
            with atomic_write(path) as f:
                fig.savefig(f, dpi=120, format=Path(path).suffix.lstrip(".") or None)
        return fig
