"""How close a lowered program's outputs are to a reference: max abs diff, SQNR, bit-exactness."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch
from torch.utils import _pytree as pytree

from pt2q.numerics.metrics import sqnr_of_energies

__all__ = ["Comparison", "compare_outputs", "compare"]

Outputs = Union[torch.Tensor, Sequence[torch.Tensor]]


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Agreement of two sets of outputs, taken over all their elements together."""

    max_abs_diff: float
    sqnr_db: float  # 10*log10(signal power / error power); inf when identical
    mismatched: int  # elements that differ at all
    numel: int

    @property
    def bit_exact(self) -> bool:
        return self.mismatched == 0

    @property
    def mismatch_share(self) -> float:
        return self.mismatched / self.numel if self.numel else 0.0

    def __str__(self) -> str:
        if self.bit_exact:
            return f"bit-exact ({self.numel} elements)"
        return (
            f"max |diff| {self.max_abs_diff:.3g}, SQNR {self.sqnr_db:.1f} dB, "
            f"{self.mismatched}/{self.numel} elements differ"
        )


def _flat(outputs: Any) -> list[torch.Tensor]:
    """The tensors of ``outputs`` (a tensor, or any nesting of tuples, lists and dicts) in pytree order:
    the order a lowered program returns a model's outputs in."""
    return [t for t in pytree.tree_leaves(outputs) if isinstance(t, torch.Tensor)]


def compare_outputs(actual: Outputs, reference: Outputs) -> Comparison:
    """Compare ``actual`` with ``reference``: tensors, or nestings (tuples, lists, dicts) holding as many
    same-shaped tensors."""
    a, r = _flat(actual), _flat(reference)
    if len(a) != len(r):
        raise ValueError(f"{len(a)} outputs to compare with {len(r)} reference outputs")
    for i, (x, y) in enumerate(zip(a, r)):
        if x.shape != y.shape:
            raise ValueError(f"output {i} has shape {tuple(x.shape)}, the reference {tuple(y.shape)}")
    x = torch.cat([t.detach().reshape(-1).double() for t in a]) if a else torch.zeros(0, dtype=torch.float64)
    y = torch.cat([t.detach().reshape(-1).double() for t in r]) if r else torch.zeros(0, dtype=torch.float64)
    bits_differ = sum(int((p.detach() != q.detach()).sum()) for p, q in zip(a, r))
    err = (x - y).pow(2).sum().item()
    signal = y.pow(2).sum().item()
    return Comparison(
        max_abs_diff=float((x - y).abs().max()) if x.numel() else 0.0,
        sqnr_db=sqnr_of_energies(signal, err),
        mismatched=bits_differ,
        numel=int(x.numel()),
    )


def compare(program: Callable[..., Outputs], reference: Callable[..., Any], *inputs: torch.Tensor) -> Comparison:
    """Run ``program`` and ``reference`` (e.g. the converted ``GraphModule``) on ``inputs`` and compare."""
    with torch.no_grad():
        expected = reference(*inputs)
    return compare_outputs(program(*inputs), expected)
