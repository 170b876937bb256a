"""Robustness: signals and kills landing at chosen training steps, and a full disk while checkpointing."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medseg.data.synthetic import make_synthetic_dataset
from medseg.run import weights as checkpoint_module
from medseg.training.callbacks import SIGNAL_HOOK
from medseg.run.weights import load_checkpoint
from medseg.workflow import train
from medseg.errors import MedsegError

TINY = ["--set", "data.patch_size=32", "--set", "model.widths=[4,8,16]", "--set", "train.log_every=1",
        "--set", "train.val_time_share=null", "--batch-size", "2", "--deterministic"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), n_images=10, size=40)


def _command(data: Path, run: Path, epochs: int, steps: int, resume: bool = False) -> list[str]:
    if resume:
        return [sys.executable, "-m", "medseg", "train", "--resume", str(run)]
    return [sys.executable, "-m", "medseg", "train", "--data", str(data), "--out", str(run), "--epochs", str(epochs),
            *TINY, "--set", f"train.steps_per_epoch={steps}"]


def _env(signal_at: str | None = None) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop(SIGNAL_HOOK, None)
    if signal_at:
        env[SIGNAL_HOOK] = signal_at
    return env


def test_sigint_saves_a_mid_epoch_checkpoint_and_resume_matches(data, tmp_path):
    straight = subprocess.run(_command(data, tmp_path / "straight", 2, 6), env=_env(), capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-1500:]
    run = tmp_path / "interrupted"
    job = subprocess.run(_command(data, run, 2, 6), env=_env("4:SIGINT"), capture_output=True, text=True)
    assert job.returncode == 130 and "interrupted" in job.stderr
    state = load_checkpoint(run / "checkpoint.safetensors").train_state
    assert (state["epoch"], state["step"], state["epoch_step"]) == (0, 4, 4)  # exactly where the signal landed
    resumed = subprocess.run(_command(data, run, 2, 6, resume=True), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-1500:]
    a = load_checkpoint(tmp_path / "straight" / "final_model.safetensors").weights
    b = load_checkpoint(run / "final_model.safetensors").weights
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)


def test_disk_full_while_checkpointing_keeps_previous_checkpoint(data, tmp_path, monkeypatch):
    from tests.helpers import tiny_config

    config = tiny_config(data)
    writes = {"n": 0}
    real_write = checkpoint_module.atomic_write_bytes

    def filling_disk(path, payload):
        writes["n"] += path.name == "checkpoint.safetensors"
        if path.name == "checkpoint.safetensors" and writes["n"] > 1:
            tmp = path.with_name(".partial")
            tmp.write_bytes(payload[: len(payload) // 3])  # the partial temp file a full disk leaves behind
            tmp.unlink()
            raise MedsegError(path, "could not write (No space left on device); the previous file is unchanged")
        real_write(path, payload)

    monkeypatch.setattr(checkpoint_module, "atomic_write_bytes", filling_disk)
    with pytest.raises(MedsegError, match="No space left on device"):
        train(config, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors").train_state
    assert state["epoch"] == 1


@pytest.mark.slow
def test_sigkill_at_chosen_steps_then_resume(data, tmp_path):
    """SIGKILL after steps spread over a 4 x 4-step run: first step, inside epochs, at and after epoch ends, last
    step. The checkpoint on disk is always readable and holds the last finished epoch; resume finishes the run."""
    epochs, steps, outcomes = 4, 4, []
    for kill_step in (1, 3, 4, 5, 8, 9, 12, 13, 15, 16):
        run = tmp_path / f"kill{kill_step}"
        job = subprocess.run(_command(data, run, epochs, steps), env=_env(f"{kill_step}:SIGKILL"),
                             capture_output=True, text=True)
        assert job.returncode == -signal.SIGKILL
        finished_epochs = (kill_step - 1) // steps  # the kill lands after the step, before its epoch ends
        if finished_epochs:
            state = load_checkpoint(run / "checkpoint.safetensors").train_state  # never unreadable
            assert (state["epoch"], state["step"]) == (finished_epochs, finished_epochs * steps)
            command = _command(data, run, epochs, steps, resume=True)
        else:
            assert not (run / "checkpoint.safetensors").exists()
            shutil.rmtree(run)
            command = _command(data, run, epochs, steps)
        result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"kill at step {kill_step}: {result.stderr[-1500:]}"
        rows = list(csv.DictReader((run / "history.csv").open()))
        assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
        outcomes.append((kill_step, finished_epochs))
    print(f"SIGKILL after steps (step, finished epochs): {outcomes}; all resumed to the end")
