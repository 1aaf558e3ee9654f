"""Wrote flat_layout_objects.pt at 488e0ba, the last commit of the flat pt2q/ layout: observers and fake
quantizers as old pickles name them. Kept to show what the file holds; run from the repo root."""

import torch
from torch import nn

import pt2q
from pt2q.debug.numeric_debugger import OutputLogger
from pt2q.fake_quant.affine_fake_quantize import AffineFakeQuantize
from pt2q.fake_quant.learnable_fake_quantize import LearnableFakeQuantize
from pt2q.numerics.affine_primitives import MappingType
from pt2q.numerics.granularity import PerGroup
from pt2q.observer import MovingAverageMinMaxObserver
from pt2q.observers.affine_observer import AffineQuantizedMinMaxObserver
from pt2q.observers.range_estimators import MSEObserver, PercentileObserver
from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


torch.manual_seed(0)
x = torch.randn(2, 3, 8, 8)
ptq = pt2q.prepare_pt2e(
    torch.export.export(Net().eval(), (x,)).module(),
    XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)),
)
ptq(x)
qat = pt2q.prepare_qat_pt2e(
    torch.export.export(Net().train(), (x,)).module(),
    XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_qat=True)),
)
qat(x)
w = torch.randn(4, 64)
observers = {
    "affine": AffineQuantizedMinMaxObserver(MappingType.SYMMETRIC, torch.int8, PerGroup(32)),
    "affine_fq": AffineFakeQuantize(
        mapping_type=MappingType.ASYMMETRIC, target_dtype=torch.uint8, granularity=PerGroup(32)
    ),
    "percentile": PercentileObserver(),
    "mse": MSEObserver(),
    "learnable": LearnableFakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255),
}
for o in observers.values():
    o(w)
observers["logger"] = OutputLogger(0, "linear")


def inserted(gm):  # the observer / fake-quantize modules prepare inserted (a model from torch.export does not pickle)
    return {n: m for n, m in gm.named_children() if "activation_post_process" in n}


expected = {k: tuple(t.tolist() for t in o.calculate_qparams()) for k, o in {**inserted(ptq), **inserted(qat)}.items()}
torch.save(
    {"ptq": inserted(ptq), "qat": inserted(qat), "observers": observers, "qparams": expected},
    "tests/data/flat_layout_objects.pt",
)
