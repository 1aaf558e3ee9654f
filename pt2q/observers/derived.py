"""The observer behind a ``DerivedQuantizationSpec``: qparams computed from other observers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torch import Tensor, nn

from pt2q.numerics.errors import QuantizationArgumentError
from pt2q.numerics.qschemes import PER_CHANNEL_QSCHEMES
from pt2q.observers.base import ObserverBase

__all__ = ["DerivedObserverOrFakeQuantize"]


class DerivedObserverOrFakeQuantize(ObserverBase):
    """Observes nothing; ``calculate_qparams`` applies ``derive_qparams_fn`` to ``obs_or_fqs``.

    The source observers are held in a plain list (not as submodules) since they
    already live in the graph module under their own names.
    """

    def __init__(
        self,
        dtype: torch.dtype,
        obs_or_fqs: list[nn.Module],
        derive_qparams_fn: Callable[[list[nn.Module]], tuple[Tensor, Tensor]],
        quant_min: Optional[int] = None,
        quant_max: Optional[int] = None,
        qscheme: Optional[torch.qscheme] = None,
        ch_axis: Optional[int] = None,
    ) -> None:
        if qscheme in PER_CHANNEL_QSCHEMES and ch_axis is None:
            raise QuantizationArgumentError(f"a per-channel derived spec ({qscheme}) needs a ch_axis")
        super().__init__(dtype)
        self.obs_or_fqs = obs_or_fqs
        self.derive_qparams_fn = derive_qparams_fn
        self.quant_min = quant_min
        self.quant_max = quant_max
        self.qscheme = qscheme
        self.ch_axis = ch_axis

    def forward(self, x: Tensor) -> Tensor:
        return x

    @property
    def has_statistics(self) -> bool:
        return all(getattr(o, "has_statistics", True) for o in self.obs_or_fqs)

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        return self.derive_qparams_fn(self.obs_or_fqs)
