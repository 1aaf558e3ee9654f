"""Saving and loading what a prepared model's observers and fake quantizers hold (statistics and
qparams): ``get_observer_state_dict`` / ``load_observer_state_dict``, as in
``torchao.quantization.pt2e.observer``."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import nn

from pt2q.fake_quant.base import FakeQuantizeBase
from pt2q.observers.base import ObserverBase

__all__ = ["get_observer_state_dict", "load_observer_state_dict"]


def _is_observer_or_fake_quantize(module: nn.Module) -> bool:
    return isinstance(module, (ObserverBase, FakeQuantizeBase))


def get_observer_state_dict(mod: nn.Module) -> dict[str, Any]:
    """The entries of ``mod.state_dict()`` that belong to its observers and fake quantizers (their
    statistics and qparams), to save a calibration and load it into a model prepared the same way."""
    full = mod.state_dict()
    observed: OrderedDict[str, Any] = OrderedDict((k, v) for k, v in full.items() if "activation_post_process" in k)
    observed._metadata = getattr(full, "_metadata", None)  # type: ignore[attr-defined]
    return observed


def load_observer_state_dict(mod: nn.Module, obs_dict: dict[str, Any]) -> None:
    """Load what :func:`get_observer_state_dict` saved into the observers and fake quantizers of ``mod``.

    A missing or unexpected observer entry raises a ``RuntimeError`` naming it (torchao means to, but
    loads non-strictly and so never reports a missing entry).
    """
    missing: list[str] = []
    unexpected: list[str] = []
    for name, module in mod.named_modules():
        if _is_observer_or_fake_quantize(module):
            module._load_from_state_dict(obs_dict, name + ".", {}, True, missing, unexpected, [])
    for kind, keys in (("Missing", missing), ("Unexpected", unexpected)):
        for key in keys:
            if "observer" in key or "activation_post_process" in key:
                raise RuntimeError(f"{kind} keys for observer {key} in state_dict")
