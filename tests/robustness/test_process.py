"""Robustness: signals, random kills and a full disk during training."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medseg.data.synthetic import make_synthetic_dataset
from medseg.engine import checkpoint as checkpoint_module
from medseg.engine.checkpoint import load_checkpoint
from medseg.engine.train import train
from medseg.errors import MedsegError

TINY = ["--set", "data.patch_size=32", "--set", "model.widths=[4,8,16]", "--set", "train.steps_per_epoch=4",
        "--set", "train.log_every=1", "--batch-size", "2", "--deterministic"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), n_images=10, size=40)


def _command(data: Path, run: Path, epochs: int, resume: bool = False, steps: int = 4) -> list[str]:
    if resume:
        return [sys.executable, "-m", "medseg", "train", "--resume", str(run)]
    return [sys.executable, "-m", "medseg", "train", "--data", str(data), "--out", str(run), "--epochs", str(epochs),
            *TINY, "--set", f"train.steps_per_epoch={steps}"]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _wait_for(path: Path, text: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file() and text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}")


def test_sigint_saves_a_mid_epoch_checkpoint_and_resume_matches(data, tmp_path):
    command = lambda run: _command(data, run, epochs=2, steps=30)  # noqa: E731
    straight = subprocess.run(command(tmp_path / "straight"), env=_env(), capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-1500:]
    run = tmp_path / "interrupted"
    job = subprocess.Popen(command(run), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(run / "train.log", "step 5/60")  # early in the first epoch of 30 steps
    job.send_signal(signal.SIGINT)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 130 and "interrupted" in err
    _, meta, state = load_checkpoint(run / "checkpoint.safetensors")
    assert state["round"] == 0 and 5 <= state["round_step"] < 30  # saved mid-epoch
    resumed = subprocess.run(_command(data, run, 2, resume=True), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-1500:]
    a, _, _ = load_checkpoint(tmp_path / "straight" / "final_model.safetensors")
    b, _, _ = load_checkpoint(run / "final_model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)


def test_disk_full_while_checkpointing_keeps_previous_checkpoint(data, tmp_path, monkeypatch):
    from tests.helpers import tiny_config

    config = tiny_config(data)
    writes = {"n": 0}
    real_write = checkpoint_module.atomic_write_bytes

    def filling_disk(path, payload):
        writes["n"] += 1
        if path.name == "checkpoint.safetensors" and writes["n"] > 4:
            tmp = path.with_name(".partial")
            tmp.write_bytes(payload[: len(payload) // 3])  # the partial temp file a full disk leaves behind
            tmp.unlink()
            raise MedsegError(path, "could not write (No space left on device); the previous file is unchanged")
        real_write(path, payload)

    monkeypatch.setattr(checkpoint_module, "atomic_write_bytes", filling_disk)
    with pytest.raises(MedsegError, match="No space left on device"):
        train(config, tmp_path / "run")
    _, meta, state = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert state["round"] >= 1


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(data, tmp_path):
    rng = random.Random(0)
    epochs, trials, outcomes = 4, 20, []
    for trial in range(trials):
        run = tmp_path / f"trial{trial}"
        job = subprocess.Popen(_command(data, run, epochs), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        _wait_for(run / "config.yaml", "")  # the run has started (imports done)
        time.sleep(rng.uniform(0.0, 4.0))
        os.kill(job.pid, signal.SIGKILL)
        job.wait()
        log = (run / "train.log").read_text() if (run / "train.log").exists() else ""
        finished_epochs = log.count(f"/{epochs}  loss")
        if (run / "checkpoint.safetensors").exists():
            _, _, state = load_checkpoint(run / "checkpoint.safetensors")  # never unreadable
            assert state["round"] >= finished_epochs, "more than the current epoch was lost"
            command = _command(data, run, epochs, resume=True)
        else:
            assert finished_epochs == 0
            command = _command(data, run, epochs)
        result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"trial {trial}: {result.stderr[-1500:]}"
        rows = list(csv.DictReader((run / "history.csv").open()))
        assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
        outcomes.append(finished_epochs)
    print(f"SIGKILL trials: {trials}, epochs finished before the kill: {outcomes}; all resumed to the end")
