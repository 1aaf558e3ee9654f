"""Misuse that used to give a wrong model without a word, or an error that did not say what was wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import pt2q
from pt2q.numerics.metrics import sqnr
from pt2q.observer import MinMaxObserver
from pt2q.passes.check_annotations import AnnotationDtypeError, AnnotationError
from pt2q.quantizer import QuantizationAnnotation, QuantizationSpec, Quantizer, SharedQuantizationSpec
from pt2q.quantizers import (
    X86InductorQuantizer,
    XNNPACKQuantizer,
    get_default_x86_inductor_quantization_config,
    get_symmetric_quantization_config,
)
from tests.helpers import export_module
from tests.zoo import make

EXAMPLE = (torch.randn(2, 4),)


def _linear_relu() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU()).eval()


def _xnnpack() -> XNNPACKQuantizer:
    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config())


class _Annotate(Quantizer):
    """A quantizer that runs ``annotate_fn(linear_node, relu_node)``."""

    def __init__(self, annotate_fn) -> None:
        super().__init__()
        self.annotate_fn = annotate_fn

    def annotate(self, model):
        linear, relu = [n for n in model.graph.nodes if n.op == "call_function"]
        self.annotate_fn(linear, relu)
        return model

    def validate(self, model) -> None:
        pass


def _spec(dtype=torch.int8) -> QuantizationSpec:
    return QuantizationSpec(dtype=dtype, observer_or_fake_quant_ctr=MinMaxObserver, qscheme=torch.per_tensor_affine)


# --------------------------------------------------------------------- models prepare must refuse


@pytest.mark.parametrize("prepare", [pt2q.prepare_pt2e, pt2q.prepare_qat_pt2e])
def test_a_symbolically_traced_model_is_refused_naming_a_node(prepare) -> None:
    traced = torch.fx.symbolic_trace(_linear_relu())
    with pytest.raises(
        TypeError,
        match=r"but node '_0' calls the module '0' \(Linear\): this GraphModule comes "
        r"from torch.fx.symbolic_trace",
    ):
        prepare(traced, _xnnpack())


def test_a_prepared_model_is_refused_and_a_converted_one_prepares_again() -> None:
    prepared = pt2q.prepare_pt2e(export_module(_linear_relu(), EXAMPLE), _xnnpack())
    with pytest.raises(ValueError, match=r"already prepared \(it holds observer node 'activation_post_process_\d'\)"):
        pt2q.prepare_pt2e(prepared, _xnnpack())
    prepared(*EXAMPLE)
    converted = pt2q.convert_pt2e(prepared)
    expected = converted(*EXAMPLE)
    # re-entrant (issue 15): the same quantizer again finds nothing new to quantize, never quantizes twice
    again = pt2q.prepare_pt2e(converted, _xnnpack())
    assert not [n for n in again.graph.nodes if n.op == "call_module" and n.target != "_guards_fn"]
    assert torch.equal(pt2q.convert_pt2e(again)(*EXAMPLE), expected)


# --------------------------------------------------------------------- annotations that cannot work


def test_a_shared_spec_into_another_graph_names_the_node() -> None:
    foreign = next(n for n in export_module(_linear_relu(), EXAMPLE).graph.nodes if n.op == "call_function")

    def annotate(linear, relu):
        foreign.meta["quantization_annotation"] = QuantizationAnnotation(output_qspec=_spec(), _annotated=True)
        relu.meta["quantization_annotation"] = QuantizationAnnotation(output_qspec=SharedQuantizationSpec(foreign))

    with pytest.raises(
        AnnotationError,
        match="SharedQuantizationSpec of output of node 'relu' points at node 'linear' of another graph",
    ):
        pt2q.prepare_pt2e(export_module(_linear_relu(), EXAMPLE), _Annotate(annotate))


def test_a_sharing_cycle_names_its_members() -> None:
    def annotate(linear, relu):
        linear.meta["quantization_annotation"] = QuantizationAnnotation(output_qspec=SharedQuantizationSpec(relu))
        relu.meta["quantization_annotation"] = QuantizationAnnotation(output_qspec=SharedQuantizationSpec(linear))

    with pytest.raises(
        AnnotationError,
        match="form a cycle: output of node 'linear' -> output of node 'relu' -> output of node 'linear'",
    ):
        pt2q.prepare_pt2e(export_module(_linear_relu(), EXAMPLE), _Annotate(annotate))


def test_a_bool_spec_names_the_node_and_stays_a_type_error() -> None:
    def annotate(linear, relu):
        relu.meta["quantization_annotation"] = QuantizationAnnotation(output_qspec=_spec(torch.bool))

    with pytest.raises(AnnotationDtypeError, match=r"output of node 'relu': dtype=torch.bool cannot hold") as refused:
        pt2q.prepare_pt2e(export_module(_linear_relu(), EXAMPLE), _Annotate(annotate))
    assert isinstance(refused.value, TypeError)


# --------------------------------------------------------------------- calibration that gave garbage


@pytest.mark.parametrize(
    "quantizer",
    [
        _xnnpack,
        lambda: X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config()),
    ],
)
def test_values_near_the_float32_limit_are_refused_naming_the_tensor(quantizer) -> None:
    prepared = pt2q.prepare_pt2e(export_module(_linear_relu(), EXAMPLE), quantizer())
    prepared(torch.tensor([[3e38, -3e38, 1.0, 2.0], [0.5, 1.0, 2.0, 3.0]]))  # finite, but max - min overflows
    with pytest.raises(
        ValueError,
        match=r"input 'input_1' of node 'linear': the observed range \[-3e\+38, 3e\+38\] "
        r"is too wide for float32 quantization parameters",
    ):
        pt2q.convert_pt2e(prepared)


def test_convert_refuses_a_non_finite_scale_from_any_observer() -> None:
    prepared = pt2q.prepare_pt2e(export_module(_linear_relu(), EXAMPLE), _xnnpack())
    prepared(*EXAMPLE)
    observer = prepared.activation_post_process_0
    observer.calculate_qparams = lambda: (torch.tensor([float("inf")]), torch.tensor([0]))
    with pytest.raises(ValueError, match=rf"convert_pt2e: {observer.target_name} gets scale \[inf\] from its"):
        pt2q.convert_pt2e(prepared)


def test_calibrating_through_one_refilled_buffer_equals_fresh_tensors() -> None:
    """The pattern of a numpy data loader writing each batch into one pinned buffer: its version
    counter never moves, and every batch must still be observed."""
    model, example = make("mlp")
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal(example[0].shape).astype(np.float32) * (1 + i) for i in range(6)]
    fresh = pt2q.prepare_pt2e(export_module(model, example), _xnnpack())
    refilled = pt2q.prepare_pt2e(export_module(model, example), _xnnpack())
    buffer = np.empty_like(batches[0])
    shared = torch.from_numpy(buffer)
    for batch in batches:
        fresh(torch.from_numpy(batch))
        buffer[...] = batch
        refilled(shared)
    fresh, refilled = pt2q.convert_pt2e(fresh), pt2q.convert_pt2e(refilled)
    test = torch.from_numpy(batches[-1])
    assert torch.equal(refilled(test), fresh(test))
    assert sqnr(model(test), refilled(test)) > 25
