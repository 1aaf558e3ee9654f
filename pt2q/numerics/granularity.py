"""Granularities of affine quantization: which elements of a tensor share one scale and zero point.

Names and meanings follow ``torchao.quantization`` (``PerTensor``, ``PerAxis``,
``PerGroup``, ``PerRow``, ``PerToken``, ``PerBlock``); :func:`get_block_size` turns a
granularity and a tensor shape into the *block size* the affine ops take: the shape
of the block of elements that share qparams (``block_size[i] == shape[i]`` shares
along dimension ``i``, ``1`` keeps one qparam per index).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Granularity",
    "PerTensor",
    "PerAxis",
    "PerGroup",
    "PerRow",
    "PerToken",
    "PerBlock",
    "get_block_size",
    "as_granularity",
]


@dataclass(frozen=True)
class Granularity:
    """Base of the granularity kinds."""


@dataclass(frozen=True)
class PerTensor(Granularity):
    """One scale and zero point for the whole tensor."""


@dataclass(frozen=True)
class PerAxis(Granularity):
    """One qparam per index of ``axis`` (e.g. per output channel of a weight: ``PerAxis(0)``)."""

    axis: int


@dataclass(frozen=True)
class PerGroup(Granularity):
    """One qparam per ``group_size`` consecutive elements of the last dimension (groupwise weights)."""

    group_size: int


@dataclass(frozen=True)
class PerRow(Granularity):
    """One qparam per row: reduce along ``dim`` (default the last), keep every other index."""

    dim: int = -1


@dataclass(frozen=True)
class PerToken(Granularity):
    """One qparam per token: each index of every dimension but the last (dynamic activations)."""


@dataclass(frozen=True)
class PerBlock(Granularity):
    """One qparam per block of the trailing dimensions; leading dimensions are padded with 1."""

    block_size: tuple[int, ...]


_KINDS: dict[str, type[Granularity]] = {
    k.__name__: k for k in (PerTensor, PerAxis, PerGroup, PerRow, PerToken, PerBlock)
}


def as_granularity(obj: object) -> Granularity:
    """``obj`` as a pt2q granularity: itself, or the same kind read by its class name and fields (torchao's
    ``torchao.quantization.granularity.PerGroup(32)`` becomes ``PerGroup(32)``). TypeError for anything else."""
    if isinstance(obj, Granularity):
        return obj
    kind = _KINDS.get(type(obj).__name__)
    if kind is not None:
        try:
            fields = {f: getattr(obj, f) for f in kind.__dataclass_fields__}
            if kind is PerBlock:
                fields["block_size"] = tuple(fields["block_size"])
            return kind(**fields)
        except AttributeError:
            pass
    raise TypeError(f"granularity must be a Granularity such as PerGroup(32), got {obj!r}")


def _check_divides(shape: Sequence[int], block: Sequence[int], what: str) -> None:
    for size, b in zip(shape, block):
        if b <= 0 or size % b:
            raise ValueError(f"{what}: tensor shape {tuple(shape)} is not divisible into blocks {tuple(block)}")


def get_block_size(input_shape: Sequence[int], granularity: object) -> tuple[int, ...]:
    """The block size of ``granularity`` (pt2q's or torchao's, see :func:`as_granularity`) for a tensor of
    ``input_shape``."""
    granularity = as_granularity(granularity)
    shape = tuple(input_shape)
    if isinstance(granularity, PerTensor):
        return shape
    if isinstance(granularity, PerAxis):
        block = list(shape)
        block[granularity.axis] = 1
        return tuple(block)
    if isinstance(granularity, PerBlock):
        per_block = (1,) * (len(shape) - len(granularity.block_size)) + tuple(granularity.block_size)
        if len(per_block) != len(shape):
            raise ValueError(f"PerBlock{tuple(granularity.block_size)} has more dimensions than the tensor {shape}")
        _check_divides(shape, per_block, "PerBlock")
        return per_block
    if isinstance(granularity, PerToken):
        return (1,) * (len(shape) - 1) + shape[-1:]
    if isinstance(granularity, PerRow):
        block = [1] * len(shape)
        block[granularity.dim] = shape[granularity.dim]
        return tuple(block)
    if isinstance(granularity, PerGroup):
        if shape[-1] % granularity.group_size:
            raise ValueError(
                f"PerGroup({granularity.group_size}): the last dimension of a tensor of shape {shape} is not "
                f"divisible by the group size; choose a group size that divides {shape[-1]}"
            )
        return (1,) * (len(shape) - 1) + (granularity.group_size,)
    raise ValueError(f"unsupported granularity {granularity!r}")
