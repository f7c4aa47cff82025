"""Resuming ``mambaad train`` after a hard kill: bit-identical losses and weights, refused mismatches.

The kill test runs real ``python -m mambaad.cli train`` processes and stops one with SIGKILL while it
trains; the resumed runs must log the same per-step losses and end with the same weights as an
uninterrupted run (one process with ``--workers 0`` and ``2``; two gloo processes under torchrun).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from mambaad.checkpoint import load_checkpoint
from mambaad.cli import main
from mambaad.rng import ModelRNG, loader_generator
from tests.datagen import tiny_mvtec  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# one category of 12 training images, batch 2: 6 steps per epoch
STEPS_PER_EPOCH = 6


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    return env


def _train_cmd(root: str, out: str, *extra: object, procs: int = 1) -> list[str]:
    launcher = [sys.executable]
    if procs > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
    return [*launcher, "-m", "mambaad.cli", "train", "--root", root, "--dataset", "mvtec",
            "--categories", "disc", "--model", "mambaad_test", "--image-size", "64", "--batch-size", "2",
            "--device", "cpu", "--output", str(out), *map(str, extra)]


def _start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]


def _ckpt_step(path: str) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except (FileNotFoundError, RuntimeError, EOFError, KeyError):
        return None


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own, so killing
    torchrun's process group would leave them running)."""
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except FileNotFoundError:
                continue
            out += children
            todo += children
    return out


def _hard_kill(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and every process below it, at once (each in its own process group)."""
    os.kill(proc.pid, signal.SIGSTOP)  # no new children while we look
    victims = _descendants(proc.pid)
    for pid in [proc.pid, *victims]:
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    deadline = time.monotonic() + 30
    for pid in victims:
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().split(")")[-1].split()[0] == "Z":  # dead, not yet reaped
                        break
            except FileNotFoundError:
                break
            time.sleep(0.01)
        else:
            raise AssertionError(f"process {pid} survived SIGKILL")


def _kill_when(proc: subprocess.Popen, out: str, wanted: int, snapshots: str | None = None,
               timeout: float = 300) -> int:
    """SIGKILL ``proc`` (its whole process group) once ``out/last.pt`` holds step >= ``wanted``; copy
    every checkpoint seen on the way (with the log) to ``snapshots/<step>/``; returns last.pt's step."""
    path, seen, start = os.path.join(out, "last.pt"), None, time.monotonic()
    while time.monotonic() - start < timeout:
        assert proc.poll() is None, f"the run ended before step {wanted}: {proc.stderr.read()[-3000:]}"
        mtime = os.stat(path).st_mtime_ns if os.path.exists(path) else None
        if mtime is not None and mtime != seen:
            seen = mtime
            step = _ckpt_step(path)
            if step is not None and step >= wanted:
                _hard_kill(proc)
                assert proc.returncode == -signal.SIGKILL
                return _ckpt_step(path)
            if step is not None and snapshots is not None:
                folder = os.path.join(snapshots, str(step))
                os.makedirs(folder, exist_ok=True)
                shutil.copy(path, folder)  # the checkpoint first: the log written before it covers it
                shutil.copy(os.path.join(out, "train_log.json"), folder)
        time.sleep(0.01)
    _hard_kill(proc)
    raise AssertionError(f"no checkpoint of step >= {wanted} within {timeout} s")


def _assert_same_run(ref: str, other: str, steps: int) -> None:
    a, b = load_checkpoint(os.path.join(ref, "last.pt")), load_checkpoint(os.path.join(other, "last.pt"))
    assert a["step"] == b["step"] == steps
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for key in ("step", "epoch", "epoch_step"):
        assert a[key] == b[key], key
    logs = [json.load(open(os.path.join(d, "train_log.json")))["steps"] for d in (ref, other)]
    assert [s["step"] for s in logs[1]] == list(range(1, steps + 1))
    assert [(s["step"], s["loss"]) for s in logs[0]] == [(s["step"], s["loss"]) for s in logs[1]]
    evals = [json.load(open(os.path.join(d, "train_log.json")))["evals"] for d in (ref, other)]
    assert evals[0] == evals[1]


def test_sigkill_then_resume_is_bit_identical(tiny_mvtec, tmp_path):
    """Reference: 18 steps (3 epochs), workers 0. Run A (workers 2, a checkpoint every 4 steps: 4 and 8
    mid-epoch, 12 at the end of epoch 2) is SIGKILLed once last.pt holds step 12 or later; B resumes
    from A's mid-epoch checkpoint of step 4 (workers 0), A from its own last.pt (workers 2)."""
    total = 3 * STEPS_PER_EPOCH
    ref, run_a, run_b = tmp_path / "ref", tmp_path / "a", tmp_path / "b"
    common = ("--iterations", total, "--save-every", 4, "--eval-every", 0)
    ref_proc = _start(_train_cmd(tiny_mvtec, ref, *common, "--workers", 0))
    proc = _start(_train_cmd(tiny_mvtec, run_a, *common, "--workers", 2))
    killed_at = _kill_when(proc, str(run_a), 12, snapshots=str(tmp_path / "snap"))
    assert killed_at < total
    assert killed_at % STEPS_PER_EPOCH == 0, f"killed after step {killed_at}: not an epoch boundary"
    shutil.copytree(tmp_path / "snap" / "4", run_b)
    assert _ckpt_step(str(run_b / "last.pt")) == 4  # mid-epoch
    procs = [_start(_train_cmd(tiny_mvtec, run_a, *common, "--workers", 2, "--resume")),
             _start(_train_cmd(tiny_mvtec, run_b, *common, "--workers", 0, "--resume"))]
    for p in [ref_proc, *procs]:
        _finish(p)
    _assert_same_run(str(ref), str(run_a), total)
    _assert_same_run(str(ref), str(run_b), total)


def test_torchrun_sigkill_then_resume_is_bit_identical(tiny_mvtec, tmp_path):
    """Two gloo processes: every rank's drop-path stream is in the checkpoint, so a resumed run of the
    same process count continues exactly (6 images per rank, batch 2: 3 steps per epoch). With an
    evaluation at every epoch's end (steps 3, 6) and at the end (8), on rank 0 while rank 1 waits: no
    deadlock, one progress line each, and the resumed run keeps the history and best.pt."""
    total = 8
    ref, run = tmp_path / "ref", tmp_path / "run"
    common = ("--iterations", total, "--save-every", 2, "--workers", 0, "--eval-every", 1)
    ref_proc = _start(_train_cmd(tiny_mvtec, ref, *common, procs=2))
    proc = _start(_train_cmd(tiny_mvtec, run, *common, procs=2))
    killed_at = _kill_when(proc, str(run), 4)
    assert 4 <= killed_at < total
    assert len(load_checkpoint(str(run / "last.pt"))["rng"]["model"]) == 2
    resumed = _start(_train_cmd(tiny_mvtec, run, *common, "--resume", procs=2))
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    _, ref_err = ref_proc.communicate(timeout=300)
    assert ref_proc.returncode == 0, ref_err[-3000:]
    _assert_same_run(str(ref), str(run), total)
    evals = json.load(open(run / "train_log.json"))["evals"]
    assert [e["step"] for e in evals] == [3, 6, 8]
    assert ref_err.count("eval epoch") == 3  # rank 0 only
    assert err.count("eval epoch") == sum(s > killed_at for s in (3, 6, 8))
    best = [load_checkpoint(str(d / "best.pt")) for d in (ref, run)]
    assert best[0]["step"] == best[1]["step"] and best[0]["best"] == best[1]["best"]
    for key, value in best[0]["state_dict"].items():
        assert torch.equal(value, best[1]["state_dict"][key]), key


def cli(*args: object) -> int:
    return main([str(a) for a in args])


def test_other_configuration_is_refused_unless_fine_tuning(tiny_mvtec, tmp_path, capsys):
    base = ["--root", tiny_mvtec, "--dataset", "mvtec", "--model", "mambaad_test", "--workers", 0,
            "--iterations", 2, "--eval-every", 0]
    first = tmp_path / "first"
    assert cli("train", *base, "--categories", "disc", "--image-size", 64, "--batch-size", 2,
               "--output", first) == 0
    ckpt = first / "last.pt"
    capsys.readouterr()
    assert cli("train", *base, "--categories", "disc,stripes", "--image-size", 96, "--batch-size", 4,
               "--output", tmp_path / "x", "--resume", ckpt) == 2
    err = capsys.readouterr().err
    assert "image_size: checkpoint 64, this run 96" in err and "batch_size: checkpoint 2, this run 4" in err
    assert "categories: checkpoint ['disc'], this run ['disc', 'stripes']" in err and "--init-from" in err
    assert cli("train", *base, "--categories", "disc", "--image-size", 64, "--batch-size", 2,
               "--model", "mambaad", "--output", tmp_path / "y", "--resume", ckpt) == 2
    assert "model: checkpoint 'mambaad_test', this run 'mambaad'" in capsys.readouterr().err
    # fine-tuning: the weights only, another configuration, a fresh optimizer from step 0
    tuned = tmp_path / "tuned"
    assert cli("train", *base, "--categories", "disc,stripes", "--image-size", 96, "--batch-size", 4,
               "--output", tuned, "--init-from", ckpt) == 0
    assert "weights from" in capsys.readouterr().err
    out = load_checkpoint(str(tuned / "last.pt"))
    assert out["step"] == 2 and out["image_size"] == 96 and out["train_config"]["init_from"] == str(ckpt)
    assert cli("train", *base, "--categories", "disc", "--image-size", 64, "--batch-size", 2,
               "--model", "mambaad", "--output", tmp_path / "z", "--init-from", ckpt) == 2
    assert "the checkpoint holds 'mambaad_test', not 'mambaad'" in capsys.readouterr().err


def test_streams_are_dedicated():
    """The drop-path stream ignores draws from the global generator and leaves it as it was; the
    loader's generator depends on (seed, epoch, rank) only."""
    rng = ModelRNG(0, 0, torch.device("cpu"))
    outer = torch.get_rng_state()
    with rng.active():
        first = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), outer)
    torch.rand(100)  # someone else draws
    with rng.active():
        second = torch.rand(4)
    again = ModelRNG(0, 0, torch.device("cpu"))
    with again.active():
        assert torch.equal(torch.rand(4), first)
    restored = ModelRNG(5, 1, torch.device("cpu"))
    restored.load_state_dict(again.state_dict())
    with restored.active():
        assert torch.equal(torch.rand(4), second)
    with ModelRNG(0, 1, torch.device("cpu")).active():
        assert not torch.equal(torch.rand(4), first)  # each rank its own masks
    assert loader_generator(3, 2, 0).initial_seed() == loader_generator(3, 2, 0).initial_seed()
    assert loader_generator(3, 2, 0).initial_seed() != loader_generator(3, 3, 0).initial_seed()


@pytest.mark.gpu
def test_cuda_stream_is_dedicated_and_restorable():
    device = torch.device("cuda", 0)
    rng = ModelRNG(0, 0, device)
    outer = torch.cuda.get_rng_state(device)
    saved = rng.state_dict()
    with rng.active():
        first = torch.rand(4, device=device)
    assert torch.equal(torch.cuda.get_rng_state(device), outer)
    torch.rand(100, device=device)  # someone else draws
    again = ModelRNG(1, 0, device)
    assert again.load_state_dict(saved)
    with again.active():
        assert torch.equal(torch.rand(4, device=device), first)
    cpu_only = {"cpu": saved["cpu"], "cuda": None}  # a checkpoint of a CPU run
    assert not ModelRNG(0, 0, device).load_state_dict(cpu_only)
