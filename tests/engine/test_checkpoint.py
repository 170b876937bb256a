"""Checkpoints: round trip, atomic writes under a crash, corrupt and hostile files."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from medseg.engine import checkpoint as ckpt
from medseg.errors import MedsegError
from medseg.models import create_model


def _model():
    return create_model("unet", 1, 1, widths=(4, 8))


def test_round_trip_with_training_state(tmp_path):
    model = _model()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 1, 8, 8)).mean().backward()
    optimizer.step()
    rng_state = torch.get_rng_state()
    state = {"optimizer": optimizer.state_dict(), "rng": rng_state, "round": 3, "history": [{"a": 1.5}]}
    path = tmp_path / "c.safetensors"
    ckpt.save_checkpoint(path, model.state_dict(), {"model": model.spec, "epoch": 3}, state)
    weights, meta, restored = ckpt.load_checkpoint(path)
    assert meta["epoch"] == 3 and restored["round"] == 3 and restored["history"] == [{"a": 1.5}]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(weights[key], value)
    fresh = torch.optim.Adam(_model().parameters())
    fresh.load_state_dict(restored["optimizer"])
    torch.testing.assert_close(restored["rng"], rng_state)
    assert (tmp_path / "c.json").is_file()
    rebuilt, _ = ckpt.load_model(path)
    assert rebuilt.spec == model.spec


def test_crash_during_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    ckpt.save_checkpoint(path, _model().state_dict(), {"model": _model().spec, "epoch": 1})
    before = path.read_bytes()

    def crash(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(MedsegError, match="No space left on device.*previous file is unchanged"):
        ckpt.save_checkpoint(path, _model().state_dict(), {"model": _model().spec, "epoch": 2})
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "c.safetensors"
    ckpt.save_checkpoint(path, _model().state_dict(), {"model": _model().spec})
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(MedsegError, match="not a readable medseg checkpoint"):
        ckpt.load_checkpoint(path)


def test_pickle_posing_as_checkpoint_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(MedsegError, match="not a readable medseg checkpoint"):
        ckpt.load_model(path)
    assert not marker.exists()


def test_weights_of_another_model_are_rejected(tmp_path):
    path = tmp_path / "c.safetensors"
    other = create_model("unet", 1, 1, widths=(4, 16))
    ckpt.save_checkpoint(path, other.state_dict(), {"model": _model().spec})
    with pytest.raises(MedsegError, match="do not fit model 'unet'"):
        ckpt.load_model(path)
