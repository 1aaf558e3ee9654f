"""``pt2q.fake_quantize``: torchao's / ExecuTorch's module path.

The code lives in :mod:`pt2q.fake_quant` (``base``, ``fake_quantize``, ``defaults``,
``affine_fake_quantize``).
"""

from pt2q.fake_quant.affine_fake_quantize import (  # noqa: F401
    AffineFakeQuantize,
    default_affine_fake_quant,
    default_affine_per_axis_fake_quant,
    default_groupwise_fake_quant,
)
from pt2q.fake_quant.base import (  # noqa: F401
    FakeQuantizeBase,
    ObserverOrFakeQuantize,
    ObserverOrFakeQuantizeConstructor,
    ObserverTypeError,
    disable_fake_quant,
    disable_observer,
    enable_fake_quant,
    enable_observer,
)
from pt2q.fake_quant.defaults import (  # noqa: F401
    default_affine_fixed_qparams_fake_quant,
    default_dynamic_fake_quant,
    default_embedding_fake_quant,
    default_embedding_fake_quant_4bit,
    default_fake_quant,
    default_fixed_qparams_range_0to1_fake_quant,
    default_fixed_qparams_range_neg1to1_fake_quant,
    default_fused_act_fake_quant,
    default_fused_per_channel_wt_fake_quant,
    default_fused_wt_fake_quant,
    default_histogram_fake_quant,
    default_per_channel_weight_fake_quant,
    default_symmetric_fixed_qparams_fake_quant,
    default_weight_fake_quant,
    fused_per_channel_wt_fake_quant_range_neg_127_to_127,
    fused_wt_fake_quant_range_neg_127_to_127,
)
from pt2q.fake_quant.fake_quantize import (  # noqa: F401
    FakeQuantize,
    FixedQParamsFakeQuantize,
    FusedMovingAvgObsFakeQuantize,
)

__all__ = [
    "ObserverTypeError",
    "ObserverOrFakeQuantize",
    "ObserverOrFakeQuantizeConstructor",
    "FakeQuantizeBase",
    "FakeQuantize",
    "FusedMovingAvgObsFakeQuantize",
    "FixedQParamsFakeQuantize",
    "enable_fake_quant",
    "disable_fake_quant",
    "enable_observer",
    "disable_observer",
    "default_fake_quant",
    "default_weight_fake_quant",
    "default_per_channel_weight_fake_quant",
    "default_dynamic_fake_quant",
    "default_fixed_qparams_range_neg1to1_fake_quant",
    "default_fixed_qparams_range_0to1_fake_quant",
    "default_symmetric_fixed_qparams_fake_quant",
    "default_affine_fixed_qparams_fake_quant",
    "default_embedding_fake_quant",
    "default_embedding_fake_quant_4bit",
    "default_histogram_fake_quant",
    "default_fused_act_fake_quant",
    "default_fused_wt_fake_quant",
    "default_fused_per_channel_wt_fake_quant",
    "fused_wt_fake_quant_range_neg_127_to_127",
    "fused_per_channel_wt_fake_quant_range_neg_127_to_127",
]
