"""Quantization-aware training (QAT) for ExecuTorch's XNNPACK backend.

What this teaches (the PT2E QAT tutorial's flow, on torch 2.13):

1. train a small conv-BatchNorm CNN on scikit-learn's digits in fp32;
2. capture it **in train mode**: ``torch.export.export(model.train(), ...).module()``;
3. ``prepare_qat_pt2e`` with ``get_symmetric_quantization_config(is_qat=True)``: fake
   quantizers on activations and on the BatchNorm-folded conv weights, BN keeps training;
4. fine-tune a few epochs with an ordinary training loop;
5. ``move_exported_model_to_eval`` (an exported model's ``.eval()`` raises: dropout and
   BatchNorm are ops in the graph) and ``convert_pt2e``;
6. compare fp32, post-training-quantized and QAT int8 accuracy.

Run: ``python tutorials/qat_xnnpack.py``
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from digits import accuracy, digits_data, train_epochs  # the tutorials' shared data, model and training loop

from pt2q import convert_pt2e, move_exported_model_to_eval, prepare_pt2e, prepare_qat_pt2e
from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config


class DigitsNet(nn.Module):
    """conv-BN-ReLU x2, max-pool, dropout, two linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.drop = nn.Dropout(0.1)
        self.fc1, self.fc2 = nn.Linear(32 * 4 * 4, 64), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.max_pool2d(F.relu(self.bn2(self.conv2(y))), 2)
        return self.fc2(F.relu(self.fc1(self.drop(torch.flatten(y, 1)))))


def main(fast: bool = False) -> dict:
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = digits_data()
    model = DigitsNet().train()
    train_epochs(model, x_train, y_train, epochs=4 if fast else 10, lr=3e-3)
    fp32_acc = accuracy(model.eval(), x_test, y_test)

    example_inputs = (x_train[:64],)
    batch = {"x": {0: torch.export.Dim("batch", min=1, max=2048)}}  # train, calibrate and test on any batch

    # Baseline: post-training quantization of the same model.
    ptq = prepare_pt2e(
        torch.export.export(copy.deepcopy(model).eval(), example_inputs, dynamic_shapes=batch).module(),
        XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)),
    )
    for i in range(8):
        ptq(x_train[i * 64 : (i + 1) * 64])
    ptq = convert_pt2e(ptq)
    ptq_acc = accuracy(ptq, x_test, y_test)

    # 2. Export in train mode (dropout and BatchNorm are captured in their training form).
    exported = torch.export.export(copy.deepcopy(model).train(), example_inputs, dynamic_shapes=batch).module()

    # 3. Insert fake quantizers.
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=True))
    prepared = prepare_qat_pt2e(exported, quantizer)

    # 4. Fine-tune with quantization in the loop (a smaller learning rate than fp32 training).
    train_epochs(prepared, x_train, y_train, epochs=1 if fast else 3, lr=1e-3)

    # 5. Switch dropout/BatchNorm to eval in the graph, then convert to int8.
    move_exported_model_to_eval(prepared)
    quantized = convert_pt2e(prepared)
    qat_acc = accuracy(quantized, x_test, y_test)

    results = {"fp32_accuracy": fp32_acc, "ptq_int8_accuracy": ptq_acc, "qat_int8_accuracy": qat_acc}
    print(
        f"accuracy on {len(x_test)} test images: fp32 {fp32_acc:.2f}%  PTQ int8 {ptq_acc:.2f}%  QAT int8 {qat_acc:.2f}%"
    )
    return results


if __name__ == "__main__":
    main()
