"""pt2q.distributed on 2 gloo processes (CPU): merged observers equal one process over the union of the
shards, QAT under DistributedDataParallel (with synchronized BatchNorm) matches single-process QAT and
converts to the same program on every rank, and bad setups fail with clear errors."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import sys
import tempfile
from pathlib import Path

import expecttest
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import pt2q
from pt2q.distributed import calibrate, convert_sync_batchnorm, sync_observers
from pt2q.fake_quant.learnable_fake_quantize import LearnableFakeQuantize
from pt2q.fake_quantize import (
    FakeQuantize,
    FusedMovingAvgObsFakeQuantize,
    disable_fake_quant,
    disable_observer,
)
from pt2q.observer import (
    FixedQParamsObserver,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    PerChannelMinMaxObserver,
    PlaceholderObserver,
)
from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config
from tests.helpers import one_thread, run_on_ranks, torch_threads  # noqa: F401  (one_thread: autouse fixture)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tutorials"))
from digits import DigitsNet, accuracy, digits_data, train, train_on_loader  # noqa: E402

WORLD = 2
QAT_EPOCHS = 2
BATCH = 64  # the global batch: 32 per rank
# HistogramObserver: merged vs one process, measured on these activations: scale 0.05-0.1% apart, same zero point
HISTOGRAM_SCALE_RTOL = 0.01
HISTOGRAM_ZERO_POINT_ATOL = 2


@pytest.fixture(scope="module")
def digits():
    """A DigitsNet trained 4 epochs, on 1408 training images (22 global batches of 64, split evenly over 2 ranks)."""
    torch.manual_seed(0)
    x, y, x_test, y_test = digits_data()
    x, y = x[:1408], y[:1408]
    with torch_threads(1):
        model = train(DigitsNet(), x, y, epochs=4)
    return model, x, y, x_test, y_test


def export(model: nn.Module, x: torch.Tensor, train_mode: bool) -> torch.fx.GraphModule:
    model = copy.deepcopy(model).train(train_mode)
    batch = {"x": {0: torch.export.Dim("batch", min=1, max=2048)}}
    return torch.export.export(model, (x[:BATCH],), dynamic_shapes=batch).module()


def prepare_ptq(model: nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    return pt2q.prepare_pt2e(export(model, x, False), quantizer)


def prepare_qat(model: nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=True))
    return pt2q.prepare_qat_pt2e(export(model, x, True), quantizer)


def program_digest(gm: torch.fx.GraphModule) -> str:
    """The converted program, bit for bit: its code and every parameter and buffer."""
    h = hashlib.sha256(gm.code.encode())
    for name, t in gm.state_dict().items():
        h.update(name.encode() + str(t.dtype).encode() + t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def observer_qparams(gm: torch.fx.GraphModule) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {
        n: tuple(t.clone() for t in m.calculate_qparams())
        for n, m in gm.named_children()
        if n.startswith("activation_post_process_")
    }


# --- calibration -------------------------------------------------------------------------------------------------


def activation_batches(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Real activations: the first conv + BatchNorm of the trained model on 1024 digits, 32 batches [32, 16, 8, 8]."""
    with torch.no_grad():
        return list(model.features[:2](x[:1024]).split(32))


def observer_bag() -> nn.ModuleDict:
    q8 = dict(dtype=torch.qint8, quant_min=-128, quant_max=127)
    symmetric_per_channel = dict(q8, ch_axis=1, qscheme=torch.per_channel_symmetric)
    return nn.ModuleDict(
        {
            "minmax": MinMaxObserver(**q8),
            "per_channel": PerChannelMinMaxObserver(**symmetric_per_channel),
            "histogram": HistogramObserver(**q8),
            "percentile": PercentileObserver(percentile=99.9, **q8),
            "percentile_per_channel": PercentileObserver(percentile=99.9, **symmetric_per_channel),
            "mse_per_channel": MSEObserver(**symmetric_per_channel),
            "moving_average": MovingAverageMinMaxObserver(**q8),
            "moving_average_per_channel": MovingAveragePerChannelMinMaxObserver(**symmetric_per_channel),
            "fake_quant": FakeQuantize(),
            "fused_fake_quant": FusedMovingAvgObsFakeQuantize(),
            "learnable_fake_quant": LearnableFakeQuantize(),
            "learned_fake_quant": LearnableFakeQuantize(),  # range learning from the second batch on
            "fixed": FixedQParamsObserver(scale=1 / 128, zero_point=0, **q8),
            "placeholder": PlaceholderObserver(),
        }
    )


EXACT = ("minmax", "per_channel", "percentile", "percentile_per_channel", "mse_per_channel", "fixed", "placeholder")
MOVING_AVERAGES = (
    "moving_average",
    "moving_average_per_channel",
    "fake_quant",
    "fused_fake_quant",
    "learnable_fake_quant",
)


def observe(bag: nn.ModuleDict, batches: list[torch.Tensor]) -> None:
    for i, batch in enumerate(batches):
        for obs in bag.values():
            obs(batch)
        if i == 0 and "learned_fake_quant" in bag:
            bag["learned_fake_quant"].enable_range_learning()  # its qparams now stay (no optimizer here)


def bag_state(bag: nn.ModuleDict) -> dict[str, dict[str, torch.Tensor]]:
    """Each observer's buffers and parameters, and its qparams."""
    state = {}
    for name, obs in bag.items():
        entry = {k: v.detach().clone() for k, v in obs.state_dict().items()}
        if not isinstance(obs, PlaceholderObserver):
            entry["qparams.scale"], entry["qparams.zero_point"] = (t.detach().clone() for t in obs.calculate_qparams())
        state[name] = entry
    return state


def error_messages(rank: int, batches: list[torch.Tensor]) -> dict[str, str]:
    """What sync_observers says to each bad setup (every rank raises the same error, in step)."""
    messages = {}

    def attempt(case: str, model: nn.Module) -> None:
        try:
            sync_observers(model)
            messages[case] = ""
        except (ValueError, RuntimeError) as e:
            messages[case] = str(e)

    extra = nn.ModuleDict({"a": MinMaxObserver(), **({"b": MinMaxObserver()} if rank == 1 else {})})
    observe(extra, batches[:1])
    attempt("more_observers_on_rank_1", extra)
    other_kind = nn.ModuleDict({"a": HistogramObserver() if rank == 1 else MinMaxObserver()})
    observe(other_kind, batches[:1])
    attempt("another_observer_on_rank_1", other_kind)
    channels = PerChannelMinMaxObserver(ch_axis=1)
    channels(batches[0] if rank == 0 else batches[0][:, :8])
    attempt("8_channels_on_rank_1", channels)
    torch.manual_seed(rank)
    weights = nn.ModuleDict({"obs": MinMaxObserver(), "linear": nn.Linear(2, 2)})
    observe(nn.ModuleDict({"obs": weights["obs"]}), batches[:1])
    attempt("other_weights_on_rank_1", weights)
    starved = HistogramObserver()
    if rank == 0:
        starved(batches[0])
    attempt("no_data_on_rank_1", starved)
    twice = HistogramObserver()
    twice(batches[rank])
    sync_observers(twice)
    twice(batches[2 + rank])
    attempt("observed_after_merge", twice)
    return messages


def _calibration_ranks(rank: int, world: int, model: nn.Module, x: torch.Tensor) -> dict:
    batches = activation_batches(model, x)
    bag = observer_bag()
    observe(bag, batches[rank::world])  # as a DistributedSampler(shuffle=False) would shard them
    sync_observers(bag)
    merged = bag_state(bag)
    sync_observers(bag)  # nothing new anywhere: a no-op
    # the public flow: calibrate() a prepared graph on this rank's DistributedSampler shard
    prepared = prepare_ptq(model, x)
    data = TensorDataset(x[:1024])
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        calibrate(prepared, DataLoader(data, batch_size=32, sampler=DistributedSampler(data, shuffle=False)))
    qparams = observer_qparams(prepared)
    return {
        "bag": merged,
        "bag_synced_again": bag_state(bag),
        "graph_qparams": qparams,
        "program": program_digest(pt2q.convert_pt2e(prepared)),
        "progress_bar": stderr.getvalue(),
        "errors": error_messages(rank, batches),
    }


def rank_averaged_moving_average(batches: list[torch.Tensor], per_channel: bool, c: float = 0.01):
    """The documented result for moving averages: the moving average of the rank-averaged batch min/max."""
    lo = hi = None
    for t in range(0, len(batches), WORLD):
        stats = [
            torch.aminmax(b.transpose(0, 1).reshape(16, -1), dim=1) if per_channel else torch.aminmax(b)
            for b in batches[t : t + WORLD]
        ]  # rank r's t-th batch is batches[t + r]
        b_lo = torch.stack([s[0] for s in stats]).double().mean(0)
        b_hi = torch.stack([s[1] for s in stats]).double().mean(0)
        lo, hi = (b_lo, b_hi) if lo is None else (lo + c * (b_lo - lo), hi + c * (b_hi - hi))
    return lo, hi


@pytest.fixture(scope="module")
def calibration(digits):
    model, x, *_ = digits
    return run_on_ranks(_calibration_ranks, WORLD, timeout=240, args=(model, x))


def test_merged_observers_equal_one_process_over_the_union(digits, calibration):
    model, x, *_ = digits
    batches = activation_batches(model, x)
    one_process = observer_bag()
    observe(one_process, batches)
    expected = bag_state(one_process)
    merged = calibration[0]["bag"]
    for rank in calibration[1:]:  # every rank holds the same merged state, bit for bit
        for name, entry in merged.items():
            for key, t in entry.items():
                assert torch.equal(rank["bag"][name][key], t), (name, key)
    for rank in calibration:  # syncing again with nothing new is a no-op
        for name, entry in merged.items():
            assert all(torch.equal(rank["bag_synced_again"][name][k], t) for k, t in entry.items()), name

    for name in EXACT:  # min/max, percentile and MSE: exactly one process's statistics and qparams
        assert merged[name].keys() == expected[name].keys()
        for key, t in expected[name].items():
            assert torch.equal(merged[name][key], t), (name, key)

    hist, ref = merged["histogram"], expected["histogram"]  # same range and mass; re-binned elsewhere
    assert torch.equal(hist["min_val"], ref["min_val"]) and torch.equal(hist["max_val"], ref["max_val"])
    assert hist["histogram"].sum().item() == pytest.approx(ref["histogram"].sum().item(), rel=1e-6)
    assert hist["qparams.scale"].item() == pytest.approx(ref["qparams.scale"].item(), rel=HISTOGRAM_SCALE_RTOL)
    assert abs(hist["qparams.zero_point"].item() - ref["qparams.zero_point"].item()) <= HISTOGRAM_ZERO_POINT_ATOL

    for name in MOVING_AVERAGES:
        per_channel = name == "moving_average_per_channel"
        lo, hi = rank_averaged_moving_average(batches, per_channel)
        prefix = "" if name.startswith("moving_average") else "activation_post_process."
        torch.testing.assert_close(
            merged[name][prefix + "min_val"].double(), lo.reshape(-1) if per_channel else lo, rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(
            merged[name][prefix + "max_val"].double(), hi.reshape(-1) if per_channel else hi, rtol=1e-5, atol=1e-6
        )
        if prefix:  # a fake quantizer's scale and zero point follow its merged observer
            assert torch.equal(merged[name]["scale"], merged[name]["qparams.scale"]), name
            assert torch.equal(merged[name]["zero_point"].long(), merged[name]["qparams.zero_point"].long()), name
    # learned qparams (observer off) are averaged: here each rank's came from its first batch
    firsts = [LearnableFakeQuantize() for _ in range(WORLD)]
    for fq, batch in zip(firsts, batches):
        fq(batch)
    for key in ("scale", "zero_point"):
        mean = torch.stack([getattr(fq, key).detach().double() for fq in firsts]).mean(0).float()
        assert torch.equal(merged["learned_fake_quant"][key], mean), key


def test_calibrate_gives_every_rank_one_program(digits, calibration):
    model, x, *_ = digits
    assert calibration[0]["program"] == calibration[1]["program"]
    assert "calibrating (2 ranks)" in calibration[0]["progress_bar"] and calibration[1]["progress_bar"] == ""
    one_process = prepare_ptq(model, x)
    with torch.no_grad():
        for batch in x[:1024].split(32):
            one_process(batch)
    expected = observer_qparams(one_process)
    for name, (scale, zero_point) in calibration[0]["graph_qparams"].items():
        if isinstance(getattr(one_process, name), HistogramObserver):
            torch.testing.assert_close(scale, expected[name][0], rtol=HISTOGRAM_SCALE_RTOL, atol=0)
            assert (zero_point - expected[name][1]).abs().max() <= HISTOGRAM_ZERO_POINT_ATOL
        else:  # per-channel weight observers
            assert torch.equal(scale, expected[name][0]) and torch.equal(zero_point, expected[name][1])


def test_bad_setups_fail_on_every_rank_with_a_clear_error(calibration):
    errors = [rank["errors"] for rank in calibration]
    # each rank names its own observer where the models differ; otherwise they say the same
    assert "a (MinMaxObserver) on rank 0 differs from rank 1's observer" in errors[0].pop("another_observer_on_rank_1")
    assert "a (HistogramObserver) on rank 1 differs from rank 0's" in errors[1].pop("another_observer_on_rank_1")
    assert errors[0] == errors[1]
    messages = errors[0]
    assert "different models (rank 0: 1, rank 1: 2 observers" in messages["more_observers_on_rank_1"]
    assert (
        "differently shaped statistics on the ranks (rank 0: 32, rank 1: 16 values)" in messages["8_channels_on_rank_1"]
    )
    assert "different weights, e.g. 'linear.weight' (2 tensor(s) differ" in messages["other_weights_on_rank_1"]
    assert "broadcast the float model's buffers from rank 0" in messages["other_weights_on_rank_1"]
    assert "rank(s) [1] saw no data" in messages["no_data_on_rank_1"]
    assert "DistributedSampler" in messages["no_data_on_rank_1"]
    assert "observed more data after its statistics were merged" in messages["observed_after_merge"]


# --- QAT under DistributedDataParallel ---------------------------------------------------------------------------


def fake_quant_buffers(gm: torch.fx.GraphModule) -> dict[str, torch.Tensor]:
    return {
        f"{n}.{k}": v.clone()
        for n, m in gm.named_children()
        if n.startswith("activation_post_process_")
        for k, v in m.state_dict().items()
    }


def qat_loader(x: torch.Tensor, y: torch.Tensor, rank: int, world: int) -> DataLoader:
    """Global batches of 64 in the same shuffled order on any number of ranks (each takes every world-th sample)."""
    data = TensorDataset(x, y)
    return DataLoader(
        data,
        batch_size=BATCH // world,
        sampler=DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0),
    )


def _qat_ranks(rank: int, world: int, model: nn.Module, x, y, x_test, y_test) -> dict:
    out = {}
    prepared = convert_sync_batchnorm(prepare_qat(model, x))
    train_on_loader(
        DistributedDataParallel(prepared, forward_sync_buffers=False), qat_loader(x, y, rank, world), epochs=QAT_EPOCHS
    )
    sync_observers(prepared)
    out["buffers"] = fake_quant_buffers(prepared)
    converted = pt2q.convert_pt2e(pt2q.move_exported_model_to_eval(prepared))
    out["accuracy"] = accuracy(converted, x_test, y_test)
    out["program"] = program_digest(converted)

    # DDP's defaults (buffers broadcast from rank 0 before each forward, per-rank BatchNorm) train too
    defaults = prepare_qat(model, x)
    ddp = DistributedDataParallel(defaults)
    train_on_loader(ddp, qat_loader(x, y, rank, world), epochs=1)
    out["defaults_program"] = program_digest(
        pt2q.convert_pt2e(pt2q.move_exported_model_to_eval(sync_observers(ddp).module))
    )

    # one step of synchronized BatchNorm (fake quantization off) on this rank's half of a batch of 64
    float_qat = convert_sync_batchnorm(prepare_qat(model, x))
    float_qat.apply(disable_fake_quant)
    float_qat.apply(disable_observer)
    half = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    logits = float_qat(x[:BATCH][half])
    F.cross_entropy(logits, y[:BATCH][half], reduction="sum").backward()
    grads = torch.cat([p.grad.flatten() for p in float_qat.parameters() if p.grad is not None])
    dist.all_reduce(grads)  # the gradient of the sum of the ranks' losses
    out["sync_bn"] = {
        "logits": logits.detach(),
        "grads": grads,
        "running": torch.cat([b.flatten() for n, b in float_qat.named_buffers() if "running" in n]),
    }
    return out


@pytest.fixture(scope="module")
def qat(digits):
    return run_on_ranks(_qat_ranks, WORLD, timeout=240, args=digits)


def test_qat_under_ddp_matches_one_process_and_converts_to_one_program(digits, qat):
    model, x, y, x_test, y_test = digits
    one_process = prepare_qat(model, x)
    train_on_loader(one_process, qat_loader(x, y, 0, 1), epochs=QAT_EPOCHS)
    expected = accuracy(pt2q.convert_pt2e(pt2q.move_exported_model_to_eval(one_process)), x_test, y_test)
    assert expected > 95
    for rank in qat:
        assert abs(rank["accuracy"] - expected) <= 0.5, (rank["accuracy"], expected)
    buffers = qat[0]["buffers"]  # fake quantizers identical on every rank after sync_observers, bit for bit
    assert len(buffers) > 20 and buffers.keys() == qat[1]["buffers"].keys()
    assert all(torch.equal(t, qat[1]["buffers"][k]) for k, t in buffers.items())
    assert qat[0]["program"] == qat[1]["program"]
    assert qat[0]["defaults_program"] == qat[1]["defaults_program"]


def test_sync_batch_norm_equals_batch_norm_over_the_whole_batch(digits, qat):
    model, x, y, *_ = digits
    one_process = prepare_qat(model, x)
    one_process.apply(disable_fake_quant)
    one_process.apply(disable_observer)
    logits = one_process(x[:BATCH])
    F.cross_entropy(logits, y[:BATCH], reduction="sum").backward()
    grads = torch.cat([p.grad.flatten() for p in one_process.parameters() if p.grad is not None])
    running = torch.cat([b.flatten() for n, b in one_process.named_buffers() if "running" in n])
    got = [rank["sync_bn"] for rank in qat]
    torch.testing.assert_close(torch.cat([g["logits"] for g in got]), logits.detach(), rtol=1e-5, atol=1e-5)
    for g in got:
        torch.testing.assert_close(g["grads"], grads, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(g["running"], running, rtol=1e-5, atol=1e-6)


# --- in one process ----------------------------------------------------------------------------------------------


def test_no_process_group_is_a_clear_error(digits):
    model, x, *_ = digits
    assert not dist.is_initialized()
    hint = r"the default process group is not initialized\. Call torch\.distributed\.init_process_group"
    with pytest.raises(RuntimeError, match=f"sync_observers: {hint}"):
        sync_observers(observer_bag())
    with pytest.raises(RuntimeError, match=f"calibrate: {hint}"):
        calibrate(observer_bag(), DataLoader(TensorDataset(x[:4])))
    with pytest.raises(RuntimeError, match=f"convert_sync_batchnorm: {hint}"):
        convert_sync_batchnorm(prepare_qat(model, x))


def batch_norm_calls(gm: torch.fx.GraphModule) -> str:
    return "\n".join(
        f"{n.target if isinstance(n.target, torch._ops.OpOverload) else n.target.__name__}{tuple(map(str, n.args[5:]))}"
        for n in gm.graph.nodes
        if "batch_norm" in str(n.target)
    )


class TestSyncBatchNormGraph(expecttest.TestCase):
    def test_train_eval_and_convert(self):
        torch.manual_seed(0)
        x = torch.rand(64, 1, 8, 8)
        model = DigitsNet()
        with contextlib.ExitStack() as stack:
            store = stack.enter_context(tempfile.TemporaryDirectory())
            dist.init_process_group("gloo", init_method=f"file://{store}/store", rank=0, world_size=1)
            stack.callback(dist.destroy_process_group)
            plain = prepare_qat(model, x)
            synced = convert_sync_batchnorm(copy.deepcopy(plain))
            self.assertExpectedInline(
                batch_norm_calls(synced),
                """\
sync_batch_norm('True', '0.1', '1e-05', 'False', '')
sync_batch_norm('True', '0.1', '1e-05', 'False', '')""",
            )
            # one rank: the same numbers as aten.batch_norm (also the running statistics)
            torch.testing.assert_close(synced(x), plain(x), rtol=0, atol=0)
            torch.testing.assert_close(dict(synced.named_buffers()), dict(plain.named_buffers()), rtol=0, atol=0)
            pt2q.move_exported_model_to_eval(synced)
            self.assertExpectedInline(
                batch_norm_calls(synced),
                """\
aten.batch_norm.default('False', '0.1', '1e-05', 'False')
aten.batch_norm.default('False', '0.1', '1e-05', 'False')""",
            )
            pt2q.move_exported_model_to_train(synced)
            self.assertExpectedInline(
                batch_norm_calls(synced),
                """\
sync_batch_norm('True', '0.1', '1e-05', 'False', '')
sync_batch_norm('True', '0.1', '1e-05', 'False', '')""",
            )
            converted = pt2q.convert_pt2e(synced)  # BatchNorm folded into the convs as without sync
            self.assertEqual(batch_norm_calls(converted), "")
            self.assertEqual(program_digest(converted), program_digest(pt2q.convert_pt2e(plain)))
            with self.assertRaisesRegex(ValueError, r"shards for rank 1 of 2, but this process is rank 0 of 1"):
                data = TensorDataset(x)
                calibrate(plain, DataLoader(data, sampler=DistributedSampler(data, num_replicas=2, rank=1)))


def test_benchmark_table_holds_its_own_numbers():
    from benchmarks.distributed import markdown_table, measure

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    row = measure(model, (torch.randn(2, 16),), inputs=8, sync_repeats=2)
    assert row["observers"] == 5 and row["inputs"] == 8
    assert row["1p_per_s"] > 0 and row["2p_per_s"] > 0 and row["sync_ms"] > 0 and 0 < row["sync_share"] < 1
    header, rule, line = markdown_table({"tiny": row}).splitlines()
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert len(cells) == len(header.strip("|").split("|")) == 8
    assert cells[:3] == ["tiny", "5", "8"] and float(cells[5]) == pytest.approx(
        row["2p_per_s"] / row["1p_per_s"], abs=0.01
    )
