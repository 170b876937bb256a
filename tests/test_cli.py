"""The CLI: verbs run, and user errors are one line on stderr with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from medseg.cli import main


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["unet"]["params"] == 31_043_521 and rows["unet_ultralight"]["params"] == 239_676


def _error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_bad_mask_values_stop_before_training(capsys, tmp_path):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(np.full((8, 8), 100 if i == 2 else 255, np.uint8)).save(tmp_path / "masks" / f"{i}.png")
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--epochs", "1"])
    assert code == 2
    line = _error_line(capsys)
    assert line.startswith("medseg: error: ") and "2.png: unexpected mask values [100]" in line
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_missing_dataset_and_checkpoint(capsys, tmp_path):
    assert main(["evaluate", str(tmp_path / "nope"), "--data", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert "checkpoint not found" in _error_line(capsys)
    assert main(["data", "check", str(tmp_path / "missing")]) == 2
    assert "dataset folder not found" in _error_line(capsys)


def test_console_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "medseg", "models"], capture_output=True, text=True, check=True)
    assert "31,043,521" in result.stdout


@pytest.mark.parametrize("argv", [["data", "convert", "x", "--format", "nope", "--out", "y"]])
def test_argparse_errors_exit_2(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


@pytest.fixture
def weights(tmp_path):
    from medseg.models import create_model
    from tests.helpers import save_model

    return save_model(tmp_path / "w.safetensors", create_model("unet", 1, 1, widths=(4, 8)))


def test_predict_with_weights_predicts_every_input(capsys, tmp_path, weights):
    """Bug: `predict --weights W a.png b.png` took a.png for the run folder and never predicted it."""
    for name in ("a", "b"):
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / f"{name}.png")
    assert main(["predict", "--weights", str(weights), str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                 "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["a.png", "b.png"]


@pytest.mark.parametrize("verb", ["predict", "evaluate", "export"])
def test_run_folder_or_weights_never_both_nor_neither(capsys, tmp_path, weights, verb):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best_model.safetensors").write_bytes(weights.read_bytes())
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(image)
    tail = {"predict": [str(image), "--out", str(tmp_path / "o")],
            "evaluate": ["--data", str(tmp_path), "--out", str(tmp_path / "o")],
            "export": ["--format", "onnx", "--out", str(tmp_path / "m.onnx")]}[verb]
    assert main([verb, str(run), "--weights", str(weights), *tail]) == 2
    line = _error_line(capsys)
    assert "give a run folder" in line and "or --weights, not both" in line
    if verb != "predict":
        assert main([verb, *tail]) == 2
        assert "give a run folder or --weights FILE" in _error_line(capsys)


def test_config_typos_stop_before_any_data_is_read(capsys, tmp_path):
    """Bug: typos in enumerated options surfaced only after decoding the dataset (or never, for normalize)."""
    code = main(["train", "--data", str(tmp_path / "not-even-there"), "--out", str(tmp_path / "r"),
                 "--set", "data.normalize=unitt"])
    assert code == 2
    assert _error_line(capsys).endswith("data.normalize: 'unitt' is not one of zscore, nonzero, ct, unit (did you mean 'unit'?)")


def test_cross_validation_is_not_launched_under_ddp(capsys, tmp_path):
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "cv"), "--folds", "3", "--nproc", "2"])
    assert code == 2 and "DDP trains one run at a time" in _error_line(capsys)


def test_inputs_whose_masks_would_collide_are_refused(capsys, tmp_path, weights):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / folder / "x.png")
    code = main(["predict", "--weights", str(weights), str(tmp_path / "a"), str(tmp_path / "b"),
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "has the same name as" in _error_line(capsys)


RUN_FLAGS = ["--data", "d", "--config", "c.yaml", "--budget", "90s", "--epochs", "2", "--iterations", "7",
             "--batch-size", "4", "--patch-size", "64", "--lr", "0.001", "--val-fraction", "0.2", "--device", "cpu",
             "--deterministic", "--set", "optim.name=sgd"]


def test_train_and_compare_turn_the_same_flags_into_the_same_overrides():
    from medseg.cli import build_parser, run_overrides

    parser = build_parser()
    train = parser.parse_args(["train", *RUN_FLAGS])
    compare = parser.parse_args(["compare", "--models", "unet", "--out", "o", *RUN_FLAGS])
    assert run_overrides(train) == run_overrides(compare) == [
        'data.root="d"', "train.epochs=2", "train.iterations=7", "train.batch_size=4", "data.patch_size=64",
        "optim.lr=0.001", "data.val_fraction=0.2", 'train.device="cpu"', "train.deterministic=true",
        "optim.name=sgd"]
    assert (train.budget, train.config) == (compare.budget, compare.config) == ("90s", "c.yaml")
    one_run = parser.parse_args(["train", "--model", "unet", "--seed", "3", "--fold", "all", "--no-plan"])
    assert run_overrides(one_run) == ['model.name="unet"', "train.seed=3", 'data.fold="all"'] and one_run.no_plan
    plan = parser.parse_args(["plan", "d", "--config", "c.yaml", "--device", "cpu", "--set", "optim.name=sgd"])
    assert run_overrides(plan) == ['data.root="d"', 'train.device="cpu"', "optim.name=sgd"] and plan.budget == "15m"


@pytest.mark.parametrize(("text", "minutes"), [("90s", 1.5), ("15m", 15.0), ("1.5h", 90.0), ("2", 2.0)])
def test_budget_durations(text, minutes):
    from medseg.cli import parse_duration

    assert parse_duration(text) == minutes


def test_compare_takes_iterations_and_a_budget_like_train(tmp_path, monkeypatch, capsys):
    import medseg.study.compare as compare_module

    specs = []
    monkeypatch.setattr(compare_module, "run_study", lambda spec, out, shard: specs.append(spec))
    argv = ["compare", "--data", str(tmp_path), "--models", "unet,segnet", "--seeds", "0,1", "--out", "o"]
    assert main([*argv, "--iterations", "5", "--budget", "90s", "--set", "data.patch_size=32"]) == 0
    (spec,) = specs
    assert (spec.models, spec.seeds, spec.budget_minutes) == (["unet", "segnet"], [0, 1], 1.5)
    config = spec.base_config()
    assert (config.train.iterations, config.train.budget_minutes, config.data.patch_size) == (5, 1.5, 32)
    assert main([*argv, "--budget", "soon"]) == 2
    assert "--budget: expected a duration like 90s" in _error_line(capsys)
    with pytest.raises(SystemExit):  # the old flag is gone
        main([*argv, "--budget-minutes", "1"])
