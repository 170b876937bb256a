"""Weights files: round trip with the training state, atomic writes under a crash, corrupt and hostile files."""

from __future__ import annotations

import os

import pytest
import torch

from medseg.run import weights as ckpt
from medseg.run.folder import resolve_weights
from medseg.run.weights import WeightsInfo
from medseg.errors import MedsegError
from medseg.models import create_model
from tests.helpers import contract_for, save_model


def _model():
    return create_model("unet", 1, 1, widths=(4, 8))


def test_round_trip_with_training_state(tmp_path):
    model = _model()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 1, 8, 8)).mean().backward()
    optimizer.step()
    rng_state = torch.get_rng_state()
    state = {"optimizer": optimizer.state_dict(), "rng": rng_state, "epoch": 3, "history": [{"a": 1.5}]}
    path = tmp_path / "c.safetensors"
    ckpt.save_checkpoint(path, model.state_dict(), contract_for(model), WeightsInfo(3, 30, 12.5, 0.8), state)
    loaded = ckpt.load_checkpoint(path)
    assert loaded.info == WeightsInfo(3, 30, 12.5, 0.8)
    assert loaded.train_state["epoch"] == 3 and loaded.train_state["history"] == [{"a": 1.5}]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.weights[key], value)
    fresh = torch.optim.Adam(_model().parameters())
    fresh.load_state_dict(loaded.train_state["optimizer"])
    torch.testing.assert_close(loaded.train_state["rng"], rng_state)
    assert (tmp_path / "c.json").is_file()
    rebuilt, contract = ckpt.load_model(path)
    assert rebuilt.spec == model.spec and contract == contract_for(model)


def test_crash_during_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = save_model(tmp_path / "c.safetensors", _model())
    before = path.read_bytes()

    def crash(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(MedsegError, match="No space left on device.*previous file is unchanged"):
        save_model(path, _model())
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = save_model(tmp_path / "c.safetensors", _model())
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(MedsegError, match="not a readable medseg checkpoint"):
        ckpt.load_checkpoint(path)


def test_resolve_weights_follows_the_contract(tmp_path):
    model = _model()
    save_model(tmp_path / "best_model.safetensors", model)
    assert resolve_weights(tmp_path) == tmp_path / "best_model.safetensors"  # no contract.json yet
    save_model(tmp_path / "final_model.safetensors", model)
    from dataclasses import replace

    replace(contract_for(model), selected="final_model").save(tmp_path / "contract.json")
    assert resolve_weights(tmp_path) == tmp_path / "final_model.safetensors"
    with pytest.raises(MedsegError, match="no checkpoint.safetensors in this run folder"):
        resolve_weights(tmp_path, "checkpoint")
