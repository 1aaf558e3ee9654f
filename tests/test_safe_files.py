"""Files pt2q reads and writes: hostile .pt2 archives, corrupt programs, killed and disk-full writes."""

from __future__ import annotations

import collections
import errno
import faulthandler
import os
import re
import signal
import subprocess
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

import pt2q
from benchmarks.file_fuzz import mutations, tiny_program
from pt2q import runtime
from pt2q.io.atomic_file import FileWriteError, atomic_write, write_atomic
from pt2q.io.digest import verify_trailer, verify_zip
from pt2q.io.pt2_file import Pt2LoadError, UntrustedContentError, load_pt2, save_pt2
from tests.hostile_files import hostile_pt2s

FUZZ = 1000  # mutations per file written by pt2q


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    """A small XNNPACK-quantized CNN saved by pt2q as .pt2 and .pte, with its outputs on one input."""
    lowered, x = tiny_program()
    folder = tmp_path_factory.mktemp("safe")
    pt2, pte = lowered.save_all(folder, "tiny")
    return SimpleNamespace(
        folder=folder,
        pt2=pt2,
        pte=pte,
        raw_pte=lowered.buffer,
        x=x,
        pt2_out=lowered.exported_program.module()(*x),
        pte_out=runtime.load(lowered.buffer)(*x),
    )


# --------------------------------------------------------------------- digests


def test_sealed_files_still_load_with_torch_and_executorch(files) -> None:
    """The digest lives where the formats leave room: torch.export.load and ExecuTorch read the files as before."""
    from executorch.runtime import Runtime

    assert verify_zip(files.pt2.read_bytes()).sealed and verify_trailer(files.pte.read_bytes()).sealed
    assert torch.equal(torch.export.load(files.pt2).module()(*files.x), files.pt2_out)
    program = Runtime.get().load_program(files.pte.read_bytes())  # the method needs its program alive
    assert torch.equal(program.load_method("forward").execute(list(files.x))[0], files.pte_out)


def _outcomes(load, run, reference, corrupted: list[bytes], error: type) -> collections.Counter:
    """mutation outcome -> count: "same" output, pt2q's ``error``, or anything else (a failure)."""
    seen: collections.Counter = collections.Counter()
    for data in corrupted:
        try:
            out = run(load(data))
            seen["same" if torch.equal(out, reference) else "DIFFERENT OUTPUT"] += 1
        except error:
            seen["pt2q error"] += 1
        except Exception as e:  # noqa: BLE001  the test's point: no other exception may escape
            seen[f"{type(e).__name__}"] += 1
    return seen


def test_fuzzed_pte_written_by_pt2q_loads_the_same_or_is_a_load_error(files) -> None:
    corrupted = mutations(files.pte.read_bytes(), FUZZ, seed=12)
    seen = _outcomes(runtime.load, lambda p: p(*files.x), files.pte_out, corrupted, runtime.ProgramLoadError)
    assert set(seen) <= {"same", "pt2q error"}, seen
    assert seen["pt2q error"] > 0.9 * FUZZ, seen  # the digest catches any change to the program's bytes


def test_fuzzed_pt2_written_by_pt2q_loads_the_same_or_is_a_load_error(files) -> None:
    corrupted = mutations(files.pt2.read_bytes(), FUZZ, seed=12)
    seen = _outcomes(load_pt2, lambda ep: ep.module()(*files.x), files.pt2_out, corrupted, Pt2LoadError)
    assert set(seen) <= {"same", "pt2q error"}, seen
    assert seen["pt2q error"] > 0.9 * FUZZ, seen


def _aborting_pte(raw: bytes) -> bytes:
    """An unsealed .pte whose last named-data key (64 hex digits, in the program's data table) holds a
    byte that is not UTF-8: ExecuTorch's loader throws through C++ and aborts the process."""
    keys = list(re.finditer(rb"[0-9a-f]{64}", raw))
    assert keys, "no named-data key found"
    at = keys[-1].start() + 40
    return raw[:at] + b"\xc2" + raw[at + 1 :]


def test_a_loader_abort_becomes_a_load_error_with_isolate(files) -> None:
    data = _aborting_pte(files.raw_pte)
    pid = os.fork()
    if pid == 0:  # without isolation, loading kills the process
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        faulthandler.disable()
        try:
            runtime.load(data)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGABRT
    with pytest.raises(
        runtime.ProgramLoadError,
        match=r"ExecuTorch crashed \(SIGABRT\) while loading <bytes> after logging: .*UnicodeDecodeError",
    ):
        runtime.load(data, isolate=True)


def test_fuzzed_pte_from_elsewhere_through_the_child_process(files) -> None:
    """Without a digest different outputs cannot be told apart, but no corruption may take the process down."""
    corrupted = mutations(files.raw_pte, 60, seed=5) + [_aborting_pte(files.raw_pte)]
    seen: collections.Counter = collections.Counter()
    for data in corrupted:
        try:
            out = runtime.load(data, isolate=True)(*files.x)
            seen["same" if torch.equal(out, files.pte_out) else "different"] += 1
        except runtime.ProgramLoadError as e:
            seen["child crashed" if "crashed" in str(e) else "load error"] += 1
        except RuntimeError as e:
            assert "failed to run" in str(e)
            seen["run error"] += 1
    assert seen["child crashed"] >= 1 and seen["load error"] > 0, seen


# --------------------------------------------------------------------- hostile .pt2


def test_hostile_pt2_never_runs_its_code(files, tmp_path) -> None:
    marker = tmp_path / "MARKER"
    for name, (data, names) in hostile_pt2s(files.pt2.read_bytes(), marker).items():
        expected = Pt2LoadError if name == "non-operator call" else UntrustedContentError  # torch's verifier says it
        with pytest.raises(expected, match=re.escape(names)) as refused:
            load_pt2(data)
        assert "trust" in str(refused.value) or expected is Pt2LoadError, refused.value
        assert "\n" not in str(refused.value)
        with pytest.raises(runtime.ProgramLoadError, match="not an ExecuTorch program"):
            runtime.load(data)
        assert not marker.exists(), name
    # the payloads are live: torch.export.load runs the sample inputs' pickle, and so does trust=True
    data, _ = hostile_pt2s(files.pt2.read_bytes(), marker)["sample inputs pickle"]
    load_pt2(data, trust=True)
    assert marker.exists()


def test_untrusted_load_equals_torch_export_load(files) -> None:
    ours, theirs = load_pt2(files.pt2), torch.export.load(files.pt2)
    assert str(ours.graph) == str(theirs.graph)
    assert ours.graph_signature == theirs.graph_signature
    assert all(torch.equal(ours.state_dict[k], v) for k, v in theirs.state_dict.items())
    assert torch.equal(ours.module()(*files.x), theirs.module()(*files.x))
    assert torch.equal(ours.example_inputs[0][0], theirs.example_inputs[0][0])


def test_a_dynamic_shape_program_round_trips(tmp_path) -> None:
    class Slice(nn.Module):
        def forward(self, x):
            return x[:, :3] * 2

    ep = torch.export.export(Slice(), (torch.randn(4, 5),), dynamic_shapes=({0: torch.export.Dim("b", min=2, max=64)},))
    save_pt2(ep, tmp_path / "dyn.pt2")
    loaded = load_pt2(tmp_path / "dyn.pt2")
    assert loaded.range_constraints == torch.export.load(tmp_path / "dyn.pt2").range_constraints
    x = torch.randn(7, 5)
    assert torch.equal(loaded.module()(x), x[:, :3] * 2)


# --------------------------------------------------------------------- atomic writes


def _kill_self(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("point", ["mid-write", "before fsync", "before rename", "after rename"])
def test_kill_9_during_a_write_leaves_a_loadable_file(files, tmp_path, point) -> None:
    target = tmp_path / "model.pt2"
    old = files.pt2.read_bytes()
    target.write_bytes(old)
    new = save_pt2(torch.export.export(nn.Linear(3, 2), (torch.randn(1, 3),)), tmp_path / "new.pt2").read_bytes()
    (tmp_path / "new.pt2").unlink()
    pid = os.fork()
    if pid == 0:
        try:
            if point == "mid-write":
                with atomic_write(target) as f:
                    f.write(new[: len(new) // 2])
                    f.flush()
                    _kill_self()
            if point == "before fsync":
                os.fsync = _kill_self
            if point == "before rename":
                os.replace = _kill_self
            if point == "after rename":
                pt2q.io.atomic_file._fsync_folder = _kill_self
            write_atomic(target, new)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert target.read_bytes() == (new if point == "after rename" else old)
    load_pt2(target)  # digest checked: complete
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "model.pt2"]
    assert all(re.fullmatch(r"\.model\.pt2\.[0-9a-f]{8}\.tmp", name) for name in leftovers), leftovers


def test_a_failed_write_keeps_the_old_file_and_says_why(files, tmp_path, monkeypatch) -> None:
    target = tmp_path / "model.pte"
    target.write_bytes(files.pte.read_bytes())

    def full(*_args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(
        FileWriteError,
        match=rf"could not write {re.escape(str(target))}: no space left on device \(the previous file is untouched\)",
    ):
        write_atomic(target, b"new content")
    assert target.read_bytes() == files.pte.read_bytes() and list(tmp_path.iterdir()) == [target]
    with pytest.raises(FileWriteError, match="nothing was written"):
        write_atomic(tmp_path / "missing-folder" / "x.pte", b"x")


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs (needs root); skipped where it cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_keeps_the_previous_program(files, small_tmpfs, capsys) -> None:
    target = small_tmpfs / "model.pt2"
    target.write_bytes(files.pt2.read_bytes())
    filler = small_tmpfs / "filler"
    with open(filler, "wb") as f:  # leave less room than the new file needs
        try:
            f.write(b"\0" * (256 * 1024))
        except OSError:
            pass
    with pytest.raises(FileWriteError, match="no space left on device"):
        save_pt2(torch.export.export(nn.Linear(64, 64), (torch.randn(1, 64),)), target)
    assert torch.equal(load_pt2(target).module()(*files.x), files.pt2_out)
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler", "model.pt2"]
    # the CLI says so in one line, and the previous file still loads
    from pt2q.cli.main import main

    (small_tmpfs.parent / "wide.py").write_text("import torch.nn as nn\n\ndef make():\n    return nn.Linear(64, 64)\n")
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "quantize",
                str(small_tmpfs.parent / "wide.py") + ":make",
                "--example-inputs",
                "1x64",
                "--calibrate",
                "1",
                "--out",
                str(target),
            ]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and err[-1] == (
        f"pt2q: error: could not write {target}: no space left on device (the previous file is untouched)"
    ), err
    assert torch.equal(load_pt2(target).module()(*files.x), files.pt2_out)
