"""The training engine: outputs of a run, resume equivalence, NaN stop, schedules."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from medseg.engine import train as train_module
from medseg.engine.checkpoint import load_checkpoint
from medseg.engine.train import train
from medseg.errors import MedsegError


def test_run_folder_contents(tiny_config, tmp_path):
    result = train(tiny_config, tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.yaml", "checkpoint.safetensors", "checkpoint.json", "best_model.safetensors",
                 "best_model.json", "final_model.safetensors", "final_model.json", "history.csv", "train.log",
                 "curves.png"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and result.steps_run == 6
    meta = json.loads((run / "best_model.json").read_text())
    assert meta["model"]["name"] == "unet" and meta["data"]["normalize"] == "zscore"
    assert not set(meta["training_data"]["train_ids"]) & set(meta["training_data"]["val_ids"])
    assert not set(meta["training_data"]["train_ids"]) & set(meta["training_data"]["test_ids"])
    with pytest.raises(MedsegError, match="already holds a run"):
        train(tiny_config, run)


def test_killed_and_resumed_run_ends_with_the_same_weights(tiny_config, tmp_path):
    tiny_config.train.epochs = 4
    train(tiny_config, tmp_path / "straight")

    class Killed(Exception):
        pass

    def kill_after_second_epoch(epoch, _row):
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train(tiny_config, tmp_path / "resumed", on_round_end=kill_after_second_epoch)
    assert not (tmp_path / "resumed" / "final_model.safetensors").exists()
    train(None, tmp_path / "resumed", resume=True)
    straight, _, _ = load_checkpoint(tmp_path / "straight" / "final_model.safetensors")
    resumed, _, _ = load_checkpoint(tmp_path / "resumed" / "final_model.safetensors")
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6)
    rows = list(csv.DictReader((tmp_path / "resumed" / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tiny_config, tmp_path, monkeypatch):
    real_build_loss = train_module.build_loss
    calls = {"n": 0}

    def exploding_loss(*args, **kwargs):
        loss = real_build_loss(*args, **kwargs)

        def forward(outputs, mask, region=None):
            calls["n"] += 1
            value = loss(outputs, mask, region)
            return value * float("nan") if calls["n"] > 3 else value

        return forward

    monkeypatch.setattr(train_module, "build_loss", exploding_loss)
    with pytest.raises(MedsegError, match="loss became nan at step 4"):
        train(tiny_config, tmp_path / "run")
    _, meta, state = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert meta["epoch"] == 1 and state["step"] == 2


@pytest.mark.parametrize("schedule", ["constant", "poly", "plateau"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_optimizers_and_schedules_run(tiny_config, tmp_path, schedule, optimizer):
    tiny_config.optim.schedule, tiny_config.optim.name = schedule, optimizer
    tiny_config.optim.grad_clip = 1.0
    tiny_config.train.epochs = 2
    assert train(tiny_config, tmp_path / "run").epochs_run == 2


def test_unetpp_deep_supervision_trains(tiny_config, tmp_path):
    tiny_config.model.name = "unetpp"
    tiny_config.model.widths = [4, 8, 8]
    tiny_config.train.epochs = 1
    assert train(tiny_config, tmp_path / "run").steps_run == 2


def test_empty_validation_split_is_an_error(tiny_config, tmp_path, synthetic_data):
    tiny_config.data.root = str(tmp_path / "data")
    import shutil

    shutil.copytree(synthetic_data, tmp_path / "data")
    rows = (tmp_path / "data" / "split.csv").read_text().replace(",val", ",train")
    (tmp_path / "data" / "split.csv").write_text(rows)
    tiny_config.data.val_fraction = 0.0
    with pytest.raises(MedsegError, match="the val split is empty"):
        train(tiny_config, tmp_path / "run")
