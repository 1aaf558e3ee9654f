"""``LearnableFakeQuantize``: a fake quantizer whose scale and zero point are trained (LSQ).

It starts as an ordinary fake quantizer: while its observer is enabled, the
observer's statistics set the scale and zero point. After
``enable_range_learning()`` the observer is switched off and the scale and zero
point become trainable parameters, updated by backpropagation through
``torch._fake_quantize_learnable_*`` (Learned Step Size Quantization,
https://openreview.net/pdf?id=rkgO66VKDS). Numerics follow
``torchao.quantization.pt2e.learnable_fake_quantize.LearnableFakeQuantize``.

As in torchao 0.18, ``scale`` and ``zero_point`` are None until the first forward,
which creates them from the observer (as many as channels, per channel): run a
batch before building the optimizer that should train them. pt2q adds that
whether they exist is also a buffer (``initialized``), so a checkpoint taken before
or after the first batch loads back as it was saved, into a module that has or
has not seen data yet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import Tensor, nn

from pt2q.fake_quant.base import FakeQuantizeBase
from pt2q.numerics.dtypes import storage_dtype
from pt2q.numerics.errors import QuantizationArgumentError
from pt2q.numerics.qparams import F32_EPS
from pt2q.numerics.qschemes import PER_CHANNEL_QSCHEMES, SYMMETRIC_QSCHEMES
from pt2q.observers.merge_across_ranks import MergeSteps
from pt2q.observers.min_max import MovingAverageMinMaxObserver

__all__ = ["LearnableFakeQuantize", "enable_range_learning", "disable_range_learning"]


class LearnableFakeQuantize(FakeQuantizeBase):
    """Fake quantization with a learnable scale and zero point.

    ``observer`` (a class or ``with_args`` constructor) gets ``quant_min``,
    ``quant_max`` and ``observer_kwargs``; it initializes the qparams at the
    first forward and keeps updating them while the observer is enabled. With
    ``use_grad_scaling`` the gradients of scale and zero point are multiplied by
    ``1 / sqrt(numel * quant_max)``, as LSQ recommends.
    """

    scale: Optional[nn.Parameter]
    zero_point: Optional[nn.Parameter]
    learning_enabled: Tensor
    initialized: Tensor
    eps: Tensor
    activation_post_process: Any  # any observer module (duck-typed, as in FakeQuantize)
    dtype: torch.dtype
    qscheme: torch.qscheme

    def __init__(
        self,
        observer: Callable[..., nn.Module] = MovingAverageMinMaxObserver,
        quant_min: int = 0,
        quant_max: int = 255,
        use_grad_scaling: bool = False,
        **observer_kwargs: Any,
    ) -> None:
        super().__init__()
        if quant_min >= quant_max:
            raise QuantizationArgumentError(
                f"LearnableFakeQuantize: quant_min ({quant_min}) must be less than quant_max ({quant_max})"
            )
        self.quant_min = quant_min
        self.quant_max = quant_max
        self.use_grad_scaling = use_grad_scaling
        self.activation_post_process = observer(quant_min=quant_min, quant_max=quant_max, **observer_kwargs)
        self.dtype = self.activation_post_process.dtype
        info = torch.iinfo(storage_dtype(self.dtype))
        if not (info.min <= quant_min and quant_max <= info.max):
            raise QuantizationArgumentError(
                f"LearnableFakeQuantize: [{quant_min}, {quant_max}] does not fit the observer's dtype {self.dtype}"
            )
        self.qscheme = self.activation_post_process.qscheme
        self.ch_axis = getattr(self.activation_post_process, "ch_axis", -1)
        self.is_dynamic = False
        # created by the first forward (or by loading a checkpoint that has them)
        self.register_parameter("scale", None)
        self.register_parameter("zero_point", None)
        self.register_buffer("learning_enabled", torch.tensor([0], dtype=torch.uint8))
        self.register_buffer("initialized", torch.tensor([0], dtype=torch.uint8))
        self.register_buffer("eps", torch.tensor([F32_EPS]))

    @property
    def has_statistics(self) -> bool:
        """Whether the scale and zero point were set from data (at least one forward)."""
        return bool(self.initialized[0])

    @property
    def _initialized(self) -> bool:
        """torchao's name for ``has_statistics``: whether ``scale`` and ``zero_point`` exist."""
        return self.has_statistics

    def _set_learning(self, learning: bool) -> None:
        self.learning_enabled[0] = 1 if learning else 0
        self._follow_learning()

    def _follow_learning(self) -> None:
        """The qparams require grad exactly while range learning is on."""
        learning = bool(self.learning_enabled[0])
        for param in (self.scale, self.zero_point):
            if param is not None:
                param.requires_grad_(learning)

    @torch.jit.export
    def enable_range_learning(self) -> None:
        """Train the scale and zero point (this switches the observer off)."""
        self._set_learning(True)
        self.disable_observer()

    @torch.jit.export
    def disable_range_learning(self) -> None:
        """Freeze the scale and zero point."""
        self._set_learning(False)

    @torch.jit.export
    def enable_observer(self, enabled: bool = True) -> None:
        """Let the observer set the qparams again; an enabled observer stops range learning."""
        self.observer_enabled[0] = 1 if enabled else 0
        if enabled:
            self.disable_range_learning()

    @torch.jit.export
    def disable_observer(self) -> None:
        self.enable_observer(False)

    def observe_quant_params(self) -> None:
        print(f"LearnableFakeQuantize scale: {_shown(self.scale)}")
        print(f"LearnableFakeQuantize zero point: {_shown(self.zero_point)}")

    @torch.jit.export
    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        """The learned scale (clamped to ``eps``, in place) and the rounded, clamped zero point.

        Before any data there are none: scale 1.0 and zero point 0 then (what torchao's
        fake quantizers start from; ``convert_pt2e`` warns about an uncalibrated one).
        """
        if self.scale is None or self.zero_point is None:
            return torch.ones(1), torch.zeros(1, dtype=torch.long)
        self.scale.data.clamp_(min=float(self.eps))
        zero_point = self.zero_point.detach().round().clamp(self.quant_min, self.quant_max).long()
        return self.scale.detach(), zero_point

    def _set_qparams(self, scale: Tensor, zero_point: Tensor) -> None:
        """Create the qparams from the first statistics, afterwards update them in place."""
        if self.scale is None or self.zero_point is None:
            self.scale = nn.Parameter(scale.detach().clone())
            self.zero_point = nn.Parameter(zero_point.detach().float())
            self._follow_learning()
        else:
            self.scale.data.copy_(scale)
            self.zero_point.data.copy_(zero_point.float())
        self.initialized[0] = 1

    def merge_across_ranks(self) -> MergeSteps:
        """Merge the observer's statistics; while the observer is enabled the qparams follow them,
        once they are learned they are averaged across ranks (already equal if DDP reduced their
        gradients, i.e. they required grad when the model was wrapped)."""
        yield from self.activation_post_process.merge_across_ranks()
        if self.scale is None or self.zero_point is None:
            return
        if self.observer_enabled[0] == 1:
            self._set_qparams(*self.activation_post_process.calculate_qparams())
            return
        scale, zero_point = yield [(self.scale.detach(), "mean"), (self.zero_point.detach(), "mean")]
        self.scale.data.copy_(scale)
        self.zero_point.data.copy_(zero_point)

    def forward(self, x: Tensor) -> Tensor:
        if self.observer_enabled[0] == 1 or self.scale is None:
            self.activation_post_process(x.detach())
            self._set_qparams(*self.activation_post_process.calculate_qparams())
        if self.fake_quant_enabled[0] != 1:
            return x
        assert self.scale is not None and self.zero_point is not None  # set just above
        if self.qscheme in SYMMETRIC_QSCHEMES:
            self.zero_point.data.zero_()
        grad_factor = 1.0 / (x.numel() * self.quant_max) ** 0.5 if self.use_grad_scaling else 1.0
        if self.qscheme in PER_CHANNEL_QSCHEMES:
            return torch._fake_quantize_learnable_per_channel_affine(
                x, self.scale, self.zero_point, self.ch_axis, self.quant_min, self.quant_max, grad_factor
            )
        return torch._fake_quantize_learnable_per_tensor_affine(
            x, self.scale, self.zero_point, self.quant_min, self.quant_max, grad_factor
        )

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Qparams the checkpoint has and this module lacks (no data seen yet) are created with
        # the saved shape; a module with data loading a checkpoint without them drops its own.
        for name in ("scale", "zero_point"):
            saved = state_dict.get(prefix + name)
            param = self._parameters[name]
            if isinstance(saved, Tensor):
                if param is None:
                    self._parameters[name] = nn.Parameter(torch.empty_like(saved, device=self.eps.device))
                elif param.shape != saved.shape:  # per channel: as many as the checkpoint's channels
                    param.data = torch.empty_like(saved, dtype=param.dtype, device=param.device)
            elif prefix + "initialized" in state_dict:
                self._parameters[name] = None
        super()._load_from_state_dict(state_dict, prefix, *args)
        if not self.has_statistics:  # e.g. a checkpoint of pt2q before 0.18 parity: initial qparams only
            self._parameters["scale"] = self._parameters["zero_point"] = None
        # whether the qparams train is saved (learning_enabled); their requires_grad follows it
        self._follow_learning()

    def extra_repr(self) -> str:
        return (
            f"fake_quant_enabled={self.fake_quant_enabled}, observer_enabled={self.observer_enabled}, "
            f"learning_enabled={self.learning_enabled}, quant_min={self.quant_min}, quant_max={self.quant_max}, "
            f"dtype={self.dtype}, qscheme={self.qscheme}, ch_axis={self.ch_axis}, "
            f"use_grad_scaling={self.use_grad_scaling}, scale={_shown(self.scale)}, "
            f"zero_point={_shown(self.zero_point)}"
        )


def _shown(param: Optional[nn.Parameter]) -> Any:
    return None if param is None else param.detach()


def enable_range_learning(mod: nn.Module) -> None:
    """``model.apply(enable_range_learning)`` trains the qparams of every ``LearnableFakeQuantize``."""
    if isinstance(mod, LearnableFakeQuantize):
        mod.enable_range_learning()


def disable_range_learning(mod: nn.Module) -> None:
    """``model.apply(disable_range_learning)`` freezes the qparams of every ``LearnableFakeQuantize``."""
    if isinstance(mod, LearnableFakeQuantize):
        mod.disable_range_learning()
