"""pt2q provides torchao's PT2E API (and ExecuTorch's XNNPACK quantizer modules) under mirrored paths.

For each public module of ``torchao.quantization.pt2e`` the module at the same path below ``pt2q``
must hold every name of its ``__all__`` (or, without one, every name it defines), with a signature that
accepts the same arguments. A name torchao adds shows up here as a failing test; the names pt2q leaves
out on purpose are listed in ``GAPS`` with the reason.
"""

from __future__ import annotations

import importlib
import inspect
import types
from typing import Any

import pytest

from tests.migration import migration_rows, mirrors

pytest.importorskip("torchao.quantization.pt2e")
pytest.importorskip("executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils")

# torchao / ExecuTorch module -> the pt2q module replacing it: the README's migration table
MIRRORS = mirrors(migration_rows())
# the public modules of torchao's PT2E API and ExecuTorch's XNNPACK quantizer: each needs a row
PUBLIC_MODULES = {
    "torchao.quantization.pt2e",
    *(
        f"torchao.quantization.pt2e.{m}"
        for m in (
            "quantize_pt2e",
            "observer",
            "fake_quantize",
            "learnable_fake_quantize",
            "graph_utils",
            "export_utils",
            "utils",
            "quantizer",
            "quantizer.quantizer",
            "quantizer.utils",
            "quantizer.composable_quantizer",
            "quantizer.embedding_quantizer",
            "quantizer.x86_inductor_quantizer",
            "quantizer.arm_inductor_quantizer",
            "quantizer.duplicate_dq_pass",
            "quantizer.port_metadata_pass",
            "_numeric_debugger",
            "lowering",
        )
    ),
    "executorch.backends.xnnpack.quantizer.xnnpack_quantizer",
    "executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils",
}

# (torchao module, name) -> why pt2q does not provide it. The one list of deliberate gaps.
GAPS: dict[tuple[str, str], str] = {}

# Parameters pt2q's counterpart spells differently on purpose: (module, name) -> {torchao's: reason}
SIGNATURE_GAPS: dict[tuple[str, str], dict[str, str]] = {}


def public_names(module: types.ModuleType) -> list[str]:
    """``__all__`` without private names; without ``__all__``, the names the module (or its library) defines."""
    if hasattr(module, "__all__"):
        return [n for n in module.__all__ if not n.startswith("_")]
    names = []
    for name, value in vars(module).items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        owner = getattr(value, "__module__", None) or ""
        constant = isinstance(value, (str, int)) and not isinstance(value, bool)
        if constant or owner.startswith(("torchao", "executorch")):
            names.append(name)
    return names


def _modules(theirs: str) -> tuple[types.ModuleType, types.ModuleType]:
    return importlib.import_module(theirs), importlib.import_module(MIRRORS[theirs])


@pytest.mark.parametrize("theirs", list(MIRRORS))
def test_every_public_name_is_there(theirs: str) -> None:
    their_module, our_module = _modules(theirs)
    missing = [
        name for name in public_names(their_module) if (theirs, name) not in GAPS and not hasattr(our_module, name)
    ]
    assert not missing, f"{MIRRORS[theirs]} lacks {theirs}'s {missing}: add them, or list them in GAPS with the reason"


def test_gaps_are_still_gaps() -> None:
    """A gap that has been filled is removed from GAPS (so the count of provided names stays honest)."""
    filled = [key for key in GAPS if hasattr(importlib.import_module(MIRRORS[key[0]]), key[1])]
    assert not filled, f"provided now, remove from GAPS: {filled}"


def test_every_public_module_has_a_row() -> None:
    missing = sorted(PUBLIC_MODULES - set(MIRRORS))
    assert not missing, f"the README's migration table has no 'every public name' row for {missing}"


def provided_counts() -> dict[str, tuple[int, int]]:
    """torchao / ExecuTorch module -> (public names pt2q provides at the mirrored path, public names)."""
    counts = {}
    for theirs in MIRRORS:
        their_module, our_module = _modules(theirs)
        names = public_names(their_module)
        counts[theirs] = (sum(hasattr(our_module, n) for n in names), len(names))
    return counts


def test_count_of_provided_names() -> None:
    """The closing count of the migration: every public name but the GAPS, per module and in total."""
    counts = provided_counts()
    pt2e = {m: c for m, c in counts.items() if m.startswith("torchao.quantization.pt2e")}
    table = "\n".join(f"  {m}: {have}/{total}" for m, (have, total) in counts.items())
    have, total = (sum(c[i] for c in pt2e.values()) for i in (0, 1))
    top_have, top_total = counts["torchao.quantization.pt2e"]
    summary = (
        f"pt2q provides {top_have} of torchao.quantization.pt2e's {top_total} top-level public names and "
        f"{have} of {total} over its {len(pt2e)} public modules; {len(GAPS)} deliberate gaps (GAPS):\n{table}"
    )
    short = {m: total - have for m, (have, total) in counts.items() if have < total}
    gaps_per_module = {m: sum(1 for key in GAPS if key[0] == m) for m in short}
    assert short == gaps_per_module, summary
    assert (top_have, top_total) == (top_total - gaps_per_module.get("torchao.quantization.pt2e", 0), top_total)


def _parameters(obj: Any) -> list[inspect.Parameter] | None:
    try:
        target = obj.__init__ if inspect.isclass(obj) else obj
        return [p for p in inspect.signature(target).parameters.values() if p.name != "self"]
    except (TypeError, ValueError):
        return None


def _signature_problems(theirs: Any, ours: Any, gaps: dict[str, str]) -> list[str]:
    their_params, our_params = _parameters(theirs), _parameters(ours)
    if their_params is None or our_params is None:
        return []
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ours_by_name = {p.name: p for p in our_params}
    our_positional = [p.name for p in our_params if p.kind not in variadic and p.kind != p.KEYWORD_ONLY]
    takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in our_params)
    problems = []
    for i, p in enumerate(q for q in their_params if q.kind not in variadic):
        if p.name in gaps:
            continue
        if p.name not in ours_by_name and not takes_kwargs:
            problems.append(f"no parameter {p.name!r}")
        elif p.kind != p.KEYWORD_ONLY and (i >= len(our_positional) or our_positional[i] != p.name):
            problems.append(f"{p.name!r} is not positional argument {i}")
        elif p.name in ours_by_name and p.default is not p.empty and ours_by_name[p.name].default is p.empty:
            problems.append(f"{p.name!r} is optional in torchao, required here")
    return problems


def _public_methods(cls: type) -> set[str]:
    import torch

    inherited = set(dir(torch.nn.Module)) | set(dir(object))
    return {m for m in dir(cls) if not m.startswith("_") and m not in inherited and callable(getattr(cls, m, None))}


@pytest.mark.parametrize("theirs", list(MIRRORS))
def test_signatures_and_methods_match(theirs: str) -> None:
    their_module, our_module = _modules(theirs)
    problems = []
    for name in public_names(their_module):
        if not hasattr(our_module, name):
            continue
        a, b = getattr(their_module, name), getattr(our_module, name)
        if not (inspect.isfunction(a) or inspect.isclass(a)):
            continue
        problems += [f"{name}: {p}" for p in _signature_problems(a, b, SIGNATURE_GAPS.get((theirs, name), {}))]
        if inspect.isclass(a) and inspect.isclass(b):
            missing = _public_methods(a) - set(dir(b))
            problems += [f"{name}: no method {m}" for m in sorted(missing)]
    assert not problems, f"{MIRRORS[theirs]} differs from {theirs}:\n" + "\n".join(problems)


# --- invalid calls raise torchao's exception type (or a subclass) --------------------------------


def _misuse_cases() -> dict[str, tuple[Any, Any]]:
    """name -> (pt2q call, torchao call): the same mistake made with each library."""
    import torch
    import torchao.quantization.pt2e as ao
    import torchao.quantization.pt2e.fake_quantize as afq
    import torchao.quantization.pt2e.quantize_pt2e as aq
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer as TheirXNNPACK
    from torch import nn
    from torchao.quantization.pt2e.quantizer import QuantizationSpec as TheirSpec

    import pt2q
    import pt2q.fake_quantize as pfq
    import pt2q.observer as pob
    from pt2q.quantizer import QuantizationSpec
    from pt2q.quantizers import XNNPACKQuantizer

    def exported() -> torch.fx.GraphModule:
        return torch.export.export(nn.Linear(4, 4), (torch.randn(2, 4),)).module()

    def observer_cases(name: str, **kwargs: Any) -> tuple[Any, Any]:
        return (lambda: getattr(pob, name)(**kwargs), lambda: getattr(ao, name)(**kwargs))

    return {
        "prepare_pt2e(eager module)": (
            lambda: pt2q.prepare_pt2e(nn.Linear(2, 2), XNNPACKQuantizer()),
            lambda: aq.prepare_pt2e(nn.Linear(2, 2), TheirXNNPACK()),
        ),
        "prepare_qat_pt2e(eager module)": (
            lambda: pt2q.prepare_qat_pt2e(nn.Linear(2, 2), XNNPACKQuantizer()),
            lambda: aq.prepare_qat_pt2e(nn.Linear(2, 2), TheirXNNPACK()),
        ),
        "convert_pt2e(eager module)": (
            lambda: pt2q.convert_pt2e(nn.Linear(2, 2)),
            lambda: aq.convert_pt2e(nn.Linear(2, 2)),
        ),
        "convert_pt2e(model, 'yes')": (
            lambda: pt2q.convert_pt2e(exported(), "yes"),  # type: ignore[arg-type]
            lambda: aq.convert_pt2e(exported(), "yes"),
        ),
        "exported model .eval()": (
            lambda: pt2q.prepare_pt2e(exported(), XNNPACKQuantizer()).eval(),
            lambda: aq.prepare_pt2e(exported(), TheirXNNPACK()).eval(),
        ),
        "MinMaxObserver range without 0": observer_cases("MinMaxObserver", quant_min=5, quant_max=10),
        "MinMaxObserver per-channel qscheme": observer_cases("MinMaxObserver", qscheme=torch.per_channel_affine),
        "MinMaxObserver symmetric quint8 reduce_range": observer_cases(
            "MinMaxObserver", qscheme=torch.per_tensor_symmetric, reduce_range=True
        ),
        "MinMaxObserver unknown argument": observer_cases("MinMaxObserver", foo=1),
        "MinMaxObserver int8 range of 601": observer_cases(
            "MinMaxObserver", dtype=torch.qint8, quant_min=-300, quant_max=300
        ),
        "PerChannelMinMaxObserver dynamic": observer_cases("PerChannelMinMaxObserver", is_dynamic=True),
        "PerChannelMinMaxObserver per-tensor qscheme": observer_cases(
            "PerChannelMinMaxObserver", qscheme=torch.per_tensor_affine
        ),
        "HistogramObserver per-channel qscheme": observer_cases("HistogramObserver", qscheme=torch.per_channel_affine),
        "MovingAverageMinMaxObserver dynamic, averaging 0.01": observer_cases(
            "MovingAverageMinMaxObserver", is_dynamic=True
        ),
        "PerChannelMinMaxObserver ch_axis out of range": (
            lambda: pob.PerChannelMinMaxObserver(ch_axis=5)(torch.randn(2, 3)),
            lambda: ao.PerChannelMinMaxObserver(ch_axis=5)(torch.randn(2, 3)),
        ),
        "PlaceholderObserver.calculate_qparams": (
            lambda: pob.PlaceholderObserver().calculate_qparams(),
            lambda: ao.PlaceholderObserver().calculate_qparams(),
        ),
        "FixedQParamsFakeQuantize(MinMaxObserver)": (
            lambda: pfq.FixedQParamsFakeQuantize(pob.MinMaxObserver),
            lambda: afq.FixedQParamsFakeQuantize(ao.MinMaxObserver),
        ),
        "FusedMovingAvgObsFakeQuantize(MinMaxObserver)": (
            lambda: pfq.FusedMovingAvgObsFakeQuantize(pob.MinMaxObserver),
            lambda: afq.FusedMovingAvgObsFakeQuantize(ao.MinMaxObserver),
        ),
        "FakeQuantize quant_min > quant_max": (
            lambda: pfq.FakeQuantize(quant_min=5, quant_max=1),
            lambda: afq.FakeQuantize(quant_min=5, quant_max=1),
        ),
        "LearnableFakeQuantize quant_min > quant_max": (
            lambda: pt2q.LearnableFakeQuantize(pob.MovingAverageMinMaxObserver, quant_min=5, quant_max=1),
            lambda: ao.LearnableFakeQuantize(ao.MovingAverageMinMaxObserver, quant_min=5, quant_max=1),
        ),
        "QuantizationSpec quant_min > quant_max": (
            lambda: QuantizationSpec(torch.int8, pob.MinMaxObserver, quant_min=5, quant_max=1),
            lambda: TheirSpec(torch.int8, ao.MinMaxObserver, quant_min=5, quant_max=1),
        ),
        "QuantizationSpec ch_axis='a'": (
            lambda: QuantizationSpec(torch.int8, pob.MinMaxObserver, ch_axis="a"),  # type: ignore[arg-type]
            lambda: TheirSpec(torch.int8, ao.MinMaxObserver, ch_axis="a"),
        ),
        "generate_numeric_debug_handle(GraphModule)": (
            lambda: pt2q.generate_numeric_debug_handle(exported()),  # type: ignore[arg-type]
            lambda: ao.generate_numeric_debug_handle(exported()),
        ),
        "prepare_for_propagation_comparison(eager module)": (
            lambda: pt2q.prepare_for_propagation_comparison(nn.Linear(2, 2)),  # type: ignore[arg-type]
            lambda: ao.prepare_for_propagation_comparison(nn.Linear(2, 2)),
        ),
        "bfs_trace_with_node_process(eager module)": (
            lambda: pt2q.bfs_trace_with_node_process(nn.Linear(2, 2), print),  # type: ignore[arg-type]
            lambda: ao.bfs_trace_with_node_process(nn.Linear(2, 2), print),
        ),
        "update_equivalent_types_dict(None)": (
            lambda: pt2q.update_equivalent_types_dict(None),
            lambda: ao.update_equivalent_types_dict(None),
        ),
        "move_exported_model_to_eval(eager module)": (
            lambda: pt2q.move_exported_model_to_eval(nn.Linear(2, 2)),  # type: ignore[arg-type]
            lambda: ao.move_exported_model_to_eval(nn.Linear(2, 2)),
        ),
    }


def test_invalid_calls_raise_torchaos_exception_types() -> None:
    """Each mistake raises in torchao; pt2q raises the same type or a subclass (its own error classes
    subclass both, e.g. ``QuantizationArgumentError`` is a ``ValueError`` and an ``AssertionError``), so a
    script's ``except`` clause written for torchao still catches it."""
    import warnings

    wrong = []
    for name, (ours, theirs) in _misuse_cases().items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(Exception) as their_error:
                theirs()
            with pytest.raises(Exception) as our_error:
                ours()
        if not isinstance(our_error.value, type(their_error.value)):
            wrong.append(f"{name}: torchao {type(their_error.value).__name__}, pt2q {type(our_error.value).__name__}")
    assert not wrong, "\n".join(wrong)
