"""Calibration and quantization-aware training across processes, launched with torchrun.

    torchrun --standalone --nproc-per-node 2 tutorials/distributed_calibration.py [--fast] [--out DIR]

What this teaches (every rank runs this script; rank 0 prints and saves):

1. join the process group torchrun describes (``gloo`` on CPU, ``nccl`` on GPUs);
2. train the fp32 DigitsNet with ``DistributedDataParallel`` (a ``DistributedSampler``
   gives each rank its shard), then make the float model identical on every rank:
   DDP keeps the parameters equal, but each rank's BatchNorm ran on its own batches;
3. PTQ: each rank prepares the same exported model, ``pt2q.distributed.calibrate``
   runs its shard of the calibration set and merges the observers across ranks, so
   ``convert_pt2e`` gives the same program on every rank;
4. QAT under DDP: ``convert_sync_batchnorm`` (BatchNorm statistics over the global
   batch), ``DistributedDataParallel(..., forward_sync_buffers=False)`` (each rank's
   observers keep their own statistics), train, ``sync_observers``, convert: again one
   program, which rank 0 saves;
5. check, with a collective, that every rank holds the same two programs.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from digits import DigitsNet, accuracy, digits_data, train_on_loader  # the tutorials' shared data, model and loop
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from pt2q import convert_pt2e, move_exported_model_to_eval, prepare_pt2e, prepare_qat_pt2e
from pt2q.distributed import calibrate, convert_sync_batchnorm, sync_observers
from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config


def sharded(data: TensorDataset, batch_size: int, shuffle: bool) -> DataLoader:
    """This rank's shard of ``data``: a DistributedSampler takes every world_size-th sample."""
    return DataLoader(data, batch_size=batch_size, sampler=DistributedSampler(data, shuffle=shuffle, seed=0))


def program_digest(gm: torch.fx.GraphModule) -> torch.Tensor:
    """sha256 of a converted program's code and tensors, as 32 bytes (to compare across ranks)."""
    h = hashlib.sha256(gm.code.encode())
    for name, t in gm.state_dict().items():
        h.update(name.encode() + t.contiguous().view(torch.uint8).numpy().tobytes())
    return torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8)


def same_on_every_rank(digest: torch.Tensor) -> bool:
    everyone = [torch.empty_like(digest) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, digest)
    return all(torch.equal(d, digest) for d in everyone)


def main(fast: bool = False, out_dir: Path | None = None) -> dict:
    # 1. torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; init_process_group reads them.
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)  # one core per rank
    try:
        results = run(rank, world, fast, out_dir)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        print(
            f"{world} ranks, accuracy on the test images: fp32 {results['fp32_accuracy']:.2f}%  "
            f"PTQ int8 {results['ptq_int8_accuracy']:.2f}%  QAT int8 {results['qat_int8_accuracy']:.2f}%; "
            f"programs identical on every rank: PTQ {results['ptq_same_program']}, QAT {results['qat_same_program']}"
        )
        if out_dir is not None:
            (out_dir / "results.json").write_text(json.dumps(results))
    return results


def run(rank: int, world: int, fast: bool, out_dir: Path | None) -> dict:
    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    x_train, y_train, x_test, y_test = digits_data()
    n = len(x_train) // 64 * 64  # whole global batches of 64: every rank gets equally many samples
    train_data = TensorDataset(x_train[:n], y_train[:n])
    batch = 64 // world

    # 2. fp32 training with DDP, then rank 0's BatchNorm statistics everywhere
    model = DigitsNet().train()
    train_on_loader(
        DistributedDataParallel(model), sharded(train_data, batch, shuffle=True), epochs=4 if fast else 10, lr=3e-3
    )
    for t in model.buffers():
        dist.broadcast(t, src=0)
    fp32_accuracy = accuracy(model.eval(), x_test, y_test)

    example = (x_train[:batch],)
    dims = {"x": {0: torch.export.Dim("batch", min=1, max=2048)}}

    # 3. PTQ: calibrate this rank's shard (512 images split over the ranks), merge, convert
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    ptq = prepare_pt2e(
        torch.export.export(copy.deepcopy(model).eval(), example, dynamic_shapes=dims).module(), quantizer
    )
    calibrate(ptq, sharded(TensorDataset(x_train[:512]), 32, shuffle=False))
    ptq = convert_pt2e(ptq)

    # 4. QAT under DDP
    exported = torch.export.export(copy.deepcopy(model).train(), example, dynamic_shapes=dims).module()
    qat_quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=True))
    prepared = convert_sync_batchnorm(prepare_qat_pt2e(exported, qat_quantizer))
    train_on_loader(
        DistributedDataParallel(prepared, forward_sync_buffers=False),
        sharded(train_data, batch, shuffle=True),
        epochs=1 if fast else 3,
        lr=1e-3,
    )
    sync_observers(prepared)  # fake quantizers and BatchNorm statistics: the same on every rank from here on
    qat = convert_pt2e(move_exported_model_to_eval(prepared))
    if rank == 0 and out_dir is not None:
        torch.export.save(torch.export.export(qat, example, dynamic_shapes=dims), out_dir / "digits_qat_int8.pt2")

    # 5. every rank converted the same programs
    return {
        "world_size": world,
        "fp32_accuracy": fp32_accuracy,
        "ptq_int8_accuracy": accuracy(ptq, x_test, y_test),
        "qat_int8_accuracy": accuracy(qat, x_test, y_test),
        "ptq_same_program": same_on_every_rank(program_digest(ptq)),
        "qat_same_program": same_on_every_rank(program_digest(qat)),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="PTQ and QAT of DigitsNet across torchrun processes")
    parser.add_argument("--fast", action="store_true", help="fewer epochs (what the tests run)")
    parser.add_argument("--out", type=Path, default=None, help="directory for rank 0's results.json and .pt2")
    args = parser.parse_args()
    if args.out is not None and int(os.environ.get("RANK", "0")) == 0:
        args.out.mkdir(parents=True, exist_ok=True)
    main(fast=args.fast, out_dir=args.out)
