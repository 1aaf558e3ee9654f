"""The base of the fake quantizers, ``FakeQuantizeBase``: switchable observation and fake quantization;
the ``model.apply`` helpers that switch them; the types a spec's constructor builds.

Names follow ``torchao.quantization.pt2e.fake_quantize``. Like observers, fake quantizers have
``has_statistics`` and ``target_name``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Union

import torch
from torch import Tensor, nn

from pt2q.observers import constructor
from pt2q.observers.base import ObserverBase
from pt2q.observers.constructor import Constructor
from pt2q.observers.merge_across_ranks import MergeSteps

__all__ = [
    "ObserverTypeError",
    "FakeQuantizeBase",
    "ObserverOrFakeQuantize",
    "ObserverOrFakeQuantizeConstructor",
    "enable_fake_quant",
    "disable_fake_quant",
    "enable_observer",
    "disable_observer",
]


class ObserverTypeError(TypeError, AssertionError):
    """A fake quantizer given an observer it cannot work with (also the ``AssertionError`` torchao raises)."""


class FakeQuantizeBase(ABC, nn.Module):
    """Base of fake quantizers: switchable observation (``observer_enabled``) and fake quantization
    (``fake_quant_enabled``), kept as uint8 buffers so they follow the module across devices."""

    fake_quant_enabled: Tensor
    observer_enabled: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("fake_quant_enabled", torch.tensor([1], dtype=torch.uint8))
        self.register_buffer("observer_enabled", torch.tensor([1], dtype=torch.uint8))
        self._target_name = ""

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor: ...

    @abstractmethod
    def calculate_qparams(self) -> tuple[Tensor, Tensor]: ...

    def enable_fake_quant(self, enabled: bool = True) -> None:
        self.fake_quant_enabled[0] = 1 if enabled else 0

    def disable_fake_quant(self) -> None:
        self.enable_fake_quant(False)

    def enable_observer(self, enabled: bool = True) -> None:
        self.observer_enabled[0] = 1 if enabled else 0

    def disable_observer(self) -> None:
        self.enable_observer(False)

    def merge_across_ranks(self) -> MergeSteps:
        """Merge the statistics with the other processes' (see ``ObserverBase.merge_across_ranks``)."""
        raise NotImplementedError(
            f"{self.target_name or type(self).__name__}: {type(self).__name__} does not define "
            "merge_across_ranks, so its statistics cannot be merged across processes; implement it"
        )
        yield []  # a generator, like the implementations

    @property
    def target_name(self) -> str:
        """What is fake-quantized (set by prepare); shared with the observer for its error messages."""
        return self._target_name

    @target_name.setter
    def target_name(self, name: str) -> None:
        self._target_name = name
        observer = self._modules.get("activation_post_process")
        if observer is not None:
            setattr(observer, "target_name", name)  # noqa: B010 (any observer module, untyped)

    with_args = classmethod(constructor.with_args)
    with_callable_args = classmethod(constructor.with_callable_args)


# what a QuantizationSpec's observer_or_fake_quant_ctr builds, and what it may be
ObserverOrFakeQuantize = Union[ObserverBase, FakeQuantizeBase]
ObserverOrFakeQuantizeConstructor = Union[Constructor, type[ObserverBase], type[FakeQuantizeBase]]


def enable_fake_quant(mod: nn.Module) -> None:
    """Turn fake quantization on for ``mod`` if it is a fake quantizer; use with ``model.apply``."""
    if isinstance(mod, FakeQuantizeBase):
        mod.enable_fake_quant()


def disable_fake_quant(mod: nn.Module) -> None:
    """Turn fake quantization off for ``mod`` if it is a fake quantizer; use with ``model.apply``."""
    if isinstance(mod, FakeQuantizeBase):
        mod.disable_fake_quant()


def enable_observer(mod: nn.Module) -> None:
    """Turn observation on for ``mod`` if it is a fake quantizer; use with ``model.apply``."""
    if isinstance(mod, FakeQuantizeBase):
        mod.enable_observer()


def disable_observer(mod: nn.Module) -> None:
    """Freeze the qparams of ``mod`` if it is a fake quantizer; use with ``model.apply``."""
    if isinstance(mod, FakeQuantizeBase):
        mod.disable_observer()
