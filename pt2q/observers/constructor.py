"""Constructors with preset arguments: ``MinMaxObserver.with_args(quant_min=0, quant_max=127)``.

A ``QuantizationSpec`` holds such a constructor (``observer_or_fake_quant_ctr``); prepare calls it
once per tensor it observes. Observers, fake quantizers and affine observers share this machinery
through their ``with_args`` / ``with_callable_args`` class methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

from torch import nn

__all__ = ["Constructor", "with_args", "with_callable_args"]


class Constructor:
    """``cls`` with preset keyword arguments: calling it builds an instance, later kwargs win.

    ``callable_args`` are called anew for each instance built (unless given explicitly), e.g. to give
    every observer its own freshly made tensor.
    """

    def __init__(
        self,
        cls: Callable[..., nn.Module],
        kwargs: dict[str, Any],
        callable_args: Optional[dict[str, Callable[[], Any]]] = None,
    ) -> None:
        self.cls = cls
        self.kwargs = kwargs
        self.callable_args = dict(callable_args or {})

    def __call__(self, *args: Any, **kwargs: Any) -> nn.Module:
        made = {name: make() for name, make in self.callable_args.items() if name not in kwargs}
        return self.cls(*args, **{**self.kwargs, **made, **kwargs})

    def with_args(self, **kwargs: Any) -> Constructor:
        """This constructor with ``kwargs`` preset too (they win over the ones already set)."""
        return Constructor(self.cls, {**self.kwargs, **kwargs}, self.callable_args)

    def with_callable_args(self, **kwargs: Callable[[], Any]) -> Constructor:
        """This constructor also calling each of ``kwargs``' values for every instance it builds."""
        return Constructor(self.cls, self.kwargs, {**self.callable_args, **kwargs})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        made = "".join(f".with_callable_args({k}={v!r})" for k, v in self.callable_args.items())
        return f"{self.cls.__name__}.with_args({args}){made}"


def with_args(cls: Callable[..., nn.Module], **kwargs: Any) -> Constructor:
    """A constructor of ``cls`` with ``kwargs`` preset; it has ``.with_args`` too."""
    return Constructor(cls, kwargs)


def with_callable_args(cls: Callable[..., nn.Module], **kwargs: Callable[[], Any]) -> Constructor:
    """A constructor of ``cls`` that calls each of ``kwargs``' values for every instance it builds."""
    return Constructor(cls, {}, kwargs)
