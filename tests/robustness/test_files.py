"""Robustness: checkpoints and configs that are broken, foreign or hostile."""

from __future__ import annotations

import os
import pickle

import pytest

from medseg.cli import main
from medseg.errors import MedsegError
from medseg.run.weights import load_checkpoint, load_model, save_checkpoint
from medseg.models import ModelSpec, create_model
from tests.helpers import save_model


def _checkpoint(path, **options):
    return save_model(path, create_model("unet", 1, 1, widths=(4, 8), **options))


def _run(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return code, err


def test_truncated_and_corrupted_checkpoints(tmp_path, capsys):
    path = _checkpoint(tmp_path / "c.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    code, err = _run(["predict", "--weights", str(path), str(path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "not a readable medseg checkpoint" in err
    path.write_bytes(bytes(b ^ 0x5A for b in data))
    code, err = _run(["predict", "--weights", str(path), str(path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "not a readable medseg checkpoint" in err


def test_checkpoint_from_a_different_model_or_channel_count(tmp_path):
    from dataclasses import replace

    checkpoint = load_checkpoint(_checkpoint(tmp_path / "c.safetensors"))
    three = replace(checkpoint.contract, model=replace(checkpoint.contract.model, in_channels=3))
    save_checkpoint(tmp_path / "three.safetensors", checkpoint.weights, three, checkpoint.info)
    with pytest.raises(MedsegError, match="do not fit model 'unet'"):
        load_model(tmp_path / "three.safetensors")
    segnet = replace(checkpoint.contract, model=ModelSpec("segnet", 1, 1, {"widths": [4, 8, 8, 8, 8]}))
    save_checkpoint(tmp_path / "other.safetensors", checkpoint.weights, segnet, checkpoint.info)
    with pytest.raises(MedsegError, match="do not fit model 'segnet'"):
        load_model(tmp_path / "other.safetensors")


def test_pickle_posing_as_checkpoint_does_not_execute(tmp_path, capsys):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for name in ("best_model.safetensors", "model.pt"):
        (tmp_path / name).write_bytes(pickle.dumps(Payload()))
        code, err = _run(["evaluate", "--weights", str(tmp_path / name), "--data", str(tmp_path),
                          "--out", str(tmp_path / "e")], capsys)
        assert code == 2 and "not a readable medseg checkpoint" in err
    assert not marker.exists()


def test_unknown_config_key_suggests_the_closest(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("train:\n  batch_szie: 4\n")
    code, err = _run(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and err.endswith("unknown key 'train.batch_szie' (did you mean 'train.batch_size'?)")


def test_config_with_wrong_types(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("optim:\n  lr: fast\n")
    code, err = _run(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "optim.lr: expected float, got 'fast'" in err
    (tmp_path / "c.yaml").write_text("- a list\n")
    code, err = _run(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "config must be a YAML mapping" in err
