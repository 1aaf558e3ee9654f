"""``pt2q.observer``: torchao's / ExecuTorch's module path.

The code lives in :mod:`pt2q.observers` (``base``, ``min_max``, ``histogram``, ``pass_through``,
``defaults``, ``range_estimators``, ``affine_base``) and :mod:`pt2q.fake_quant.observer_state`.
"""

from pt2q.fake_quant.observer_state import (  # noqa: F401
    get_observer_state_dict,
    load_observer_state_dict,
)
from pt2q.numerics.affine_primitives import (  # noqa: F401
    MappingType,
    TorchAODType,
    ZeroPointDomain,
)
from pt2q.numerics.granularity import (  # noqa: F401
    Granularity,
    PerAxis,
    PerBlock,
    PerGroup,
    PerRow,
    PerTensor,
    PerToken,
    get_block_size,
)
from pt2q.observers.affine_base import (  # noqa: F401
    AffineQuantizedObserverBase,
)
from pt2q.observers.base import (  # noqa: F401
    ObserverBase,
    UniformQuantizationObserverBase,
)
from pt2q.observers.defaults import (  # noqa: F401
    default_affine_fixed_qparams_observer,
    default_debug_observer,
    default_dynamic_quant_observer,
    default_fixed_qparams_range_0to1_observer,
    default_fixed_qparams_range_neg1to1_observer,
    default_float_qparams_observer,
    default_float_qparams_observer_4bit,
    default_histogram_observer,
    default_observer,
    default_per_channel_weight_observer,
    default_placeholder_observer,
    default_reuse_input_observer,
    default_symmetric_fixed_qparams_observer,
    default_weight_observer,
    per_channel_weight_observer_range_neg_127_to_127,
    weight_observer_range_neg_127_to_127,
)
from pt2q.observers.histogram import (  # noqa: F401
    HistogramObserver,
)
from pt2q.observers.min_max import (  # noqa: F401
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
)
from pt2q.observers.pass_through import (  # noqa: F401
    FixedQParamsObserver,
    NoopObserver,
    PlaceholderObserver,
    RecordingObserver,
    ReuseInputObserver,
)
from pt2q.observers.range_estimators import (  # noqa: F401
    MSEObserver,
    PercentileObserver,
)

__all__ = [
    "ObserverBase",
    "UniformQuantizationObserverBase",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PerChannelMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
    "HistogramObserver",
    "FixedQParamsObserver",
    "PlaceholderObserver",
    "NoopObserver",
    "default_observer",
    "default_weight_observer",
    "default_per_channel_weight_observer",
    "default_histogram_observer",
    "default_placeholder_observer",
    "default_dynamic_quant_observer",
    "default_float_qparams_observer",
    "default_float_qparams_observer_4bit",
    "default_debug_observer",
    "default_reuse_input_observer",
    "weight_observer_range_neg_127_to_127",
    "per_channel_weight_observer_range_neg_127_to_127",
    "default_fixed_qparams_range_neg1to1_observer",
    "default_fixed_qparams_range_0to1_observer",
    "default_symmetric_fixed_qparams_observer",
    "default_affine_fixed_qparams_observer",
    "Granularity",
    "MappingType",
    "PerAxis",
    "PerBlock",
    "PerGroup",
    "PerRow",
    "PerTensor",
    "PerToken",
    "TorchAODType",
    "ZeroPointDomain",
    "get_block_size",
    "RecordingObserver",
    "ReuseInputObserver",
    "get_observer_state_dict",
    "load_observer_state_dict",
]
