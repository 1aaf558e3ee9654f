"""``pt2q.utils``: torchao's / ExecuTorch's module path.

The code lives in :mod:`pt2q.observers.pt2e_utils`.
"""

from pt2q.observers.pt2e_utils import (  # noqa: F401
    QuantizationArgumentError,
    calculate_qmin_qmax,
    check_min_max_valid,
    create_getattr_from_value,
    determine_qparams,
    get_fqn_to_example_inputs,
    get_new_attr_name_with_prefix,
    get_qparam_dict,
    getattr_from_fqn,
    has_no_children_ignoring_parametrizations,
    is_per_channel,
    is_per_tensor,
    to_underlying_dtype,
    validate_qmin_qmax,
)

__all__ = [
    "QuantizationArgumentError",
    "is_per_tensor",
    "is_per_channel",
    "getattr_from_fqn",
    "to_underlying_dtype",
    "get_qparam_dict",
    "check_min_max_valid",
    "calculate_qmin_qmax",
    "validate_qmin_qmax",
    "determine_qparams",
    "has_no_children_ignoring_parametrizations",
    "get_fqn_to_example_inputs",
    "get_new_attr_name_with_prefix",
    "create_getattr_from_value",
]
